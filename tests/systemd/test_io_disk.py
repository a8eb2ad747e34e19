"""I/O caps on a real disk: the VM tier's guests have an empty second virtio disk (/dev/vdb,
ext4, tests/vm/harness.py) mounted here as an execute directory. The ground truth is the job's
own clock around its O_DIRECT writes and reads (no page cache between it and the disk), and
the bytes it moved."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.jobs import PY

MiB = 1 << 20
MOUNT = "/mnt/csd-scratch-disk"
# Moves 40 MiB to or from a file with O_DIRECT, 1 MiB at a time (an mmap is page aligned, as
# O_DIRECT wants), or ("small") writes 40 single pages, each one I/O however the file system
# lays the file out (a 1 MiB write was one I/O in one run and two in another); prints the
# seconds it took.
DIRECT_IO = """
import mmap, os, sys, time
path, mode = sys.argv[1], sys.argv[2]
block = mmap.mmap(-1, 4096 if mode == "small" else 1 << 20)
start = time.monotonic()
if mode in ("write", "small"):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT)
    for _ in range(40):
        os.write(fd, block)
else:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    while os.readv(fd, [block]):
        pass
os.close(fd)
print(time.monotonic() - start)
"""


@pytest.fixture
def disk_dir(facts, tmp_path):
    facts.need_v2()
    if not os.path.exists("/dev/vdb"):
        pytest.fail("the VM tier's guests have a second disk, /dev/vdb (tests/vm/harness.py)")
    os.makedirs(MOUNT, exist_ok=True)
    if not os.path.ismount(MOUNT):
        subprocess.run(["mount", "/dev/vdb", MOUNT], check=True)
    job_dir = os.path.join(MOUNT, tmp_path.name)
    os.makedirs(job_dir)
    os.chmod(job_dir, 0o777)
    yield job_dir
    subprocess.run(["rm", "-rf", job_dir], check=True)


def direct_io(jobs, job_dir: str, mode: str, *caps: str) -> tuple[float, dict]:
    env = dict(os.environ, _CONDOR_SCRATCH_DIR=job_dir)
    proc, usage = jobs.run_with_usage(*caps, "--", PY, "-c", DIRECT_IO,
                                      os.path.join(job_dir, "data"), mode, env=env)
    assert proc.returncode == 0, proc.stderr
    return float(proc.stdout), usage


def test_a_bandwidth_cap_holds_on_the_disk_of_the_jobs_directory(jobs, disk_dir):
    """10 MiB/s: 40 MiB take 4 s each way (measured 4.01 s on the bookworm guest; half or
    twice the rate would take 8 s or 2 s); uncapped, the same writes take less than half of
    that (0.03 s); the bytes the record counts are the 40 MiB moved."""
    free, usage = direct_io(jobs, disk_dir, "write")
    assert "io_write_bandwidth" not in usage["limits"]
    capped, usage = direct_io(jobs, disk_dir, "write", "--io-write-bandwidth", "10M")
    assert usage["limits"]["io_write_bandwidth"] == 10 * MiB
    assert usage["enforced"]["io_write_bandwidth"] is True, usage["enforced"]  # io.max
    assert 3.5 <= capped <= 6 and free < capped / 2, (free, capped)
    assert 40 * MiB <= usage["io_write_bytes"] <= 44 * MiB, usage
    took, usage = direct_io(jobs, disk_dir, "read", "--io-read-bandwidth", "10M")
    assert 3.5 <= took <= 6, took
    assert usage["enforced"]["io_read_bandwidth"] is True, usage["enforced"]
    assert 40 * MiB <= usage["io_read_bytes"] <= 44 * MiB, usage


def test_an_iops_cap_holds_too(jobs, disk_dir):
    """20 writes a second: 40 one-page writes take about 2 s (the throttle lets the first
    few through at once); at half or twice the rate they would take about 4 s or 1 s."""
    took, usage = direct_io(jobs, disk_dir, "small", "--io-write-iops", "20")
    assert usage["enforced"]["io_write_iops"] is True, usage["enforced"]
    assert 1.5 <= took <= 3, took
