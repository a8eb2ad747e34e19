"""Launch overhead of condor-systemd against systemd-run and bare execution, in the sandbox.

    sudo .venv/bin/python -m bench.launch [--pairs 40]

Boots the test sandbox (systemd 252 as PID 1 of fresh namespaces), then measures inside it:
  * wall time of `true`, `systemd-run --wait --pipe --quiet true` and
    `condor-systemd run -- true`, interleaved in rounds so that machine noise hits all alike;
    per-round ratios, then their median (targets: <= 2.0x systemd-run);
  * what the wrapper pays before talking to systemd: a bare venv interpreter, and one that
    imports jeepney (the transport the design prescribes);
  * the RSS of a waiting wrapper against a bare venv interpreter's (target <= 1.3x);
  * the CPU the wrapper uses while the job sleeps (target: none: it waits on D-Bus signals).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
CSD = str(VENV_BIN / "condor-systemd")
PY = sys.executable


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def status_field(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def waiting_wrapper(seconds: float) -> tuple[int, int, int]:
    """(RSS KiB, CPU ticks over `seconds` of waiting, clock ticks per second) of a wrapper."""
    proc = subprocess.Popen([CSD, "run", "--", "sleep", str(seconds + 2)])
    time.sleep(1)  # past start-up: measure the steady waiting state
    rss = status_field(proc.pid, "VmRSS")
    before = cpu_ticks(proc.pid)
    time.sleep(seconds)
    used = cpu_ticks(proc.pid) - before
    proc.wait()
    return rss, used, os.sysconf("SC_CLK_TCK")


def bare_interpreter_rss() -> int:
    proc = subprocess.Popen([PY, "-c", "import time; time.sleep(3)"])
    time.sleep(1)
    rss = status_field(proc.pid, "VmRSS")
    proc.wait()
    return rss


def median_ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:7.1f} ms"


def measure(pairs: int) -> None:
    # Measure the package as installed: pip byte-compiles it, an editable checkout may not
    # (PYTHONDONTWRITEBYTECODE=1 would recompile changed modules at every start).
    import compileall

    import condor_systemd

    compileall.compile_dir(os.path.dirname(condor_systemd.__file__), quiet=1)
    commands = {
        "true (bare)": ["true"],
        "systemd-run --wait --pipe": ["systemd-run", "--wait", "--pipe", "--quiet", "true"],
        "condor-systemd run": [CSD, "run", "--", "true"],
        "venv python -c pass": [PY, "-c", "pass"],
        "venv python -c 'import jeepney'": [PY, "-c", "import jeepney"],
    }
    for argv in commands.values():  # warm caches (page cache, .pyc files)
        for _ in range(3):
            timed(argv)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(pairs):
        for name, argv in commands.items():
            times[name].append(timed(argv))
    csd, sdrun, bare = (times["condor-systemd run"], times["systemd-run --wait --pipe"],
                        times["true (bare)"])
    print(f"launch overhead, {pairs} interleaved rounds, medians:")
    for name, values in times.items():
        print(f"  {name:34s} {median_ms(values)}")
    print(f"  ratio condor-systemd / systemd-run (median of per-round ratios): "
          f"{statistics.median(c / s for c, s in zip(csd, sdrun)):.2f}x   (target <= 2.0x)")
    print(f"  ratio condor-systemd / bare true: "
          f"{statistics.median(c / b for c, b in zip(csd, bare)):.1f}x")
    py = statistics.median(times["venv python -c pass"])
    jp = statistics.median(times["venv python -c 'import jeepney'"])
    print(f"  of which interpreter start-up {py * 1000:.1f} ms, jeepney import "
          f"{(jp - py) * 1000:.1f} ms ({jp / statistics.median(sdrun):.2f}x systemd-run "
          "before any D-Bus traffic)")
    rss_runs = [waiting_wrapper(2) for _ in range(3)]
    bare_rss = statistics.median(bare_interpreter_rss() for _ in range(3))
    rss = statistics.median(r[0] for r in rss_runs)
    ticks = max(r[1] for r in rss_runs)
    print(f"waiting wrapper: RSS {rss} KiB vs bare venv interpreter {bare_rss} KiB = "
          f"{rss / bare_rss:.2f}x (target <= 1.3x); CPU while waiting 2 s: {ticks} ticks "
          f"(1 tick = {1000 // rss_runs[0][2]} ms; max of 3 runs; target 0)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        measure(args.pairs)
        return 0
    from tests.harness.sandbox import run_in_sandbox

    return run_in_sandbox([PY, "-m", "bench.launch", "--inside", "--pairs", str(args.pairs)],
                          cwd=str(Path(__file__).resolve().parents[1]))


if __name__ == "__main__":
    sys.exit(main())
