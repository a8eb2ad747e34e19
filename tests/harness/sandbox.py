"""Boot a throw-away systemd as PID 1 of fresh pid/mount/cgroup/uts/ipc namespaces.

    python -m tests.harness.sandbox -- CMD [ARGS...]     (as root; exits with CMD's status)

The tests use :class:`Sandbox` directly. It follows ``shared/reference/systemd-sandbox.sh`` and
its hard-won rules, restated because breaking them corrupts the host:

* the sandbox's systemd must never see the host's ``/sys/fs/cgroup`` tmpfs (it would remount it
  read-only for everybody): the boot script mounts a fresh tmpfs there in its own mount namespace;
* its cgroup namespace is rooted in a child cgroup (``csd-<pid>``) made in every hierarchy, so
  that systemd neither escapes to the hierarchy root nor leaves cgroups behind; we remove them;
* cpuset v1 children get cpuset.cpus/mems copied from the parent before use;
* units that touch the host (sysctl, binfmt, udev, timers, ...) are masked and a minimal target
  that wants only D-Bus and journald is booted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time

MASKED_UNITS = ["systemd-sysctl.service", "systemd-binfmt.service", "proc-sys-fs-binfmt_misc.automount", "systemd-modules-load.service", "systemd-remount-fs.service", "systemd-timesyncd.service", "systemd-firstboot.service", "systemd-pstore.service", "systemd-hwdb-update.service", "systemd-udevd.service", "systemd-udev-trigger.service", "timers.target", "systemd-sysusers.service", "systemd-update-utmp.service", "systemd-random-seed.service", "systemd-journal-flush.service", "sys-kernel-debug.mount", "sys-kernel-tracing.mount", "sys-fs-fuse-connections.mount", "sys-kernel-config.mount"]

# Runs as the first process of the new namespaces: private /proc, /run, /tmp and cgroup mounts,
# then exec systemd. The shell moves itself into the sandbox cgroups *before* unshare (argv[1:]).
BOOT_SCRIPT = r"""
set -e
for d in "$@"; do echo $$ > "$d/cgroup.procs"; done
exec unshare --pid --fork --kill-child=SIGKILL --mount --cgroup --uts --ipc \
  --propagation private bash -c '
set -e
mount -t proc proc /proc
mount -t tmpfs -o mode=755 tmpfs /run
# directories under /tmp that the tests need (a checkout, a venv) survive the private /tmp
i=0; for d in $KEEP; do mkdir -p /run/keep/$i; mount --bind "$d" /run/keep/$i; i=$((i+1)); done
mount -t tmpfs -o mode=1777 tmpfs /tmp
i=0; for d in $KEEP; do mkdir -p "$d"; mount --move /run/keep/$i "$d"; i=$((i+1)); done
mount --bind /proc/sys /proc/sys; mount -o remount,bind,ro /proc/sys
mount -t tmpfs -o mode=755 tmpfs /sys/fs/cgroup
while IFS=: read -r id ctrl path; do
  if [ "$id" = 0 ]; then mkdir -p /sys/fs/cgroup/unified; mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified
  else dir=${ctrl#name=}; mkdir -p /sys/fs/cgroup/$dir
       case $ctrl in name=*) opts=none,$ctrl ;; *) opts=$ctrl ;; esac
       mount -t cgroup -o $opts cgroup /sys/fs/cgroup/$dir
  fi
done < /proc/self/cgroup
mkdir -p /run/systemd/system
for u in '"$MASKED"'; do ln -sf /dev/null /run/systemd/system/$u; done
printf "[Unit]\nDescription=condor-systemd test sandbox\nWants=dbus.socket dbus.service systemd-journald.socket\n" \
  > /run/systemd/system/sandbox.target
export container=condor-systemd-sandbox
exec /lib/systemd/systemd --system --unit=sandbox.target
'
"""


class SandboxError(RuntimeError):
    pass


def unavailable_reason() -> str | None:
    """Why a sandbox cannot be booted here, or None."""
    if os.geteuid() != 0:
        return "needs root (boots systemd in fresh namespaces)"
    for tool in ("/lib/systemd/systemd", "/usr/bin/unshare", "/usr/bin/nsenter"):
        if not os.path.exists(tool):
            return f"{tool} is not installed"
    if not os.path.isdir("/sys/fs/cgroup"):
        return "no /sys/fs/cgroup"
    return None


def _mountpoints() -> tuple[str | None, dict[str, str]]:
    unified, v1 = None, {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ", 1)
            fstype, _src, opts = right.split()[:3]
            mnt = left.split()[4]
            if fstype == "cgroup2" and unified is None:
                unified = mnt
            elif fstype == "cgroup":
                for o in opts.split(","):
                    if o not in ("rw", "ro") and "=" not in o or o.startswith("name="):
                        v1.setdefault(o, mnt)
    return unified, v1


class Sandbox:
    """A running sandboxed systemd; use as a context manager."""

    def __init__(self) -> None:
        self.name = f"csd-{os.getpid()}-{int(time.monotonic() * 1000) % 100000}"
        self.cgroups: list[str] = []
        self.pid1: int | None = None
        self._boot: subprocess.Popen | None = None
        self._log = tempfile.TemporaryFile()

    def __enter__(self) -> Sandbox:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _make_cgroups(self) -> None:
        _sweep_stale_cgroups()
        for parent in _my_cgroup_dirs():
            d = os.path.join(parent, self.name)
            os.makedirs(d, exist_ok=True)
            self.cgroups.append(d)
            if os.path.exists(os.path.join(d, "cpuset.cpus")):
                for name in ("cpuset.cpus", "cpuset.mems"):
                    with open(os.path.join(d, "..", name)) as src:
                        value = src.read()
                    with open(os.path.join(d, name), "w") as dst:
                        dst.write(value)

    def start(self, timeout: float = 30.0) -> None:
        self._make_cgroups()
        env = dict(os.environ, MASKED=" ".join(MASKED_UNITS), KEEP=" ".join(_kept_dirs()))
        self._boot = subprocess.Popen(
            ["bash", "-c", BOOT_SCRIPT, "boot", *self.cgroups], stdin=subprocess.DEVNULL,
            stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        while self.pid1 is None:
            self.pid1 = self._find_pid1()
            if self.pid1 is None:
                self._check_alive(deadline)
                time.sleep(0.02)
        while True:
            state = self.run(["systemctl", "is-system-running"], capture_output=True,
                             text=True, check=False).stdout.strip()
            if state in ("running", "degraded"):
                return
            self._check_alive(deadline)
            time.sleep(0.05)

    def _check_alive(self, deadline: float) -> None:
        assert self._boot is not None
        if self._boot.poll() is not None or time.monotonic() > deadline:
            self._log.seek(0)
            raise SandboxError("systemd sandbox did not boot:\n"
                               + self._log.read().decode(errors="replace")[-3000:])

    def _find_pid1(self) -> int | None:
        assert self._boot is not None
        # boot shell -> (exec) unshare -> forked child -> (exec) systemd
        try:
            with open(f"/proc/{self._boot.pid}/task/{self._boot.pid}/children") as f:
                kids = f.read().split()
        except OSError:
            return None
        for k in kids:
            try:
                with open(f"/proc/{k}/comm") as f:
                    if f.read().strip() == "systemd":
                        return int(k)
            except OSError:
                pass
        return None

    def command(self, argv: list[str], cwd: str | None = None) -> list[str]:
        """argv prefixed so that it runs inside the sandbox (all its namespaces)."""
        assert self.pid1 is not None
        return ["nsenter", "-t", str(self.pid1), "-a", f"--wd={cwd or os.getcwd()}", "--", *argv]

    def run(self, argv: list[str], cwd: str | None = None, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("check", True)
        return subprocess.run(self.command(argv, cwd), **kw)

    def wrapper_pid(self, proc: subprocess.Popen, timeout: float = 10) -> int:
        """The process proc started inside: nsenter forks it, so signals go to that child."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
                    kids = f.read().split()
            except OSError:
                kids = []
            if kids:
                return int(kids[0])
            time.sleep(0.01)
        raise SandboxError("the command did not start inside the sandbox")

    def popen(self, argv: list[str], cwd: str | None = None, **kw) -> subprocess.Popen:
        return subprocess.Popen(self.command(argv, cwd), **kw)

    def stop(self) -> None:
        if self.pid1 is not None and _alive(self.pid1):
            subprocess.run(self.command(["systemctl", "exit"]), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=False, timeout=30)
            deadline = time.monotonic() + 5
            while _alive(self.pid1) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(self.pid1):
                os.kill(self.pid1, signal.SIGKILL)
        if self._boot is not None:
            try:
                self._boot.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._boot.kill()
                self._boot.wait()
        self._remove_cgroups()
        self._log.close()

    def _remove_cgroups(self) -> None:
        deadline = time.monotonic() + 10
        while self.cgroups:
            left = []
            for d in self.cgroups:
                if not _remove_tree(d):
                    left.append(d)
            self.cgroups = left
            if left:
                if time.monotonic() > deadline:
                    raise SandboxError(f"sandbox cgroups left behind: {left}")
                for d in left:  # stragglers: kill what is still inside, then retry
                    _kill_cgroup(d)
                time.sleep(0.05)


def _die_with_parent() -> None:
    """Boot shell (then unshare, same process): SIGKILL when the harness dies, however it dies;
    unshare --kill-child then takes the namespace's PID 1, and so the whole sandbox, with it."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _my_cgroup_dirs() -> list[str]:
    """This process's cgroup directory in every mounted hierarchy."""
    unified, v1 = _mountpoints()
    with open("/proc/self/cgroup") as f:
        mine = f.read().splitlines()
    dirs = []
    for line in mine:
        hid, ctrls, path = line.split(":", 2)
        mnt = unified if hid == "0" else v1.get(ctrls.split(",")[0])
        if mnt:
            dirs.append(os.path.realpath(os.path.join(mnt, path.lstrip("/"))))
    return dirs


def _remove_tree(path: str) -> bool:
    """rmdir a cgroup and its children, deepest first; True when it is gone."""
    for root, dirs, _files in os.walk(path, topdown=False):
        for sub in dirs:
            _rmdir(os.path.join(root, sub))
    return _rmdir(path)


def _sweep_stale_cgroups() -> None:
    """Remove csd-<pid>-* cgroups of harnesses that are gone (killed before their cleanup)."""
    for parent in _my_cgroup_dirs():
        if not os.path.isdir(parent):
            continue
        for name in os.listdir(parent):
            parts = name.split("-")
            if parts[0] == "csd" and len(parts) == 3 and parts[1].isdigit() \
                    and not os.path.exists(f"/proc/{parts[1]}"):
                _kill_cgroup(os.path.join(parent, name))
                _remove_tree(os.path.join(parent, name))


def _kept_dirs() -> list[str]:
    """The checkout and the interpreter's prefix, if they live under /tmp."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = []
    for d in (here, sys.prefix):
        d = os.path.realpath(d)
        if d.startswith("/tmp/") and " " not in d and d not in out:
            out.append(d)
    return out


def _rmdir(path: str) -> bool:
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def _kill_cgroup(path: str) -> None:
    for root, _dirs, files in os.walk(path):
        if "cgroup.procs" in files:
            try:
                with open(os.path.join(root, "cgroup.procs")) as f:
                    for pid in f.read().split():
                        try:
                            os.kill(int(pid), signal.SIGKILL)
                        except ProcessLookupError:
                            pass
            except OSError:
                pass


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def run_in_sandbox(argv: list[str], cwd: str | None = None) -> int:
    """Boot a sandbox, run argv in it, tear it down; argv's status (77: no sandbox here)."""
    reason = unavailable_reason()
    if reason:
        print(f"sandbox: {reason}", file=sys.stderr)
        return 77
    with Sandbox() as sb:
        return sb.run(argv, cwd=cwd, check=False).returncode


def raise_on_sigterm() -> None:
    """Let SIGTERM unwind the stack (SystemExit), so that Sandbox.__exit__ cleans up."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def main(argv: list[str]) -> int:
    raise_on_sigterm()
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print("usage: python -m tests.harness.sandbox -- CMD [ARGS...]", file=sys.stderr)
        return 2
    return run_in_sandbox(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
