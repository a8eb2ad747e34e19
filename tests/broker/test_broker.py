"""The broker: who may do what, caps from the caller's cgroup, the caller's death, hostile
input, many callers at once, and that it is real varlink (systemd's varlinkctl speaks it)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.harness import broker as harness
from tests.jobs import EMULATED, PY, wait_files, wait_processes

SOCKET = harness.SOCKET


def units_left(jobs) -> str:  # noqa: ANN001
    return jobs.inside("systemctl", "list-units", "--all", "--plain", "--no-legend",
                       "condor-job-*").stdout.strip()


def broker_pid(jobs) -> int:  # noqa: ANN001
    return int(jobs.inside("systemctl", "show", "-P", "MainPID",
                           "condor-systemd.service").stdout.strip() or 0)


def test_the_job_runs_as_the_caller_in_its_own_unit(jobs):
    ready = jobs.work / "ready"
    proc = jobs.start("--name", "who", "--", "sh", "-c",
                      f"id -u > {ready}.tmp; mv {ready}.tmp {ready}; sleep 4261")
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    unit = "condor-job-u65534-who.service"  # a caller's ids cannot collide with another's
    assert jobs.inside("systemctl", "show", "-P", "User", unit).stdout.strip() == "65534"
    # in the slice of its caller's cgroup (broker/slices.py), in condor.slice
    slice_name = jobs.inside("systemctl", "show", "-P", "Slice", unit).stdout.strip()
    assert re.fullmatch(r"condor-u65534_c[0-9a-f]{16}\.slice", slice_name), slice_name
    assert jobs.inside("systemctl", "show", "-P", "Slice", slice_name).stdout.strip() == \
        "condor.slice"
    assert "the jobs of uid 65534 from /" in jobs.inside(
        "systemctl", "show", "-P", "Description", slice_name).stdout
    assert ready.read_text().strip() == "65534"
    os.kill(jobs.wrapper_pid(proc), signal.SIGTERM)
    assert proc.wait(timeout=30) == -signal.SIGTERM
    deadline = time.monotonic() + 15  # the slice goes with its last job
    while jobs.inside("systemctl", "is-active", slice_name).stdout.strip() == "active":
        assert time.monotonic() < deadline, f"{slice_name} outlived its last job"
        time.sleep(0.1)


@pytest.mark.parametrize(("options", "message"), [
    (["--uid", "root"], "--uid/--gid need root"),
    (["-p", "SupplementaryGroups=root"], "-p SupplementaryGroups is not allowed for "
                                         "unprivileged callers"),
    (["-p", "MemoryLow=1G"], "-p MemoryLow is not allowed"),
    (["--slice", "system.slice"], "--slice system.slice: the broker chooses the slice"),
    (["--slice", "condor-other.slice"], "--slice condor-other.slice: the broker chooses"),
    (["--scope"], "--scope is not available through the broker"),
])
def test_what_an_unprivileged_caller_may_not_ask_is_refused_in_one_line(jobs, options, message):
    proc = jobs.run(*options, "--", "true")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("condor-systemd: ") and message in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stdout == ""
    assert units_left(jobs) == ""


def test_limits_are_capped_by_the_callers_cgroup(jobs):
    """The wrapper runs in a scope limited to 100M (as HTCondor's slot cgroup would limit it)
    and asks for 1G: the job is OOM-killed near 100M, and the record says what was capped."""
    usage = jobs.work / "capped.json"
    allocate = "b = bytearray(400 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\n"
    proc = jobs.inside("systemd-run", "--quiet", "--scope", "-p", "MemoryMax=100M",
                       "-p", "MemorySwapMax=0", "--", *harness.client_command(), "run",
                       "--memory", "1G", "--usage-file", str(usage), "--", PY, "-c", allocate)
    assert proc.returncode == -signal.SIGKILL or proc.returncode == 128 + signal.SIGKILL, \
        (proc.returncode, proc.stderr)
    record = json.loads(usage.read_text())
    assert record["oom_killed"] is True
    assert record["limits"]["memory_max"] == 100 << 20  # what the job got
    assert "asked 1073741824, capped to 104857600 by the caller's cgroup" in \
        record["capped"]["memory_max"]
    assert record["memory_peak_bytes"] <= (100 << 20) + (1 << 20)


def test_the_callers_death_kills_the_job_at_once(jobs):
    """HTCondor's hard kill SIGKILLs the wrapper: its connection closes, and the broker kills
    every process of the job and lets the unit go, within 2 s."""
    script = "setsid sleep 4263 & sh -c 'sleep 4263 &' & exec sleep 4263"
    proc = jobs.start("--name", "orphan", "--", "sh", "-c", script)
    wait_processes(jobs, "sleep 4263", 3)
    killed = time.monotonic()
    os.kill(jobs.wrapper_pid(proc), signal.SIGKILL)
    proc.wait(timeout=30)
    while jobs.processes("^sleep 4263") or units_left(jobs):
        assert time.monotonic() - killed < 2.0, (jobs.processes("^sleep 4263"),
                                                  units_left(jobs))
        time.sleep(0.05)


def attack(jobs, name: str, *args: str, timeout: float = 120) -> dict:  # noqa: ANN001
    """Run one of tests/broker/attacks.py as nobody; its JSON verdict."""
    shutil.copy(Path(__file__).with_name("attacks.py"), harness.PKG / "csd_attacks.py")
    os.chmod(harness.PKG / "csd_attacks.py", 0o644)
    proc = jobs.inside(*harness.client_python(), str(harness.PKG / "csd_attacks.py"),
                       name, *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


CUT_OFF = {"closed": True}


def invalid(parameter: str) -> dict:
    return {"reply": {"error": "org.varlink.service.InvalidParameter",
                      "parameters": {"parameter": parameter}}}


@pytest.mark.parametrize(("name", "expected"), [
    ("garbage", CUT_OFF),
    ("no-nul", CUT_OFF),
    ("not-an-object", CUT_OFF),
    ("method-not-a-string", CUT_OFF),
    ("seven-fds", CUT_OFF),
    ("unknown-method", {"reply": {"error": "org.varlink.service.MethodNotFound",
                                  "parameters": {"method": "io.condorsystemd.Job.Explode"}}}),
    ("unknown-interface", {"reply": {"error": "org.varlink.service.InterfaceNotFound",
                                     "parameters": {"interface": "com.example"}}}),
    ("wrong-types", invalid("arguments")),
    ("directory-as-stdout", invalid("stdout")),
    ("o-path-stdin", invalid("stdin")),
    ("read-only-stdout", invalid("stdout")),
    ("relative-executable", invalid("executable")),
    ("tmp-not-a-directory", invalid("tmp")),
    ("var-tmp-index-out-of-range", invalid("var_tmp")),
    ("scratch-not-a-directory", invalid("scratch")),
    ("scratch-index-out-of-range", invalid("scratch")),
    # an fd of root's /etc as the job's own directory: never bound into the job
    ("isolate-with-roots-directory", {"reply": {
        "error": "io.condorsystemd.Job.UsageError", "parameters": {
            "message": "--isolate: the job's directory / is not a directory of the caller's"}}}),
    ("htcondor-malformed", {"reply": {"error": "io.condorsystemd.Job.UsageError", "parameters": {
        "message": "htcondor: cpus must be an integer in 0-65535"}}}),
    ("help", {"reply": {"error": "io.condorsystemd.Job.UsageError",
                        "parameters": {"message": "--help is not a job"}}}),
    ("uid-root", {"reply": {"error": "io.condorsystemd.Job.UsageError",
                            "parameters": {"message": "--uid/--gid need root"}}}),
])
def test_hostile_input_gets_a_clear_answer_or_the_door(jobs, name, expected):
    before = broker_pid(jobs) or None
    assert attack(jobs, name) == expected
    assert units_left(jobs) == ""
    after = broker_pid(jobs)
    assert after and (before is None or after == before), "the broker died"


def test_a_caller_that_leaves_mid_launch_leaves_nothing(jobs):
    attack(jobs, "disconnect-mid-launch")
    deadline = time.monotonic() + 5
    while jobs.processes("^sleep 4262") or units_left(jobs):
        assert time.monotonic() < deadline, units_left(jobs)
        time.sleep(0.05)


def test_a_caller_that_never_reads_is_cut_off(jobs):
    assert attack(jobs, "never-reads")["cut_off"] is True
    assert broker_pid(jobs)


def test_idle_connections_do_not_lock_others_out(jobs):
    """300 connections that never call (under the policy's 320 per user): another call is
    still answered at once, and the idle ones are closed after the policy's request timeout
    (10 s). One user holding more than that costs the others nothing: tests/security."""
    result = attack(jobs, "idle", "300")
    assert result["answered"] and result["took"] < 1.0, result
    assert result["idle_closed"] == 300


def test_200_concurrent_jobs_each_with_its_exit_code(jobs):
    """200 callers at once (60 on the emulated tier, where 200 interpreters starting at once
    took 180 s): each gets its own job's exit code, and nothing is left."""
    count = 60 if EMULATED else 200
    def one(i: int) -> tuple[int, str]:
        proc = jobs.run("--name", f"many-{i}", "--", "sh", "-c", f"sleep 1; exit {i % 256}",
                        timeout=300)
        return proc.returncode, proc.stderr
    with ThreadPoolExecutor(max_workers=count) as pool:
        results = list(pool.map(one, range(count)))
    wrong = [(i, code, err) for i, (code, err) in enumerate(results) if code != i % 256]
    assert not wrong, wrong[:5]
    assert units_left(jobs) == ""


def test_list_shows_the_callers_own_running_jobs(jobs):
    proc = jobs.start("--name", "listed", "--", "sleep", "4264")
    wait_processes(jobs, "sleep 4264", 1)
    code = ("import json, socket, sys\nsys.path.insert(0, sys.argv[1])\n"
            "from condor_systemd import varlink\n"
            "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[2])\n"
            "varlink.send(s, {'method': 'io.condorsystemd.Job.List'})\n"
            "r = varlink.Reader()\nwhile (m := r.next()) is None: varlink.recv_into(s, r)\n"
            "print(json.dumps(m[0]))\n")
    as_nobody = json.loads(jobs.inside(*harness.client_python(), "-c", code,
                                       str(harness.PKG), SOCKET).stdout)
    jobs_seen = as_nobody["parameters"]["jobs"]
    assert [j["unit"] for j in jobs_seen] == ["condor-job-u65534-listed.service"]
    assert jobs_seen[0]["uid"] == 65534 and jobs_seen[0]["job_id"] == "u65534-listed"
    os.kill(jobs.wrapper_pid(proc), signal.SIGTERM)
    proc.wait(timeout=30)


def test_systemds_own_varlinkctl_speaks_to_the_broker(jobs, facts):
    """Proof that it is real varlink: systemd 257's varlinkctl gets the service's info, parses
    the interface description with systemd's own IDL parser, and calls a read-only method."""
    facts.need_systemd(257)
    address = f"unix:{SOCKET}"
    info = jobs.inside("varlinkctl", "info", address)
    assert info.returncode == 0, info.stderr
    assert "condor-systemd" in info.stdout and "io.condorsystemd.Job" in info.stdout
    intro = jobs.inside("varlinkctl", "introspect", address, "io.condorsystemd.Job")
    assert intro.returncode == 0 and "method Run(" in intro.stdout, intro.stderr
    assert "Failed to parse" not in intro.stderr and "warning" not in intro.stderr.lower()
    listed = jobs.inside("varlinkctl", "call", address, "io.condorsystemd.Job.List", "{}")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == {"jobs": []}


# Counts to 30 in 3 s, writing each step: a held job stops counting.
COUNTER = "i=0; while [ $i -lt 30 ]; do i=$((i+1)); echo $i > {out}; sleep 0.1; done"


def counting_job(jobs, out: Path, command_prefix: list[str] | None = None):  # noqa: ANN001, ANN201
    argv = [*(command_prefix or []), *jobs.wrapper(), "run", "--", "sh", "-c",
            COUNTER.format(out=out)]
    proc = subprocess.Popen(jobs.command(argv, str(jobs.work)), cwd=jobs.work)
    jobs.started.append(proc)
    deadline = time.monotonic() + 30
    while not out.exists():
        assert time.monotonic() < deadline, "the job did not start counting"
        time.sleep(0.05)
    return proc


def still(out: Path, seconds: float) -> bool:
    before = out.read_text()
    time.sleep(seconds)
    return out.read_text() == before


def test_a_stopped_caller_stops_its_job(jobs):
    """HTCondor's procd suspends the wrapper with SIGSTOP (cgroup v1): the broker sees the
    caller stopped within its look interval (1 s) and holds the job; SIGCONT resumes both."""
    out = jobs.work / "count"
    proc = counting_job(jobs, out)
    wrapper = jobs.wrapper_pid(proc)
    os.kill(wrapper, signal.SIGSTOP)
    try:
        time.sleep(1.5)  # the look interval, and the hold taking effect
        assert still(out, 1.0), "the job ran on while its caller was stopped"
    finally:
        os.kill(wrapper, signal.SIGCONT)
        if proc.pid != wrapper:  # the sandbox's nsenter stops itself when its child stops
            os.kill(proc.pid, signal.SIGCONT)
    assert proc.wait(timeout=60) == 0
    assert out.read_text().strip() == "30"


def frozen_caller(jobs, out: Path, name: str):  # noqa: ANN001, ANN201 - (Popen, freeze file)
    """A counting job whose caller runs in a scope of its own, that scope's cgroup frozen as
    condor_suspend freezes a slot's (v2), and the job held (stopped) by the broker within 1 s."""
    scope = f"csd-caller-{os.getpid()}-{name}.scope"
    proc = counting_job(jobs, out, ["systemd-run", "--quiet", "--scope", "--unit", scope, "--"])
    cgroup = jobs.inside("systemctl", "show", "-P", "ControlGroup", scope).stdout.strip()
    freeze = f"/sys/fs/cgroup{cgroup}/cgroup.freeze"
    unit = [u for u in units_left(jobs).split() if u.startswith("condor-job-")][0]
    jobs.inside("sh", "-c", f"echo 1 > {freeze}")
    # within 1 s of the freeze (2 s on the emulated tier, where each look costs 0.3 s)
    deadline = time.monotonic() + (2.0 if EMULATED else 1.0)
    while not job_stopped(jobs, unit):
        if time.monotonic() > deadline:
            jobs.inside("sh", "-c", f"echo 0 > {freeze}")
            raise AssertionError("the job was not held within 1 s")
        time.sleep(0.05)
    assert jobs.inside("systemctl", "show", "-P", "FreezerState", unit).stdout.strip() in (
        "running", ""), "the job's unit is in systemd's freezer"
    return proc, freeze


STATES = """cg=$(systemctl show -P ControlGroup "$1")
for pid in $(cat /sys/fs/cgroup$cg/cgroup.procs); do cut -d')' -f2 /proc/$pid/stat; done"""


def job_stopped(jobs, unit: str) -> bool:  # noqa: ANN001
    """Nothing of the unit runs: every process stopped (SIGSTOP: state T), or a zombie (a
    `sleep 0.1` that ended just before its parent was stopped, unreaped since)."""
    states = [line.split()[0] for line in
              jobs.inside("sh", "-c", STATES, "-", unit).stdout.splitlines() if line.split()]
    return "T" in states and all(state in ("T", "Z") for state in states)


def test_freezing_the_callers_cgroup_freezes_the_job(jobs, facts):
    """condor_suspend on cgroup v2 writes 1 to the slot cgroup's cgroup.freeze: the wrapper
    freezes, and the broker (inotify on the caller's cgroup.events) stops every process of the
    job within 1 s; thawing resumes them, and the job completes."""
    facts.need_v2()
    out = jobs.work / "count"
    proc, freeze = frozen_caller(jobs, out, "freeze")
    assert still(out, 1.0), "the job ran on while its caller was frozen"
    jobs.inside("sh", "-c", f"echo 0 > {freeze}")
    assert proc.wait(timeout=60) == 0
    assert out.read_text().strip() == "30"


def test_a_held_job_is_killed_and_systemd_answers(jobs, facts):
    """Stopping the broker kills a job that its frozen caller holds. Were it held in systemd's
    freezer, systemd would start the ExecStopPost holder in the frozen cgroup, where it freezes
    before its exec, and systemd 257 would wait for that exec forever (PID 1 hangs)."""
    facts.need_v2()
    proc, freeze = frozen_caller(jobs, jobs.work / "count", "kill")
    try:
        stop = subprocess.run(jobs.command(["timeout", "30", "systemctl", "stop",
                                            "condor-systemd.service"], str(jobs.work)),
                              capture_output=True, text=True)
        assert stop.returncode == 0, stop.stderr
        deadline = time.monotonic() + 10
        while units_left(jobs):
            assert time.monotonic() < deadline, f"the job outlived the broker: {units_left(jobs)}"
            time.sleep(0.1)
        answer = subprocess.run(jobs.command(["timeout", "10", "systemctl", "show", "-P",
                                              "Version"], str(jobs.work)),
                                capture_output=True, text=True)
        assert answer.returncode == 0 and answer.stdout.strip(), "systemd stopped answering"
    finally:
        jobs.inside("sh", "-c", f"echo 0 > {freeze}")
    proc.wait(timeout=30)


def test_a_node_whose_broker_is_down_says_so_and_its_jobs_are_not_run_without_it(jobs):
    """HTCondor's startd runs `probe --classad` (STARTD_CRON) and matches jobs only while it
    says ready; a job asked for while the broker is down is a launch failure (125, the error
    file: HTCondor requeues it), never a run under the psutil fallback."""
    probe = [*harness.client_command(), "probe", "--classad"]
    error_file = jobs.work / "wrapper-error"
    assert jobs.inside(*probe).stdout.splitlines() == [
        "CondorSystemdReady = true", 'CondorSystemdReason = "the broker answers"', "-"]
    jobs.inside("systemctl", "stop", "condor-systemd.socket", "condor-systemd.service")
    try:
        down = jobs.inside(*probe).stdout.splitlines()
        assert down[0] == "CondorSystemdReady = false", down
        assert down[1].startswith(f'CondorSystemdReason = "no broker socket at {SOCKET}'), down
        # a socket file nobody listens on (a broker that died without systemd's socket)
        jobs.inside(PY, "-c", "import os, socket; os.makedirs(os.path.dirname("
                              f"{SOCKET!r}), exist_ok=True); "
                              f"socket.socket(socket.AF_UNIX).bind({SOCKET!r})")
        dead = jobs.inside(*probe).stdout.splitlines()
        jobs.inside("rm", "-f", SOCKET)
        assert dead[0] == "CondorSystemdReady = false", dead
        assert dead[1].startswith(f'CondorSystemdReason = "the broker at {SOCKET} does not '
                                  'answer'), dead
        wrapper = subprocess.run(jobs.command(
            ["env", f"_CONDOR_WRAPPER_ERROR_FILE={error_file}", *harness.client_command(), "run",
             "--backend", "systemd", "--", "sh", "-c", "echo ran"], str(jobs.work)),
            cwd=jobs.work, capture_output=True, text=True)
        assert wrapper.returncode == 125 and wrapper.stdout == "", wrapper
        assert error_file.read_text() == wrapper.stderr
    finally:
        jobs.inside("systemctl", "start", "condor-systemd.socket")
    assert jobs.inside(*probe).stdout.splitlines()[0] == "CondorSystemdReady = true"
    assert jobs.run("--backend", "systemd", "--", "sh", "-c", "echo ran").stdout == "ran\n"


def test_under_htcondor_the_unit_gets_the_slots_limits_and_the_jobs_ids(jobs, facts):
    """The caller's ads (a 3-CPU, 300 MB slot; job 12.3 of alice): with no options the unit
    gets what HTCondor gives a slot's cgroup, read back from the kernel's cgroup files, a name
    unique on the node, and the job's ids on every journal line it logs."""
    (jobs.work / "job.ad").write_text('ClusterId = 12\nProcId = 3\nOwner = "alice"\n'
                                      'GlobalJobId = "ap#12.3#1796065539"\n')
    (jobs.work / "machine.ad").write_text('Name = "slot1_1@node"\nCpus = 3\nMemory = 300\n')
    env = dict(os.environ, _CONDOR_JOB_AD=str(jobs.work / "job.ad"), _CONDOR_SLOT="slot1_1",
               _CONDOR_MACHINE_AD=str(jobs.work / "machine.ad"))
    ready = jobs.work / "ready"
    # (systemd-cat runs the logger: journald reads the sender's unit from /proc when the
    # stream connects, and a sender already gone by then gets no unit and no fields)
    script = (f"touch {ready}; exec systemd-cat -t csd-ads sh -c "
              "'echo csd-ads-line; exec sleep 4263'")
    proc = jobs.start("--", "sh", "-c", script, env=env)
    unit = "condor-job-u65534-12.3-slot1_1.service"
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert time.monotonic() < deadline, proc.stderr
        time.sleep(0.05)

    def show(name: str) -> str:
        return jobs.inside("systemctl", "show", "-P", name, unit).stdout.strip()

    def kernel(controller: str, name: str) -> str:
        root = "/sys/fs/cgroup" if facts.unified else f"/sys/fs/cgroup/{controller}"
        return jobs.inside("cat", f"{root}{show('ControlGroup')}/{name}").stdout.strip()

    assert show("Description") == \
        f"HTCondor job 12.3 of alice on slot1_1: {f'sh -c {script}'[:117]}..."
    assert show("LogExtraFields").split() == [
        "CONDOR_CLUSTER_ID=12", "CONDOR_PROC_ID=3", "CONDOR_GLOBAL_JOB_ID=ap#12.3#1796065539",
        "CONDOR_OWNER=alice", "CONDOR_SLOT=slot1_1"]
    if facts.unified:
        assert kernel("memory", "memory.max") == str(300 << 20)
        assert kernel("memory", "memory.swap.max") == "0"
        assert kernel("cpu", "cpu.weight") == "300"
    else:  # the host's v1: cpu is mounted apart from cpuacct, where systemd cannot use it
        assert kernel("memory", "memory.limit_in_bytes") == str(300 << 20)
        assert show("CPUWeight") == "300"
    deadline = time.monotonic() + 10
    while "csd-ads-line" not in jobs.inside("journalctl", "--no-pager", "-o", "cat",
                                            "CONDOR_GLOBAL_JOB_ID=ap#12.3#1796065539",
                                            "CONDOR_SLOT=slot1_1").stdout:
        assert time.monotonic() < deadline, "the job's journal line lacks its HTCondor ids"
        time.sleep(0.2)
    os.kill(jobs.wrapper_pid(proc), signal.SIGTERM)
    assert proc.wait(timeout=30) == -signal.SIGTERM


def test_under_htcondor_explicit_options_win_within_the_callers_cgroup(jobs):
    (jobs.work / "machine.ad").write_text("Cpus = 1\nMemory = 300\n")
    env = dict(os.environ, _CONDOR_MACHINE_AD=str(jobs.work / "machine.ad"))
    usage = jobs.work / "usage.json"
    proc = jobs.run("--memory", "200M", "--swap", "10M", "-p", "CPUWeight=50", "--usage-file",
                    str(usage), "--", "true", env=env)
    assert proc.returncode == 0, proc.stderr
    limits = json.loads(usage.read_text())["limits"]
    assert limits["memory_max"] == 200 << 20 and limits["swap_max"] == 10 << 20, limits


def scratch_job(jobs, tmp: str = "dir", var_tmp_owner: int = 65534):  # noqa: ANN001, ANN201
    """An HTCondor-like scratch directory of the caller's, with tmp and var/tmp."""
    scratch = jobs.work / "dir_4242"
    (scratch / "var").mkdir(parents=True)
    if tmp == "dir":
        (scratch / "tmp").mkdir()
    else:
        (scratch / "tmp").symlink_to(tmp)
    (scratch / "var" / "tmp").mkdir()
    for path in (scratch, scratch / "var", scratch / "tmp"):
        os.lchown(path, 65534, 65534)
    os.chown(scratch / "var" / "tmp", var_tmp_owner, var_tmp_owner)
    return scratch, dict(os.environ, _CONDOR_SCRATCH_DIR=str(scratch))


def test_under_htcondor_the_jobs_tmp_is_in_its_scratch_directory(jobs):
    """As MOUNT_UNDER_SCRATCH: the job's /tmp and /var/tmp are the scratch directory's (the
    kernel's mount table says so; the files stay there, counted and removed with it)."""
    scratch, env = scratch_job(jobs)
    proc, usage = jobs.run_with_usage("--", "sh", "-c",
                                      "echo a > /tmp/a; echo b > /var/tmp/b; "
                                      "grep -E ' /(var/)?tmp ' /proc/self/mountinfo", env=env)
    assert proc.returncode == 0, proc.stderr
    top = {line.split()[4]: line.split()[3] for line in proc.stdout.splitlines()}  # last wins
    assert top == {"/tmp": f"{scratch}/tmp", "/var/tmp": f"{scratch}/var/tmp"}, proc.stdout
    assert (scratch / "tmp" / "a").read_text() == "a\n"
    assert (scratch / "var" / "tmp" / "b").read_text() == "b\n"
    assert usage["enforced"]["private_tmp"] is True and "private_tmp" not in usage["capped"]


def test_the_broker_fds_a_unit_binds_from_name_its_directories_while_it_lives(jobs):
    """BindPaths= names the scratch directory's tmp and var/tmp by the broker's fds: systemd
    sets up every process of the unit from them, the ExecStopPost holder after the job too.
    While the job runs they must still name those very directories: a number closed early
    could name another caller's directory by the time the holder is set up."""
    scratch, env = scratch_job(jobs)
    ready, done = scratch / "ready", scratch / "done"
    proc = jobs.start("--", "sh", "-c", f"touch {ready}; while [ ! -e {done} ]; do sleep 0.1; done",
                      env=env)
    wait_files(ready)
    binds = jobs.inside("systemctl", "show", "-P", "BindPaths", units_left(jobs).split()[0])
    named = {}
    for entry in binds.stdout.split():
        source, target = entry.lstrip("-").split(":")[:2]
        assert source.startswith("/proc/"), binds.stdout
        named[target] = jobs.inside("readlink", source).stdout.strip()
    done.write_text("")
    assert proc.wait(timeout=60) == 0
    assert named == {"/tmp": f"{scratch}/tmp", "/var/tmp": f"{scratch}/var/tmp"}, binds.stdout


@pytest.mark.parametrize(("tmp", "var_tmp_owner", "why"), [
    ("/", 65534, "the scratch directory's tmp is not a directory of the caller's"),
    ("dir", 0, "the scratch directory's var/tmp is not a directory of the caller's"),
])
def test_a_scratch_tmp_that_is_not_the_callers_is_not_bound(jobs, tmp, var_tmp_owner, why):
    """A symlink planted as tmp (to root's /), or a directory of somebody else's: the job gets
    PrivateTmp, and the record says why."""
    scratch, env = scratch_job(jobs, tmp, var_tmp_owner)
    proc, usage = jobs.run_with_usage("--", "sh", "-c", "echo a > /tmp/a", env=env)
    assert proc.returncode == 0, proc.stderr
    assert usage["capped"]["private_tmp"] == f"PrivateTmp instead of the scratch directory: {why}"
    assert not (scratch / "var" / "tmp" / "a").exists()


def test_isolate_binds_only_the_callers_own_directory(jobs):
    """--isolate binds the job's own directory into its emptied execute root, from the fd the
    caller opened: a scratch directory that is somebody else's (a symlink to root's /etc) is
    refused before anything starts, never bound from its path."""
    link = jobs.work / "scratch"
    link.symlink_to("/etc")
    proc = jobs.run("--isolate", "--", "true", env=dict(os.environ, _CONDOR_SCRATCH_DIR=str(link)))
    assert proc.returncode == 2, proc
    assert proc.stderr == (f"condor-systemd: --isolate: the job's directory {link} is not a "
                           "directory of the caller's\n")
