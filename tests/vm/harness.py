"""Boot a Debian guest under qemu and run one command in it; see tests/vm/run --help.

The guest is a full Debian system (systemd as PID 1, pure cgroup v2) built by build-image.sh
and cached under ~/.cache/condor-systemd/vm/<release>-<recipe hash>/. Each run boots a fresh
guest from that image with -snapshot (the image is never written), shares the project checkout
read-only at its own path and a run directory over 9p, streams the command's output, and exits
with its status. qemu never outlives the run: it dies with us (PR_SET_PDEATHSIG) and is killed
in every exit path; the run directory is removed.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parent.parent
RELEASES = {"bookworm": "Debian 12, systemd 252", "trixie": "Debian 13, systemd 257"}
FLAVOURS = ("htcondor",)  # images with more than the VM tier's guest: tests/vm/<flavour>/
HARNESS_FAILED = 125  # the image could not be built or the guest did not boot
TIMED_OUT = 124  # the command outlived --timeout; the guest was stopped
KERNEL_ARGS = ("root=/dev/vda rw console=ttyS0 cgroup_no_v1=all "
               "systemd.unified_cgroup_hierarchy=1 panic=-1")


class HarnessError(Exception):
    """A stage of the run failed; printed as one line, plus the serial log's tail if any."""

    def __init__(self, stage: str, message: str, serial_tail: str = "") -> None:
        super().__init__(f"{stage}: {message}")
        self.serial_tail = serial_tail


def say(message: str) -> None:
    print(f"csd-vm: {message}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "condor-systemd" / "vm"


# -- images --------------------------------------------------------------------------------

def recipe_files(flavour: str = "") -> list[Path]:
    files = [HERE / "build-image.sh", *sorted((HERE / "guest").iterdir())]
    return files + (sorted((HERE / flavour).iterdir()) if flavour else [])


def recipe_hash(release: str, flavour: str = "") -> str:
    digest = hashlib.sha256(f"{release}{flavour}".encode())
    for path in recipe_files(flavour):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


class Image(NamedTuple):
    release: str
    directory: Path
    flavour: str = ""  # "htcondor": with a one-machine HTCondor pool

    @property
    def disk(self) -> Path:
        return self.directory / "image.raw"


def image(release: str, build_timeout: float = 1200, flavour: str = "") -> tuple[Image, float]:
    """The cached image of release (and flavour) for the current recipe, built first if missing
    or stale; with the seconds spent building (0 when cached)."""
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    name = f"{release}-{flavour}" if flavour else release
    final = root / f"{name}-{recipe_hash(release, flavour)}"
    if (final / "image.raw").exists():
        return Image(release, final, flavour), 0.0
    with open(root / f".lock-{name}", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be building the same image
        if (final / "image.raw").exists():
            return Image(release, final, flavour), 0.0
        for pattern in (f"{name}-*", f".build-{name}-*"):  # older recipes; killed builds
            for stale in root.glob(pattern):
                if not any(f"{name}-{other}-" in stale.name for other in FLAVOURS):
                    shutil.rmtree(stale, ignore_errors=True)
        work = root / f".build-{name}-{os.getpid()}"
        work.mkdir()
        started = time.monotonic()
        say(f"building the {name} image ({RELEASES[release]}) into {final}")
        try:
            # a private mount namespace: debootstrap's and the recipe's mounts die with it
            subprocess.run(["unshare", "--mount", "--propagation", "private",
                            str(HERE / "build-image.sh"), release, str(work), flavour],
                           check=True, timeout=build_timeout, stdin=subprocess.DEVNULL,
                           stdout=sys.stderr, preexec_fn=_die_with_parent)
            work.rename(final)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            raise HarnessError("image build", f"{name}: {exc}") from None
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return Image(release, final, flavour), time.monotonic() - started


# -- guests --------------------------------------------------------------------------------

class Guest(NamedTuple):
    memory_mib: int = 3072
    cpus: int = 2
    boot_timeout: float = 300
    kvm_boot_timeout: float = 60  # a KVM guest that is not up by then is not going to be
    shutdown_timeout: float = 60
    kernel_args: tuple[str, ...] = ()


ACCELERATORS = {
    "kvm": ["-accel", "kvm", "-cpu", "host"],
    "tcg": ["-accel", "tcg,thread=multi,tb-size=512", "-cpu", "max"],
}
CRASHED = "Kernel panic - not syncing: Fatal exception"
# what qemu prints when KVM cannot run the guest (it then aborts, or pauses the guest forever)
KVM_FAILURES = re.compile(rb"KVM internal error|emulation failure|failed to set MSR|"
                          rb"Could not access KVM|kvm_init|KVM not supported")


class KvmUnusable(Exception):
    pass


def accelerators(requested: str) -> list[str]:
    """The accelerators to try, in order. auto: KVM only where a guest has really booted with
    it on this host (the verdict is cached); our machines' /dev/kvm is a software hypervisor
    on which a stock kernel dies of emulation failures, so they use TCG."""
    if requested != "auto":
        return [requested]
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return ["tcg"]
    verdict = _kvm_verdict_file()
    known = verdict.read_text().strip() if verdict.exists() else ""
    return {"yes": ["kvm"], "no": ["tcg"]}.get(known, ["kvm", "tcg"])


def _kvm_verdict_file() -> Path:
    qemu = shutil.which("qemu-system-x86_64") or ""
    stamp = os.stat(qemu).st_mtime_ns if qemu else 0
    key = hashlib.sha256(f"{os.uname().release} {os.uname().version} {stamp}".encode())
    return cache_dir() / f"kvm-verdict-{key.hexdigest()[:12]}"


SCRATCH_DISK = "scratch-disk.raw"
SCRATCH_DISK_SIZE = "256M"


def make_scratch_disk(run_dir: Path) -> None:
    """A sparse ext4 image for the guest's /dev/vdb (deleted with the run directory)."""
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "csd-scratch", str(run_dir / SCRATCH_DISK),
                    SCRATCH_DISK_SIZE], check=True, stdout=subprocess.DEVNULL)


def qemu_command(img: Image, run_dir: Path, guest: Guest, accel: str) -> list[str]:
    kernel_args = " ".join([KERNEL_ARGS, *guest.kernel_args])
    return [
        "qemu-system-x86_64", "-nodefaults", "-no-user-config", "-display", "none",
        "-no-reboot",  # panic=-1 reboots: make that an exit
        *ACCELERATORS[accel],
        "-smp", str(guest.cpus), "-m", str(guest.memory_mib),
        "-kernel", str(img.directory / "vmlinuz"), "-initrd", str(img.directory / "initrd.img"),
        "-append", kernel_args,
        "-drive", f"file={img.disk},format=raw,if=virtio,snapshot=on",
        # a second, empty disk (/dev/vdb, ext4): an execute directory on a real block device
        # of its own, for the I/O caps (tests/systemd/test_io_disk.py)
        "-drive", f"file={run_dir / SCRATCH_DISK},format=raw,if=virtio",
        "-nic", "none", "-device", "virtio-rng-pci",
        "-serial", f"file:{run_dir / 'serial.log'}",
        "-virtfs", f"local,path={run_dir},mount_tag=csdrun,security_model=none",
        "-virtfs", f"local,path={CHECKOUT},mount_tag=csdsrc,security_model=none,readonly=on",
    ]


def boot_stage(serial: str) -> str:
    """How far a guest got, read off its serial console."""
    if not serial.strip():
        return "firmware (the kernel printed nothing)"
    if "Run /init as init process" not in serial:
        return "kernel"
    if not re.search(r"Welcome to|systemd\[1\]", serial):
        return "initrd (finding or mounting the root disk)"
    if "csd-vm-guest: cannot mount the run share" in serial:
        return "csd-vm-guest (the run directory's 9p share did not mount)"
    return "systemd boot (csd-vm-guest.service never started)"


class Run:
    """One guest running one command; use as a context manager (it always stops qemu)."""

    def __init__(self, img: Image, argv: list[str], cwd: str, env: dict[str, str],
                 guest: Guest, accels: list[str]) -> None:
        self.img, self.guest, self.accels = img, guest, accels
        self.accel = accels[0]
        _sweep_stale_run_dirs()
        self.dir = Path(tempfile.mkdtemp(prefix=f"csd-vm-{os.getpid()}-"))
        (self.dir / "argv").write_bytes(b"".join(a.encode() + b"\0" for a in argv))
        (self.dir / "env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        (self.dir / "cwd").write_text(cwd)
        (self.dir / "checkout").write_text(str(CHECKOUT))
        make_scratch_disk(self.dir)
        if img.flavour == "htcondor":
            (self.dir / "htcondor").write_text("wait for the pool\n")  # csd-vm-guest does
        self.qemu: subprocess.Popen | None = None
        self.qemu_log = open(self.dir / "qemu.log", "w+b")  # noqa: SIM115 - closed in __exit__
        self.times: dict[str, float] = {}

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.qemu is not None and self.qemu.poll() is None:
            self.qemu.kill()
            self.qemu.wait()
        self.qemu_log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def serial_tail(self, lines: int = 40) -> str:
        try:
            text = (self.dir / "serial.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _stage(self) -> str:
        try:
            return (self.dir / "stage").read_text().strip()
        except OSError:
            return ""

    def _fail(self, stage: str, message: str) -> HarnessError:
        self.qemu_log.seek(0)
        qemu_said = self.qemu_log.read().decode(errors="replace").strip()
        if qemu_said:
            message += f"; qemu: {qemu_said[-500:]}"
        return HarnessError(stage, message, self.serial_tail())

    def execute(self, timeout: float, out=None) -> int:  # noqa: ANN001 - a binary stream
        """Boot, run, stream, shut down; the command's exit status."""
        out = out or sys.stdout.buffer
        started = time.monotonic()
        for accel in self.accels:
            self.accel = accel
            try:
                self._boot_once_more_after_a_crash()
                break
            except KvmUnusable as exc:
                say(f"KVM cannot run a guest here ({exc}); using TCG emulation")
                _kvm_verdict_file().write_text("no\n")
        if self.accel == "kvm" and len(self.accels) > 1:
            _kvm_verdict_file().write_text("yes\n")
        self.times["boot"] = time.monotonic() - started

        ran = time.monotonic()
        status = self._stream(out, ran + timeout)
        self.times["command"] = time.monotonic() - ran
        if status is None:
            return TIMED_OUT

        stopping = time.monotonic()
        try:
            self.qemu.wait(timeout=self.guest.shutdown_timeout)
        except subprocess.TimeoutExpired:
            say(f"the guest did not power off within {self.guest.shutdown_timeout:.0f} s; "
                "killed")
        self.times["shutdown"] = time.monotonic() - stopping
        return status

    def _boot_once_more_after_a_crash(self) -> None:
        """A guest kernel that crashed ("Fatal exception") before the command started is booted
        once more: under TCG emulation the trixie kernel has crashed at random while booting
        (once in kmem_cache_free, in about 15 boots on 2026-11-30). Nothing ran yet, so nothing
        is hidden; a second crash, or any other boot failure, is reported as before."""
        try:
            self._boot()
        except HarnessError as exc:
            if self.accel != "tcg" or CRASHED not in exc.serial_tail:
                raise
            if self.qemu.poll() is None:
                self.qemu.kill()
                self.qemu.wait()
            say(f"the guest's kernel crashed while booting ({exc}); booting it once more")
            self._boot()

    def _boot(self) -> None:
        """Start qemu; return once the guest runs csd-vm-guest. KvmUnusable if KVM fails."""
        for leftover in ("stage", "serial.log"):  # of a KVM attempt
            (self.dir / leftover).unlink(missing_ok=True)
        self.qemu_log.seek(0)
        self.qemu_log.truncate()
        self.qemu = subprocess.Popen(qemu_command(self.img, self.dir, self.guest, self.accel),
                                     stdin=subprocess.DEVNULL, stdout=self.qemu_log,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=_qemu_preexec)
        probing = self.accel == "kvm" and len(self.accels) > 1
        limit = self.guest.kvm_boot_timeout if probing else self.guest.boot_timeout
        deadline = time.monotonic() + limit
        while self._stage() == "":
            failed = self.qemu.poll() is not None
            if probing:
                self.qemu_log.seek(0)
                said = KVM_FAILURES.search(self.qemu_log.read())
                if said or failed or time.monotonic() > deadline:
                    self.qemu.kill()
                    self.qemu.wait()
                    raise KvmUnusable(said.group().decode() if said else
                                      "qemu exited" if failed else f"not up in {limit:.0f} s")
            elif failed:
                raise self._fail(f"boot, {boot_stage(self.serial_tail(10_000))}",
                                 f"qemu exited with {self.qemu.returncode} before the guest "
                                 "was up")
            elif time.monotonic() > deadline:
                raise self._fail(f"boot, {boot_stage(self.serial_tail(10_000))}",
                                 f"the guest was not up after {limit:.0f} s")
            time.sleep(0.1)

    def _stream(self, out, deadline: float) -> int | None:  # noqa: ANN001
        """Copy the command's output as it comes; its status, or None on timeout."""
        assert self.qemu is not None
        output = self.dir / "output"
        offset = 0
        while True:
            status = self._read_status()
            offset = _copy_new(output, offset, out)
            if status is not None:
                _copy_new(output, offset, out)
                return status
            if self.qemu.poll() is not None:
                raise self._fail("run", f"qemu exited with {self.qemu.returncode} while the "
                                        "command ran (guest crash or power-off)")
            if time.monotonic() > deadline:
                say("the command timed out; stopping the guest")
                return None
            time.sleep(0.2)

    def _read_status(self) -> int | None:
        try:
            return int((self.dir / "status").read_text())
        except (OSError, ValueError):
            return None


def _sweep_stale_run_dirs() -> None:
    """Run directories of harnesses that were SIGKILLed (their qemu died with them)."""
    for stale in Path(tempfile.gettempdir()).glob("csd-vm-*-*"):
        pid = stale.name.split("-")[2]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            shutil.rmtree(stale, ignore_errors=True)


def _copy_new(path: Path, offset: int, out) -> int:  # noqa: ANN001
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return offset
    if data:
        out.write(data)
        out.flush()
    return offset + len(data)


def _die_with_parent() -> None:
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _qemu_preexec() -> None:
    """qemu dies with us, and an aborting qemu (KVM refusing the guest) leaves no core file."""
    import resource

    _die_with_parent()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _raise_on_signals() -> None:
    """SIGTERM/SIGHUP end the run like Ctrl-C does: through the cleanup."""
    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)


def guest_env(release: str) -> dict[str, str]:
    return {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb", "PYTHONDONTWRITEBYTECODE": "1",
        # tests/conftest.py: use this systemd (PID 1) instead of booting a namespace sandbox
        "CONDOR_SYSTEMD_TEST_SYSTEMD": "pid1",
        "CONDOR_SYSTEMD_TEST_TIER": f"vm-{release}",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tests/vm/run",
        description="Run CMD as root inside a fresh Debian guest (systemd PID 1, cgroup v2) "
                    "booted under qemu, with the checkout at its own path; exit with CMD's "
                    f"status ({TIMED_OUT} on timeout, {HARNESS_FAILED} if the image could not "
                    "be built or the guest did not boot).")
    parser.add_argument("--release", choices=sorted(RELEASES), default="bookworm",
                        help="bookworm (Debian 12, systemd 252) or trixie (Debian 13, "
                             "systemd 257); default bookworm")
    parser.add_argument("--timeout", type=float, default=1800, metavar="SECONDS",
                        help="stop the guest if CMD runs longer (default 1800)")
    parser.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto",
                        help="auto (default): KVM only if a guest has booted with it on this "
                             "host, else TCG emulation")
    parser.add_argument("--kernel-arg", action="append", default=[], metavar="ARG",
                        help="add ARG to the guest kernel's command line (repeatable), e.g. "
                             "systemd.log_level=debug")
    parser.add_argument("--htcondor", action="store_true",
                        help="trixie only: a guest with Debian's HTCondor (condor 23.9) as a "
                             "one-machine pool on 127.0.0.1 and a submit user, alice; the pool "
                             "is up when CMD starts")
    parser.add_argument("--image-only", action="store_true",
                        help="build (or find) the image and exit; no CMD")
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command and not args.image_only:
        parser.error("no command: tests/vm/run [--release R] -- CMD [ARGS...]")
    if args.htcondor and args.release != "trixie":
        parser.error("--htcondor needs --release trixie (Debian 12 has no condor package)")
    if os.geteuid() != 0:
        parser.error("needs root (debootstrap, and guests that run the real-systemd tests)")
    for tool in ("qemu-system-x86_64", "debootstrap", "mkfs.ext4", "unshare"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed (README: the VM tier's host packages)")

    _raise_on_signals()
    try:
        img, built = image(args.release, flavour="htcondor" if args.htcondor else "")
        if args.image_only:
            say(f"{args.release} image: {img.directory} (built in {built:.0f} s)"
                if built else f"{args.release} image: {img.directory} (cached)")
            return 0
        cwd = os.getcwd()
        if not cwd.startswith(str(CHECKOUT)):
            cwd = str(CHECKOUT)
        with Run(img, command, cwd, guest_env(args.release),
                 Guest(kernel_args=tuple(args.kernel_arg)),
                 accelerators(args.accel)) as run:
            status = run.execute(args.timeout)
            times = ", ".join(f"{k} {v:.1f} s" for k, v in run.times.items())
            made = f"built in {built:.0f} s" if built else "cached"
            say(f"{args.release} ({run.accel}): image {made}, {times}; exit status {status}")
            return status
    except HarnessError as exc:
        say(f"{args.release}: failed at {exc}")
        if exc.serial_tail:
            print(f"--- last lines of the guest's serial console ---\n{exc.serial_tail}",
                  file=sys.stderr)
        return HARNESS_FAILED
    except KeyboardInterrupt as exc:
        say(f"interrupted ({exc or 'SIGINT'}); the guest was stopped")
        return 130


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
