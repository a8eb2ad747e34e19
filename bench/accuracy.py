"""Accounting accuracy of the two backends side by side, and the fallback's own cost.

    sudo .venv/bin/python -m bench.accuracy [--rounds 5] [--cost-seconds 30]

Each workload runs `--rounds` times on each backend: systemd inside the test sandbox (systemd
252 as PID 1 of fresh namespaces), psutil on this host. Every workload measures its own ground
truth and prints it; the error is (reported - truth) / truth, and the table shows the median.

The workloads and their truths are tests/workloads.py's (the behaviour tests bound the record
against the same ones); every truth comes from the job itself, not from what a backend reads:
each process's own getrusage(RUSAGE_SELF) or CPU clock, or an allocation of a known size.

  CPU user/system   10 short-lived children burning user or system CPU, 0.15 s each
  allocation        one process touches 200 MiB; truth: its RSS before, plus 200 MiB
  burst             1.4 s in, two children hold 150 MiB each at once for 0.2 s; truth:
                    the parent's RSS plus 2 x 150 MiB (what was resident together)
  daemon CPU        a double-forked setsid daemon burns 0.5 s of CPU; truth: its own
                    CPU clock plus what the job's main process saw of itself

Then the fallback's cost: the wrapper's own CPU while it tracks a job of 1,000 sleeping
processes at the default sampling interval, over --cost-seconds, scaled to a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import workloads  # noqa: E402
from tests.harness.sandbox import Sandbox  # noqa: E402

CSD = str(Path(sys.executable).parent / "condor-systemd")
PY = os.path.realpath(sys.executable)
WORK_ROOT = Path("/var/lib/csd-tests")

CPU = lambda u: u["cpu_user_seconds"] + u["cpu_system_seconds"]  # noqa: E731
# name -> (workload, its arguments, what the record says, the truth from the job's last line)
WORKLOADS = {
    "CPU user, short-lived children": (workloads.SHORT_LIVED_CPU, ["10"],
                                       lambda u: u["cpu_user_seconds"],
                                       lambda out: float(out.split()[0])),
    "CPU system, short-lived children": (workloads.SHORT_LIVED_CPU, ["10"],
                                         lambda u: u["cpu_system_seconds"],
                                         lambda out: float(out.split()[1])),
    # truth: the whole RSS before, plus what was allocated (the upper of the two truths)
    "allocation (200 MiB)": (workloads.ALLOCATION, ["200"], lambda u: u["memory_peak_bytes"],
                             lambda out: float(out.split()[1])),
    "burst (2 x 150 MiB, 0.2 s)": (workloads.BURST, [], lambda u: u["memory_peak_bytes"],
                                   lambda out: float(out.split()[1])),
    "double-forked daemon CPU": (workloads.DAEMON, ["{done}"], CPU, float),
}


def run_job(backend: str, sandbox: Sandbox, work: Path, code: str, args: list[str],
            n: int) -> tuple[str, dict]:
    """The job's last line of output (its truth) and its usage record."""
    usage_file = work / f"usage-{backend}-{n}.json"
    done = str(work / f"done-{backend}-{n}")
    argv = [CSD, "run", "--backend", backend, "--usage-file", str(usage_file), "--",
            PY, "-c", code, *(a.format(done=done) for a in args)]
    if backend == "systemd":
        argv = sandbox.command(argv, str(work))
    out = subprocess.run(argv, cwd=work, check=True, capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1], json.loads(usage_file.read_text())


def cost_of_tracking(seconds: float) -> tuple[float, int]:
    """(CPU seconds per minute the fallback wrapper spends on it, processes in the job)."""
    spawn = ("import subprocess, time\n"
             "kids = [subprocess.Popen(['sleep', '3600']) for _ in range(999)]\n"
             f"time.sleep({seconds + 30})\n")
    proc = subprocess.Popen([CSD, "run", "--backend", "psutil", "--", PY, "-c", spawn])
    time.sleep(10)  # past start-up and the spawning
    main_pid = int(_children(proc.pid)[0])
    size = 1 + len(_children(main_pid))
    before = _ticks(proc.pid)
    time.sleep(seconds)
    used = _ticks(proc.pid) - before
    proc.terminate()  # forwarded: the job and its 999 sleeps end
    proc.wait()
    return used / os.sysconf("SC_CLK_TCK") * 60 / seconds, size


def _children(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()


def _ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cost-seconds", type=float, default=30)
    args = parser.parse_args()
    WORK_ROOT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="csd-bench-", dir=WORK_ROOT))
    os.chmod(work, 0o755)
    errors: dict[str, dict[str, list[float | None]]] = {}
    with Sandbox() as sandbox:
        n = 0
        for name, (code, job_args, reported, truth_of) in WORKLOADS.items():
            for _ in range(args.rounds):
                for backend in ("systemd", "psutil"):
                    n += 1
                    last_line, usage = run_job(backend, sandbox, work, code, job_args, n)
                    truth, value = truth_of(last_line), reported(usage)
                    error = None if value is None else 100.0 * (value - truth) / truth
                    errors.setdefault(name, {}).setdefault(backend, []).append(error)
    print(f"accounting error, median of {args.rounds} runs ((reported - truth) / truth):")
    print(f"  {'workload':30s} {'systemd':>10s} {'psutil':>10s}")
    for name, by_backend in errors.items():
        cells = []
        for backend in ("systemd", "psutil"):
            values = by_backend[backend]
            known = [v for v in values if v is not None]
            cell = f"{statistics.median(known):+.1f} %" if known else "null"
            if len(known) < len(values):
                cell += f" ({len(values) - len(known)} null)"
            cells.append(cell)
        print(f"  {name:30s} {cells[0]:>10s} {cells[1]:>10s}")
    per_minute, size = cost_of_tracking(args.cost_seconds)
    print(f"fallback wrapper's own CPU tracking a {size}-process job at the default 1 s "
          f"interval: {per_minute:.2f} CPU s per minute ({per_minute / 60 * 100:.2f} % of one "
          f"CPU; measured over {args.cost_seconds:g} s)")


if __name__ == "__main__":
    main()
