"""Accounting accuracy of the two backends side by side, and the fallback's own cost.

    sudo .venv/bin/python -m bench.accuracy [--rounds 5] [--cost-seconds 30]

Each workload runs `--rounds` times on each backend: systemd inside the test sandbox (systemd
252 as PID 1 of fresh namespaces), psutil on this host. Every workload measures its own ground
truth and prints it; the error is (reported - truth) / truth, and the table shows the median.

  short-lived CPU   150 `sh` loops, each its own process; truth: wait4() of the job itself
  allocation        one process touches 200 MiB; truth: its VmHWM
  burst             1.4 s in, two children hold 150 MiB each at once for 0.2 s; truth:
                    the sum of their VmHWM (what was resident together)
  daemon CPU        a double-forked setsid daemon burns 0.5 s of CPU; truth: its own
                    process_time() plus what the job's main process saw of itself and
                    its waited children (wait4 never sees the daemon)

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

from tests.harness.sandbox import Sandbox  # noqa: E402

CSD = str(Path(sys.executable).parent / "condor-systemd")
PY = os.path.realpath(sys.executable)
WORK_ROOT = Path("/var/lib/csd-tests")

SHORT_LIVED = """
import resource, subprocess, sys
burn = "i=0; while [ $i -lt 4000 ]; do i=$((i+1)); done"
for _ in range(150):
    subprocess.run(["sh", "-c", burn], check=True)
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(me.ru_utime + kids.ru_utime + me.ru_stime + kids.ru_stime)
"""

ALLOCATION = """
block = bytearray(200 << 20)
for i in range(0, len(block), 4096):
    block[i] = 1
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
print(int(hwm.split()[1]) * 1024)
"""

BURST = """
import os, sys, time
time.sleep(1.4)  # past the fallback's early samples: the burst falls between regular ones
r, w = os.pipe()
kids = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        block = bytearray(150 << 20)
        for i in range(0, len(block), 4096):
            block[i] = 1
        hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
        os.write(w, (hwm.split()[1] + "\\n").encode())
        time.sleep(0.2)
        os._exit(0)
    kids.append(pid)
for pid in kids:
    os.waitpid(pid, 0)
os.close(w)
print(sum(int(x) for x in os.read(r, 100).split()) * 1024)
"""

DAEMON = """
import os, sys, time
done = sys.argv[1]
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        end = time.process_time() + 0.5
        while time.process_time() < end:
            pass
        open(done + ".tmp", "w").write(str(time.process_time()))
        os.rename(done + ".tmp", done)
    os._exit(0)
while not os.path.exists(done):
    time.sleep(0.05)
import resource
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(float(open(done).read()) + me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime)
"""

WORKLOADS = {
    "short-lived CPU": (SHORT_LIVED, lambda u: u["cpu_user_seconds"] + u["cpu_system_seconds"]),
    "allocation (200 MiB)": (ALLOCATION, lambda u: u["memory_peak_bytes"]),
    "burst (2 x 150 MiB, 0.2 s)": (BURST, lambda u: u["memory_peak_bytes"]),
    "double-forked daemon CPU": (DAEMON, lambda u: u["cpu_user_seconds"] + u["cpu_system_seconds"]),
}


def run_job(backend: str, sandbox: Sandbox, work: Path, code: str, n: int) -> tuple[float, dict]:
    usage_file = work / f"usage-{backend}-{n}.json"
    argv = [CSD, "run", "--backend", backend, "--usage-file", str(usage_file), "--",
            PY, "-c", code, str(work / f"done-{backend}-{n}")]
    if backend == "systemd":
        argv = sandbox.command(argv, str(work))
    out = subprocess.run(argv, cwd=work, check=True, capture_output=True, text=True).stdout
    return float(out.split()[-1]), json.loads(usage_file.read_text())


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
        for name, (code, reported) in WORKLOADS.items():
            for _ in range(args.rounds):
                for backend in ("systemd", "psutil"):
                    n += 1
                    truth, usage = run_job(backend, sandbox, work, code, n)
                    value = reported(usage)
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
