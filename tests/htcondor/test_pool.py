"""Jobs submitted to a real HTCondor pool run through condor-systemd: as their owner, in their
own unit, with their own output and exit status."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

SUBMITTER = "alice"


def submit(directory: Path, description: str) -> int:
    """condor_submit as alice; the cluster id."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["chown", SUBMITTER, str(directory)], check=True)
    (directory / "job.sub").write_text(description + "\nqueue\n")
    out = subprocess.run(["runuser", "-u", SUBMITTER, "--", "condor_submit", "-terse",
                          "job.sub"], cwd=directory, check=True, capture_output=True,
                         text=True).stdout
    return int(out.split(".")[0])


def finished(cluster: int, timeout: float = 180) -> dict:
    """The job's history ad, once it has left the queue."""
    deadline = time.monotonic() + timeout
    while True:
        history = subprocess.run(["condor_history", "-json", "-limit", "1", str(cluster)],
                                 capture_output=True, text=True).stdout.strip()
        ads = json.loads(history) if history else []
        if ads:
            return ads[0]
        if time.monotonic() > deadline:
            queue = subprocess.run(["condor_q", "-allusers", "-better-analyze", str(cluster)],
                                   capture_output=True, text=True).stdout
            raise AssertionError(f"job {cluster} did not finish in {timeout:.0f} s:\n{queue}")
        time.sleep(1)


def test_a_job_runs_as_its_owner_in_its_own_unit_with_its_output_and_exit_code(pool, tmp_path):
    work = Path("/home") / SUBMITTER / f"csd-{tmp_path.name}"
    script = ("echo out; echo err >&2; id -un; cat /proc/self/cgroup; exit 3")
    cluster = submit(work, f"executable = /bin/sh\narguments = \"-c '{script}'\"\n"
                           "output = out\nerror = err\nlog = log\nshould_transfer_files = NO")
    ad = finished(cluster)
    assert ad["ExitCode"] == 3 and not ad.get("ExitBySignal"), ad
    out = (work / "out").read_text().splitlines()
    assert out[:2] == ["out", SUBMITTER], out
    assert any("condor.slice/condor-job-u" in line for line in out[2:]), out
    assert (work / "err").read_text() == "err\n"
