"""The thin client and the broker against systemd-run and bare execution, in the sandbox.

    sudo .venv/bin/python -m bench.broker [--pairs 40] [--jobs 200]

Boots the test sandbox (systemd 252 as PID 1 of fresh namespaces), installs the broker from
units/ (tests/harness/broker.py: socket-activated, as on a node), then measures inside it:
  * wall time of bare `true`, `systemd-run --wait --pipe --quiet true` (plain, and with the
    settings every job's unit gets: private /tmp, accounting, Type=exec, a stop-post process)
    and the client's `condor-systemd run -- true` (Debian's /usr/bin/python3, as a job user runs
    it), interleaved in rounds (each in a shuffled order); the median of the per-round ratios
    (target: client <= 1.5x plain systemd-run); the interpreter's start-up and the client's
    imports alone;
  * a waiting client's RSS against a bare /usr/bin/python3's (target <= 1.15x), and its CPU
    while the job sleeps (target: 0 ticks: it waits on its socket);
  * N jobs at once (`sleep 1`): the wall time of N concurrent clients against N concurrent
    systemd-runs (target <= 1.5x), the broker's RSS with N jobs running, and its CPU per job.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.launch import cpu_ticks, status_field  # noqa: E402
from tests.harness import broker  # noqa: E402

SYSTEMD_RUN = ["systemd-run", "--wait", "--pipe", "--quiet"]
# What every job's unit gets without options (backends/service.py): the job's own /tmp, the
# accounting, a start that waits for the exec, a process in stop-post (our cgroup holder).
LIKE_FOR_LIKE = ["--slice", "condor.slice", "-p", "Type=exec", "-p", "PrivateTmp=yes",
                 "-p", "ExecStopPost=/bin/true"] + [
    arg for kind in ("CPU", "Memory", "IO", "Tasks") for arg in ("-p", f"{kind}Accounting=yes")]
CLIENT_IMPORTS = "import condor_systemd.launch, condor_systemd.client"


def client(*args: str) -> list[str]:
    return [broker.CLIENT_PYTHON, str(broker.SCRIPT), *args]  # as installed


def client_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(broker.PKG))


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def launch(pairs: int) -> None:
    env = client_env()
    commands = {"true (bare)": (["true"], None),
                "systemd-run --wait --pipe true": (SYSTEMD_RUN + ["true"], None),
                "  the same, the wrapper's unit settings": (SYSTEMD_RUN + LIKE_FOR_LIKE + ["true"],
                                                            None),
                "condor-systemd run -- true (client)": (client("run", "--", "true"), env),
                "/usr/bin/python3 -c pass": ([broker.CLIENT_PYTHON, "-c", "pass"], None),
                "  + the client's imports": ([broker.CLIENT_PYTHON, "-c", CLIENT_IMPORTS], env)}
    for argv, e in commands.values():  # warm caches, start the broker
        for _ in range(3):
            timed(argv, e)
    times: dict[str, list[float]] = {name: [] for name in commands}
    order = list(commands)
    shuffle = random.Random(1).shuffle  # what runs just before a command (systemd still
    for _ in range(pairs):              # cleaning up after it) must not favour one of them
        shuffle(order)
        for name in order:
            argv, e = commands[name]
            times[name].append(timed(argv, e))
    print(f"launch, {pairs} interleaved rounds in shuffled order, medians:")
    for name, values in times.items():
        print(f"  {name:40s} {statistics.median(values) * 1000:7.1f} ms")
    client_times = times["condor-systemd run -- true (client)"]
    for name, note in (("systemd-run --wait --pipe true", " (target <= 1.5x)"),
                       ("  the same, the wrapper's unit settings", "")):
        ratio = statistics.median(c / s for c, s in zip(client_times, times[name]))
        print(f"  client / {name.strip()} (median of per-round ratios): {ratio:.2f}x{note}")


def waiting(seconds: float = 2) -> None:
    rss, ticks = [], []
    for _ in range(3):
        proc = subprocess.Popen(client("run", "--", "sleep", str(seconds + 2)), env=client_env())
        time.sleep(1)  # past start-up
        rss.append(status_field(proc.pid, "VmRSS"))
        before = cpu_ticks(proc.pid)
        time.sleep(seconds)
        ticks.append(cpu_ticks(proc.pid) - before)
        proc.wait()
    bare = []
    for _ in range(3):
        proc = subprocess.Popen([broker.CLIENT_PYTHON, "-c", "import time; time.sleep(3)"])
        time.sleep(1)
        bare.append(status_field(proc.pid, "VmRSS"))
        proc.wait()
    r, b = statistics.median(rss), statistics.median(bare)
    print(f"waiting client: RSS {r} KiB vs bare /usr/bin/python3 {b} KiB = {r / b:.2f}x "
          f"(target <= 1.15x); CPU while waiting {seconds:g} s: {max(ticks)} ticks (max of 3; "
          "target 0)")


def concurrent(count: int) -> None:
    refused: list[str] = []

    def many(argv_of, env: dict[str, str] | None) -> float:  # noqa: ANN001
        """Wall time of `count` at once. Every client must succeed; systemd-run may be refused
        by dbus-daemon under this load ("destination has a full message queue": it goes
        through the bus, the broker through systemd's private socket), which is counted."""
        start = time.perf_counter()
        procs = [subprocess.Popen(argv_of(i), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  env=env, text=True) for i in range(count)]
        failed = [(p.args[0], err.strip()) for p in procs
                  for _out, err in [p.communicate()] if p.returncode]
        assert all(argv0 == "systemd-run" for argv0, _ in failed), failed
        refused.extend(err.split(":")[1].strip() if ":" in err else err for _, err in failed)
        return time.perf_counter() - start

    pid = int(subprocess.run(["systemctl", "show", "-P", "MainPID", "condor-systemd.service"],
                             capture_output=True, text=True).stdout.strip())
    rounds = []
    for _ in range(3):
        sd = many(lambda i: SYSTEMD_RUN + ["sleep", "1"], None)
        alike = many(lambda i: SYSTEMD_RUN + LIKE_FOR_LIKE + ["sleep", "1"], None)
        ticks_before = cpu_ticks(pid)
        holder = subprocess.Popen(client("run", "--", "sleep", "3"), env=client_env())
        cl = many(lambda i: client("run", "--", "sleep", "1"), client_env())
        broker_ticks = cpu_ticks(pid) - ticks_before
        holder.wait()
        rounds.append((sd, cl, broker_ticks, alike))
    # the broker's RSS while `count` jobs run
    procs = [subprocess.Popen(client("run", "--", "sleep", "3"), env=client_env())
             for _ in range(count)]
    time.sleep(2)
    rss = status_field(pid, "VmRSS")
    for p in procs:
        p.wait()
    sd = statistics.median(r[0] for r in rounds)
    cl = statistics.median(r[1] for r in rounds)
    per_job = statistics.median(r[2] for r in rounds) / os.sysconf("SC_CLK_TCK") / (count + 1)
    alike = statistics.median(r[3] for r in rounds)
    print(f"{count} jobs at once (sleep 1), median of 3: systemd-run {sd:.2f} s, client "
          f"{cl:.2f} s = {cl / sd:.2f}x (target <= 1.5x); against systemd-runs with the "
          f"wrapper's unit settings ({alike:.2f} s): {cl / alike:.2f}x")
    if refused:
        print(f"  systemd-runs that failed (of {6 * count}): {len(refused)}: "
              f"{sorted(set(refused))}")
    print(f"broker: RSS {rss} KiB with {count} jobs running; CPU per launched job "
          f"{per_job * 1000:.1f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        from tests.harness.system import RunningSystemd

        broker.install(RunningSystemd())
        import compileall

        compileall.compile_dir(str(broker.PKG), quiet=1)  # as installed: byte-compiled
        launch(args.pairs)
        waiting()
        concurrent(args.jobs)
        return 0
    from tests.harness.sandbox import run_in_sandbox

    return run_in_sandbox([sys.executable, "-m", "bench.broker", "--inside", "--pairs",
                           str(args.pairs), "--jobs", str(args.jobs)], cwd=str(ROOT))


if __name__ == "__main__":
    sys.exit(main())
