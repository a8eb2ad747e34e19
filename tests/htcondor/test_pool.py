"""Jobs submitted to a real HTCondor pool run through condor-systemd: as their owner, in their
own unit, with their own output and exit status."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

from tests.htcondor import conftest

SUBMITTER = "alice"


def submit(directory: Path, description: str, queue: str = "queue") -> int:
    """condor_submit as alice; the cluster id."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["chown", SUBMITTER, str(directory)], check=True)
    (directory / "job.sub").write_text(f"{description}\n{queue}\n")
    proc = subprocess.run(["runuser", "-u", SUBMITTER, "--", "condor_submit", "-terse",
                           "job.sub"], cwd=directory, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.split(".")[0])


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
    # in the slice of its slot's cgroup (one per caller cgroup: the broker's slices.py)
    assert any(re.search(r"/condor\.slice/condor-u\d+_c[0-9a-f]{16}\.slice/condor-job-u", line)
               for line in out[2:]), out
    assert (work / "err").read_text() == "err\n"
    assert "condor-systemd" not in (work / "log").read_text()  # no user-log event unasked


def running(cluster: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status = subprocess.run(["condor_q", "-allusers", "-af", "JobStatus", "HoldReason",
                                 str(cluster)], capture_output=True, text=True).stdout.strip()
        if status.startswith("2"):
            return
        assert status, f"job {cluster} left the queue: {finished(cluster, 10)}"
        if time.monotonic() > deadline:
            slots = subprocess.run(["condor_status", "-af", "Name", "State", "Activity"],
                                   capture_output=True, text=True).stdout
            why = subprocess.run(["condor_q", "-allusers", "-better-analyze", str(cluster)],
                                 capture_output=True, text=True).stdout
            raise AssertionError(f"job {cluster} never started running: {status}\n{slots}\n"
                                 f"{why[-1500:]}")
        time.sleep(0.5)


def processes(pattern: str) -> list[str]:
    out = subprocess.run(["pgrep", "-a", "-f", pattern], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


def job_units() -> str:
    return subprocess.run(["systemctl", "list-units", "--all", "--plain", "--no-legend",
                           "condor-job-*"], capture_output=True, text=True).stdout.strip()


def wait_until(condition, timeout: float, what: str) -> float:  # noqa: ANN001
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, what
        time.sleep(0.2)
    return time.monotonic() - started


def test_a_job_killed_by_a_signal_is_reported_so(pool, tmp_path):
    work = Path("/home") / SUBMITTER / f"csd-{tmp_path.name}"
    cluster = submit(work, "executable = /bin/sh\narguments = \"-c 'kill -KILL $$'\"\n"
                           "output = out\nerror = err\nlog = log\nshould_transfer_files = NO")
    ad = finished(cluster)
    assert ad.get("ExitBySignal") is True and ad.get("ExitSignal") == 9, ad
    assert ad["ChirpCondorSystemdOomKilled"] is False  # a kill that is no OOM: never held
    assert (work / "out").read_text() == "" and (work / "err").read_text() == ""


def test_condor_rm_leaves_no_process_and_no_unit(pool, tmp_path):
    """Children that double-fork, setsid and nohup: all gone with the job."""
    work = Path("/home") / SUBMITTER / f"csd-{tmp_path.name}"
    script = ("setsid sleep 4271 & nohup sleep 4271 > /dev/null 2>&1 & (sleep 4271 &); "
              "exec sleep 4271")
    cluster = submit(work, f"executable = /bin/sh\narguments = \"-c '{script}'\"\n"
                           "output = out\nerror = err\nlog = log\nshould_transfer_files = NO")
    running(cluster)
    wait_until(lambda: len(processes("^sleep 4271")) == 4, 60, "the job's 4 sleeps never ran")
    assert "condor-job-u" in job_units()
    subprocess.run(["runuser", "-u", SUBMITTER, "--", "condor_rm", str(cluster)], check=True,
                   capture_output=True)
    took = wait_until(lambda: not processes("^sleep 4271") and not job_units(), 60,
                      "processes or the unit outlived condor_rm")
    assert took < 30, took


def test_condor_suspend_holds_the_job_and_condor_continue_resumes_it(pool, tmp_path):
    """condor_suspend freezes the slot's cgroup (v2), which no longer holds the job: the broker
    holds the job (SIGSTOP to every process of its unit); the counter stops, then runs on."""
    work = Path("/home") / SUBMITTER / f"csd-{tmp_path.name}"
    count = work / "count"
    script = f"i=0; while [ $i -lt 80 ]; do i=$((i+1)); echo $i > {count}; sleep 0.1; done"
    cluster = submit(work, f"executable = /bin/sh\narguments = \"-c '{script}'\"\n"
                           "output = out\nerror = err\nlog = log\nshould_transfer_files = NO")
    running(cluster)
    wait_until(lambda: count.exists() and count.read_text().strip() not in ("", "1"), 60,
               "the job never counted")
    subprocess.run(["runuser", "-u", SUBMITTER, "--", "condor_suspend", str(cluster)],
                   check=True, capture_output=True)
    unit = job_units().split()[0]
    # (the schedd's JobStatus says 7 only a minute or more later: the starter's freeze is what
    # counts, and the broker mirrors it onto the unit within 1 s)
    main = subprocess.run(["systemctl", "show", "-P", "MainPID", unit], capture_output=True,
                          text=True).stdout.strip()
    wait_until(lambda: Path(f"/proc/{main}/stat").read_text().rsplit(")", 1)[1].split()[0]
               == "T", 30, "the job was never held")
    held_at = count.read_text()
    time.sleep(2)
    assert count.read_text() == held_at, "the job ran on while suspended"
    assert held_at.strip() != "80"
    subprocess.run(["runuser", "-u", SUBMITTER, "--", "condor_continue", str(cluster)],
                   check=True, capture_output=True)
    ad = finished(cluster)
    assert ad["ExitCode"] == 0 and count.read_text().strip() == "80", ad


def test_a_node_whose_broker_is_down_requeues_its_job_and_steps_aside_until_it_is_back(
        pool, tmp_path):
    """The job goes back to idle with the wrapper's reason (it is never run without its unit);
    the startd's probe takes the node out of matching, so the job does not bounce on it; once
    the broker is back the node takes the job again and it completes."""
    work = Path("/home") / SUBMITTER / f"csd-{tmp_path.name}"
    # first the node takes jobs whatever the probe says: the job is matched to it
    conftest.configure("START = true\n")
    subprocess.run(["systemctl", "stop", "condor-systemd.socket", "condor-systemd.service"],
                   check=True)
    try:
        cluster = submit(work, "executable = /bin/sh\narguments = \"-c 'echo ran; exit 5'\"\n"
                               "output = out\nerror = err\nlog = log\n"
                               "should_transfer_files = NO")
        log = work / "log"
        wait_until(lambda: log.exists() and "condor-systemd:" in log.read_text(), 120,
                   "the wrapper's reason never reached the job's log")
        status = queue_ad(cluster)
        assert status["JobStatus"] in (1, 2), status  # idle again (or already re-matched)
        # (the stopped socket is gone: the wrapper finds no broker, and may not start a unit
        # itself)
        reason = status["VacateReason"]
        assert "The job wrapper failed to execute the job: condor-systemd: not permitted to " \
               "start system units" in reason and "condor-systemd.socket" in reason, status
        assert not (work / "out").exists() or "ran" not in (work / "out").read_text()
        conftest.configure()  # the package's START again: the probe finds the broker down
        conftest.node_ready(False)
        # an attempt that began before the node stepped aside ends as the others did
        wait_until(lambda: queue_ad(cluster)["JobStatus"] == 1, 60, "the job stayed running")
        starts = queue_ad(cluster)["NumShadowStarts"]
        time.sleep(10)
        status = queue_ad(cluster)
        assert status["JobStatus"] == 1 and status["NumShadowStarts"] == starts, status
    finally:
        subprocess.run(["systemctl", "start", "condor-systemd.socket"], check=True)
        conftest.configure()
    conftest.node_ready(True)
    ad = finished(cluster)
    assert ad["ExitCode"] == 5 and (work / "out").read_text() == "ran\n", ad


def queue_ad(cluster: int, work: Path | None = None) -> dict:
    out = subprocess.run(["condor_q", "-allusers", "-json", str(cluster)], capture_output=True,
                         text=True).stdout.strip()
    assert out, f"job {cluster} left the queue:\n{left_the_queue(cluster, work)}"
    return json.loads(out)[0]


def left_the_queue(cluster: int, work: Path | None) -> str:
    """What a job that left the queue unexpectedly leaves behind: its history ad, its stderr
    and user log, the execute node's and the shadow's last words."""
    parts = [subprocess.run(["condor_history", "-l", "-limit", "1", str(cluster)],
                            capture_output=True, text=True).stdout]
    files = [work / "err", work / "log"] if work else []
    files += sorted(Path("/var/log/condor").glob("St*Log*")) + [Path("/var/log/condor/ShadowLog")]
    for path in files:
        text = path.read_text(errors="replace") if path.exists() else "(none)"
        parts.append(f"--- {path}:\n{text[-3000:]}")
    return "\n".join(parts)


BURN = """\
import os, time
started = time.monotonic()
for _ in range(2):
    if os.fork() == 0:
        while time.monotonic() - started < 4: pass
        os._exit(0)
for _ in range(2): os.wait()
t = os.times()
print((t.children_user + t.children_system) / (time.monotonic() - started))
"""


def test_the_unit_gets_the_slots_memory_swap_and_cpu_as_htcondor_gives_its_cgroup(pool, tmp_path):
    """request_memory = 128, request_cpus = 1 on the 2-CPU guest: the job's own cgroup files
    say memory.max = the slot's 128 MB, no swap, cpu.weight 100; with the pool's cap policy
    two busy processes get at most 1.1 CPU-seconds per second between them (their own
    times())."""
    work = Path("/home") / SUBMITTER / f"csd-{tmp_path.name}"
    work.mkdir(parents=True)
    (work / "burn.py").write_text(BURN)
    script = ("d=/sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup); cat $d/memory.max "
              "$d/memory.swap.max $d/cpu.weight; echo $d; exec python3 burn.py")
    cluster = submit(work, f"executable = /bin/sh\narguments = \"-c '{script}'\"\n"
                           "request_memory = 128\nrequest_cpus = 1\n"
                           "output = out\nerror = err\nlog = log\nshould_transfer_files = NO")
    ad = finished(cluster)
    assert ad["ExitCode"] == 0, ((work / "err").read_text(), ad)
    memory_max, swap_max, weight, cgroup, rate = (work / "out").read_text().split()
    # in its slot's caller slice (broker/slices.py), which carries the slot's limits too
    assert re.fullmatch(rf"/sys/fs/cgroup/condor\.slice/condor-u1000_c[0-9a-f]{{16}}\.slice/"
                        rf"condor-job-u1000-{cluster}\.0-slot1_\d+\.service", cgroup), cgroup
    assert (memory_max, swap_max, weight) == (str(128 << 20), "0", "100")
    assert 0.3 <= float(rate) <= 1.1, rate


USAGE_JOB = """\
import os, subprocess, sys, time
# short-lived children burning 1.5 s of CPU between them; the ground truth is their own times()
for _ in range(3):
    subprocess.run([sys.executable, "-c",
                    "import time\\nt = time.process_time()\\n"
                    "while time.process_time() - t < 0.5: pass"], check=True)
block = bytearray(96 << 20)
for i in range(0, len(block), 4096):
    block[i] = 1
t = os.times()
print(t.children_user + t.children_system, t.user + t.system)
"""


def test_the_jobs_usage_reaches_its_history_ad(pool, tmp_path):
    """The starter measures the slot's cgroup, which holds only the wrapper: the job's own
    figures arrive as ChirpCondorSystemd* attributes, against what the job measured itself
    (its children's CPU, which a sampler would miss, and a 96 MiB block it touched)."""
    work = Path("/home") / SUBMITTER / f"csd-{tmp_path.name}"
    work.mkdir(parents=True)
    (work / "usage.py").write_text(USAGE_JOB)
    cluster = submit(work, "executable = /usr/bin/python3\narguments = usage.py\n"
                           "request_memory = 256\n+WantIOProxy = true\n"
                           "output = out\nerror = err\nlog = log\nshould_transfer_files = NO")
    ad = finished(cluster)
    assert ad["ExitCode"] == 0, ((work / "err").read_text(), ad)
    children, own = (float(x) for x in (work / "out").read_text().split())
    cpu = ad["ChirpCondorSystemdCpuUserSeconds"] + ad["ChirpCondorSystemdCpuSystemSeconds"]
    assert children >= 1.5 and children + own - 0.05 <= cpu <= children + own + 0.5, (cpu, ad)
    assert 96 << 20 <= ad["ChirpCondorSystemdMemoryPeakBytes"] <= 160 << 20, ad
    assert ad["ChirpCondorSystemdOomKilled"] is False and ad["ChirpCondorSystemdBackend"] == \
        "systemd" and re.fullmatch(rf"condor-job-u1000-{cluster}\.0-slot1_\d+\.service",
                                   ad["ChirpCondorSystemdUnit"])
    assert ad["ChirpCondorSystemdMemoryMaxMB"] == 256
    assert 0 < ad["ChirpCondorSystemdWallSeconds"] <= ad["RemoteWallClockTime"] + 1, ad
    # WantIOProxy: the record's line is also a generic event (008) of the job's user log
    line = (f"condor-systemd: cpu {ad['ChirpCondorSystemdCpuUserSeconds']!r} s user "
            f"{ad['ChirpCondorSystemdCpuSystemSeconds']!r} s system, peak memory "
            f"{ad['ChirpCondorSystemdMemoryPeakMB']} MB")
    assert line in (work / "log").read_text(), (work / "log").read_text()


def test_a_job_over_its_memory_is_held_in_htcondors_words(pool, tmp_path):
    """request_memory = 128 and a job touching 400 MB: the kernel kills it in its unit, and the
    access point's policy (50-condor-systemd-hold.conf) holds it with HTCondor's own reason."""
    work = Path("/home") / SUBMITTER / f"csd-{tmp_path.name}"
    work.mkdir(parents=True)
    (work / "grow.py").write_text("block = bytearray(400 << 20)\n"
                                  "for i in range(0, len(block), 4096): block[i] = 1\n")
    cluster = submit(work, "executable = /usr/bin/python3\narguments = grow.py\n"
                           "request_memory = 128\n"
                           "output = out\nerror = err\nlog = log\nshould_transfer_files = NO")
    try:
        deadline = time.monotonic() + 180
        while (ad := queue_ad(cluster, work))["JobStatus"] != 5:
            assert ad["JobStatus"] in (1, 2), ad
            assert time.monotonic() < deadline, f"the job was never held: {ad}"
            time.sleep(1)
        peak = ad["ChirpCondorSystemdMemoryPeakMB"]
        assert 100 <= peak <= 129, ad  # the kernel killed it at the slot's 128 MB
        assert ad["ChirpCondorSystemdMemoryMaxMB"] == 128 and ad["ChirpCondorSystemdOomKilled"]
        assert (ad["HoldReasonCode"], ad["HoldReasonSubCode"]) == (26, 102), ad
        assert ad["HoldReason"] == (
            "Job has gone over cgroup memory limit of 128 megabytes. Last measured usage: "
            f"{peak} megabytes.  Consider resubmitting with a higher request_memory."), ad
    finally:
        subprocess.run(["condor_rm", str(cluster)], capture_output=True)


def test_the_jobs_tmp_is_in_its_scratch_directory_as_mount_under_scratch(pool, tmp_path):
    """The unit binds the scratch directory's tmp and var/tmp over /tmp and /var/tmp, as the
    starter does for jobs it runs itself: the kernel's mount table, seen by the job, says so."""
    work = Path("/home") / SUBMITTER / f"csd-{tmp_path.name}"
    work.mkdir(parents=True)
    (work / "tmp.sh").write_text("echo $_CONDOR_SCRATCH_DIR; echo x > /tmp/x; cat /tmp/x\n"
                                 "grep -E ' /(var/)?tmp ' /proc/self/mountinfo\n")
    cluster = submit(work, "executable = /bin/sh\narguments = tmp.sh\n"
                           "output = out\nerror = err\nlog = log\nshould_transfer_files = NO")
    ad = finished(cluster)
    assert ad["ExitCode"] == 0, ((work / "err").read_text(), ad)
    scratch, x, *mounts = (work / "out").read_text().splitlines()
    top = {line.split()[4]: line.split()[3] for line in mounts}
    assert x == "x" and top == {"/tmp": f"{scratch}/tmp", "/var/tmp": f"{scratch}/var/tmp"}, \
        (scratch, mounts)


GRACEFUL = ("trap 'echo term >> signals; sleep 1; echo graceful >> signals; exit 0' TERM; "
            "(setsid sleep {tag} &); nohup sleep {tag} > /dev/null 2>&1 & "
            "while :; do sleep 0.2; done")


def test_condor_hold_is_a_soft_kill_the_job_sees_and_nothing_outlives(pool, tmp_path):
    """condor_hold sends the job's KillSig (SIGTERM) to the wrapper: the job gets it, has its
    grace, and what it left behind (setsid, nohup) dies with the unit."""
    work = Path("/home") / SUBMITTER / f"csd-{tmp_path.name}"
    work.mkdir(parents=True)
    (work / "job.sh").write_text(GRACEFUL.format(tag=4273) + "\n")
    cluster = submit(work, "executable = /bin/sh\narguments = job.sh\n"
                           "output = out\nerror = err\nlog = log\nshould_transfer_files = NO")
    running(cluster)
    wait_until(lambda: len(processes("^sleep 4273")) == 2, 60, "the job's sleeps never ran")
    subprocess.run(["runuser", "-u", SUBMITTER, "--", "condor_hold", str(cluster)], check=True,
                   capture_output=True)
    wait_until(lambda: queue_ad(cluster)["JobStatus"] == 5, 60, "the job was never held")
    wait_until(lambda: not processes("^sleep 4273") and not job_units(), 30,
               "processes or the unit outlived condor_hold")
    assert (work / "signals").read_text() == "term\ngraceful\n"
    subprocess.run(["condor_rm", str(cluster)], capture_output=True)


def test_condor_vacate_job_is_a_soft_kill_and_the_job_runs_again(pool, tmp_path):
    work = Path("/home") / SUBMITTER / f"csd-{tmp_path.name}"
    work.mkdir(parents=True)
    (work / "job.sh").write_text("if [ -e ran ]; then exit 7; fi; touch ran\n" +
                                 GRACEFUL.format(tag=4274) + "\n")
    cluster = submit(work, "executable = /bin/sh\narguments = job.sh\n"
                           "output = out\nerror = err\nlog = log\nshould_transfer_files = NO")
    running(cluster)
    wait_until(lambda: len(processes("^sleep 4274")) == 2, 60, "the job's sleeps never ran")
    subprocess.run(["condor_vacate_job", str(cluster)], check=True, capture_output=True)
    ad = finished(cluster)
    assert ad["ExitCode"] == 7 and ad["NumJobStarts"] >= 2, ad
    assert (work / "signals").read_text() == "term\ngraceful\n"
    assert not processes("^sleep 4274") and not job_units()


def test_jobs_side_by_side_on_the_partitionable_slot_each_have_their_own_limits(pool, tmp_path):
    """Two dynamic slots at once (128 and 256 MB, one CPU each of the guest's two): each job's
    own cgroup has its slot's memory.max, and they ran at the same time."""
    work = Path("/home") / SUBMITTER / f"csd-{tmp_path.name}"
    work.mkdir(parents=True)
    (work / "side.sh").write_text(
        "d=/sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)\n"
        "echo $(date +%s.%N) $(cat $d/memory.max) $(cat $d/cpu.weight) $d\n"
        "sleep 8; date +%s.%N\n")
    cluster = submit(work, "executable = /bin/sh\narguments = side.sh\n"
                           "request_memory = $(mem)\nrequest_cpus = 1\n"
                           "output = out.$(Process)\nerror = err.$(Process)\nlog = log\n"
                           "should_transfer_files = NO", queue="queue mem in (128, 256)")
    deadline = time.monotonic() + 240
    while subprocess.run(["condor_q", "-allusers", "-af", "ClusterId", str(cluster)],
                         capture_output=True, text=True).stdout.strip():
        assert time.monotonic() < deadline, "the jobs did not finish"
        time.sleep(1)
    spans, limits, units = [], [], set()
    for proc in (0, 1):
        first, last = (work / f"out.{proc}").read_text().splitlines()
        start, memory_max, weight, cgroup = first.split()
        spans.append((float(start), float(last)))
        limits.append((int(memory_max) >> 20, weight))
        units.add(cgroup)
    assert limits == [(128, "100"), (256, "100")], limits
    assert len(units) == 2 and all(re.search(r"/condor\.slice/condor-u\d+_c[0-9a-f]{16}\.slice/"
                                             r"condor-job-u", u) for u in units), units
    assert len({u.rsplit("/", 2)[-2] for u in units}) == 2, units  # a slice per slot
    assert max(s for s, _ in spans) < min(e for _, e in spans), f"not side by side: {spans}"


EVIL_PROGRAM = "#!/bin/sh\ntouch {marker}\nexit 0\n"
EVIL_MODULE = "open({marker!r}, 'w').close()\nraise SystemExit(0)\n"


def test_the_jobs_environment_does_not_steer_the_wrapper(pool, tmp_path):
    """getenv = true, and the submitter's environment is hostile: a PATH whose first directory
    has its own condor-systemd and python3, a PYTHONPATH with its own condor_systemd package,
    a PYTHONHOME that no interpreter can start from, and CONDOR_SYSTEMD_SOCKET naming a
    broker of its own. The job runs through the real broker all the same (its unit in
    condor.slice, its own exit code), none of the hostile code ran, and the job itself got that
    environment unchanged, as HTCondor gives it."""
    work = Path("/home") / SUBMITTER / f"csd-{tmp_path.name}"
    evil = work / "evil"
    (evil / "bin").mkdir(parents=True)
    (evil / "py" / "condor_systemd").mkdir(parents=True)
    for name in ("condor-systemd", "python3"):
        program = evil / "bin" / name
        program.write_text(EVIL_PROGRAM.format(marker=evil / f"ran-{name}"))
        program.chmod(0o755)
    for name in ("__init__.py", "launch.py"):
        (evil / "py" / "condor_systemd" / name).write_text(
            EVIL_MODULE.format(marker=str(evil / f"imported-{name}")))
    subprocess.run(["chown", "-R", SUBMITTER, str(work)], check=True)
    hostile = {"PATH": f"{evil}/bin:/usr/local/bin:/usr/bin:/bin",
               "PYTHONPATH": str(evil / "py"), "PYTHONHOME": str(evil / "nowhere"),
               "CONDOR_SYSTEMD_SOCKET": str(evil / "broker.sock")}
    script = "cat /proc/self/cgroup; echo socket=$CONDOR_SYSTEMD_SOCKET; exit 4"
    (work / "job.sub").write_text(
        f"executable = /bin/sh\narguments = \"-c '{script}'\"\ngetenv = true\n"
        "output = out\nerror = err\nlog = log\nshould_transfer_files = NO\nqueue\n")
    proc = subprocess.run(["runuser", "-u", SUBMITTER, "--", "env",
                           *(f"{k}={v}" for k, v in hostile.items()),
                           "/usr/bin/condor_submit", "-terse", "job.sub"],
                          cwd=work, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    ad = finished(int(proc.stdout.split(".")[0]))
    assert ad["ExitCode"] == 4, ad
    out = (work / "out").read_text().splitlines()
    assert any(re.search(r"/condor\.slice/condor-u\d+_c[0-9a-f]{16}\.slice/condor-job-u", line)
               for line in out), (out, (work / "err").read_text())
    assert f"socket={evil / 'broker.sock'}" in out  # the job's environment, as it was given
    assert sorted(p.name for p in evil.iterdir()) == ["bin", "py"], "hostile code ran"
