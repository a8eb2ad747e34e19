"""I/O caps on the disk under the job's directory: what holds is read back from the kernel,
what cannot hold says why. The caps' effect on a real second disk is proven on the VM tier
(tests/systemd/test_io_disk.py)."""

from __future__ import annotations

import os
import shutil
import tempfile

MiB = 1 << 20


def test_io_caps_go_on_the_disk_of_the_jobs_directory_or_say_why_not(jobs):
    proc, usage = jobs.run_with_usage("--io-write-bandwidth", "10M", "--io-read-iops", "500",
                                      "--", "true")
    assert proc.returncode == 0, proc.stderr
    assert usage["limits"]["io_write_bandwidth"] == 10 * MiB
    assert usage["limits"]["io_read_iops"] == 500
    enforced = usage["enforced"]
    if not jobs.expect.has_unit:
        assert enforced["io_write_bandwidth"].startswith("not enforced: without cgroups")
        return
    if usage["cgroup_layout"] == "unified":  # io.max, read back
        assert enforced["io_write_bandwidth"] is True and enforced["io_read_iops"] is True
    else:  # blkio.throttle.write_bps_device, read back; systemd sets no v1 IOPS throttle
        assert enforced["io_write_bandwidth"] is True, enforced
        assert enforced["io_read_iops"] == "not enforced: systemd sets no blkio IOPS " \
                                           "throttle on cgroup v1", enforced


def test_a_directory_without_a_disk_cannot_be_capped_and_says_so(jobs):
    """A job directory on tmpfs: the job runs, and the record names the file system."""
    shm = tempfile.mkdtemp(prefix="csd-io-", dir="/dev/shm")
    try:
        os.chmod(shm, 0o777)
        env = dict(os.environ, _CONDOR_SCRATCH_DIR=shm)
        proc, usage = jobs.run_with_usage("--io-read-bandwidth", "1M", "--", "true", env=env)
        assert proc.returncode == 0, proc.stderr
        verdict = usage["enforced"]["io_read_bandwidth"]
        if jobs.expect.has_unit:
            assert verdict == ("not enforced: the job's directory is on tmpfs, which has no "
                               "block device"), verdict
        else:
            assert verdict.startswith("not enforced: without cgroups")
    finally:
        shutil.rmtree(shm, ignore_errors=True)
