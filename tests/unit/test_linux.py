"""linux.py's ioprio_set: its per-architecture syscall numbers against the kernel's own tables,
and a real call on a forked child read back with ionice(1)."""

from __future__ import annotations

import errno
import glob
import os
import platform
import re
import shutil
import struct
import subprocess
import sys
import sysconfig

import pytest

from condor_systemd.backends import linux

# ioprio_set's line in each syscall table, quoted from the kernel source (torvalds/linux;
# the numbers have not changed since the syscall was added in 2.6.13).
KERNEL_LINES = {
    "x86_64": ("arch/x86/entry/syscalls/syscall_64.tbl",
               "251\tcommon\tioprio_set\t\tsys_ioprio_set"),
    "i386": ("arch/x86/entry/syscalls/syscall_32.tbl",
             "289\ti386\tioprio_set\t\tsys_ioprio_set\t\t\t__ia32_sys_ioprio_set"),
    "arm": ("arch/arm/tools/syscall.tbl",
            "314\tcommon\tioprio_set\t\tsys_ioprio_set"),
    "powerpc": ("arch/powerpc/kernel/syscalls/syscall.tbl",
                "273\tnospu\tioprio_set\t\t\tsys_ioprio_set"),
    "s390": ("arch/s390/kernel/syscalls/syscall.tbl",
             "282  common\tioprio_set\t\tsys_ioprio_set\t\t\tsys_ioprio_set"),
    # aarch64, riscv and loongarch have no table of their own: they use the generic one
    "generic": ("include/uapi/asm-generic/unistd.h", "#define __NR_ioprio_set 30"),
}

# Which table a process uses: (uname -m, pointer bits) -> table. A 32-bit userland on a 64-bit
# kernel enters through the 32-bit ABI although uname reports the kernel's machine.
ABIS = [
    ("x86_64", 64, "x86_64"),
    ("x86_64", 32, "i386"),
    ("i686", 32, "i386"),
    ("i386", 32, "i386"),
    ("aarch64", 64, "generic"),
    ("aarch64", 32, "arm"),
    ("armv7l", 32, "arm"),
    ("armv6l", 32, "arm"),
    ("armv8l", 32, "arm"),
    ("ppc64le", 64, "powerpc"),
    ("ppc64", 64, "powerpc"),
    ("ppc", 32, "powerpc"),
    ("s390x", 64, "s390"),
    ("riscv64", 64, "generic"),
    ("loongarch64", 64, "generic"),
]

# Where linux-libc-dev installs each table's numbers (Debian's layout; asm/ is per multiarch).
HOST_HEADERS = {
    "x86_64": "/usr/include/*/asm/unistd_64.h",
    "i386": "/usr/include/*/asm/unistd_32.h",
    "generic": "/usr/include/asm-generic/unistd.h",
}
# This process's own header, by its multiarch triplet.
MULTIARCH_HEADER = {
    "x86_64-linux-gnu": "/usr/include/x86_64-linux-gnu/asm/unistd_64.h",
    "i386-linux-gnu": "/usr/include/i386-linux-gnu/asm/unistd_32.h",
    "aarch64-linux-gnu": "/usr/include/asm-generic/unistd.h",
    "arm-linux-gnueabihf": "/usr/include/arm-linux-gnueabihf/asm/unistd-eabi.h",
    "arm-linux-gnueabi": "/usr/include/arm-linux-gnueabi/asm/unistd-eabi.h",
    "powerpc64le-linux-gnu": "/usr/include/powerpc64le-linux-gnu/asm/unistd_64.h",
    "s390x-linux-gnu": "/usr/include/s390x-linux-gnu/asm/unistd_64.h",
    "riscv64-linux-gnu": "/usr/include/asm-generic/unistd.h",
}


def _number_in_quote(line: str) -> int:
    """The syscall number of a quoted .tbl line (first column) or #define (last word)."""
    found = re.fullmatch(r"(\d+)\s.*", line) or re.fullmatch(r"#define __NR_ioprio_set (\d+)",
                                                               line)
    assert found, line
    return int(found.group(1))


def _number_in_header(path: str) -> int | None:
    with open(path) as f:
        for line in f:
            # arm's EABI header writes (__NR_SYSCALL_BASE + 314); the EABI base is 0
            found = re.match(r"#define\s+__NR_ioprio_set\s+\(?(?:__NR_SYSCALL_BASE\s*\+\s*)?"
                             r"(\d+)\)?\s*$", line)
            if found:
                return int(found.group(1))
    return None


@pytest.mark.parametrize(("machine", "bits", "table"), ABIS)
def test_number_is_the_kernel_tables(machine, bits, table):
    source, line = KERNEL_LINES[table]
    assert linux.ioprio_set_number(machine, bits) == _number_in_quote(line), source


@pytest.mark.parametrize("table", sorted(HOST_HEADERS))
def test_quoted_lines_agree_with_this_hosts_headers(table):
    """The quotes above, checked against the headers installed here (where there are some)."""
    paths = sorted(glob.glob(HOST_HEADERS[table]))
    if not paths:
        pytest.skip(f"no {HOST_HEADERS[table]} here (linux-libc-dev not installed, or this "
                    "architecture's package does not carry that table)")
    assert _number_in_header(paths[0]) == _number_in_quote(KERNEL_LINES[table][1]), paths[0]


def test_this_hosts_number_is_its_kernel_headers():
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    header = MULTIARCH_HEADER.get(multiarch)
    if header is None:
        pytest.skip(f"no known header location for multiarch {multiarch!r}")
    if not os.path.exists(header):
        pytest.skip(f"{header} is missing: the linux-libc-dev headers are not installed")
    expected = _number_in_header(header)
    assert expected is not None, f"{header} does not define __NR_ioprio_set"
    bits = struct.calcsize("P") * 8
    assert linux.ioprio_set_number(platform.machine(), bits) == expected


@pytest.mark.parametrize("machine", ["mips64", "sparc64", ""])
def test_unknown_architecture_has_no_number(machine):
    assert linux.ioprio_set_number(machine, 64) is None


def test_unknown_architecture_fails_only_when_called():
    # a fresh interpreter: the module must import on such a machine, and the call must say why
    code = (
        "import platform\n"
        "platform.machine = lambda: 'mips64'\n"
        "from condor_systemd.backends import linux\n"
        "try:\n"
        "    linux.set_best_effort_io_priority(7)\n"
        "except OSError as exc:\n"
        "    print(exc.errno, exc.strerror)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (f"{errno.ENOSYS} ioprio_set: syscall number unknown on this "
                           "architecture (mips64)\n")


def test_sets_best_effort_level_on_a_process():
    ionice = shutil.which("ionice")
    if ionice is None:
        pytest.skip("ionice (util-linux) is not installed: nothing independent reads it back")

    def shown(pid: int) -> str:
        proc = subprocess.run([ionice, "-p", str(pid)], capture_output=True, text=True,
                              timeout=30)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    ours = shown(os.getpid())
    # a process in the same group and of the same user, at a known priority: ioprio_set on
    # the group or the user instead of the process would change it too
    sibling = subprocess.Popen(["sleep", "60"])
    subprocess.run([ionice, "-c", "2", "-n", "0", "-p", str(sibling.pid)], check=True, timeout=30)
    report_r, report_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: set its own priority, say how it went, wait to be read
        try:
            os.close(report_r)
            os.close(go_w)
            try:
                linux.set_best_effort_io_priority(7)
                os.write(report_w, b"ok")
            except OSError as exc:
                os.write(report_w, str(exc).encode())
            os.read(go_r, 1)
        finally:
            os._exit(0)
    os.close(report_w)
    os.close(go_r)
    try:
        report = os.read(report_r, 1000).decode()
        assert report == "ok"
        assert shown(pid) == "best-effort: prio 7\n"
        # the calling process only: not its process group (pytest's) nor its user's
        assert shown(sibling.pid) == "best-effort: prio 0\n"
        assert shown(os.getpid()) == ours
    finally:
        sibling.kill()
        sibling.wait()
        os.close(go_w)  # the child's read returns: it exits
        os.close(report_r)
        os.waitpid(pid, 0)
