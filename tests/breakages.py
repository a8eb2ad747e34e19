"""Break the code by hand, the way a reviewer would, and check that a test fails each time.

    .venv/bin/python -m tests.breakages [--only SUBSTRING] [--list]

Each breakage is one textual change to the product (a figure doubled or halved, a field fixed,
a timing claim turned into "after the stop timeout", a kill left out). For each, the checkout is
copied (tests and all, as they are in the work tree) to a scratch directory under /tmp, the
change is applied there, and the tests that guard it run against the copy (PYTHONPATH points
at it, so the wrapper the tests start imports the broken code too). A breakage SURVIVES when
those tests still pass: that is a hole in the suite. First the same tests run on an unbroken
copy, which must pass, or the verdicts would mean nothing. Exit status: 0 when every breakage
was caught, 1 when any survived or could not be applied (the code it targets moved: update
the list). Needs root and the sandbox, like the real-systemd tests; takes a few minutes.

Mutation testing (mutmut, see README) covers the pure modules mechanically; this list covers
what mutmut cannot reach: every field of the usage record and every timing claim, end to end
on both backends.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
REC = "tests/behaviour/test_record.py::"
ACC = "tests/behaviour/test_accounting.py::"
KILL = "tests/behaviour/test_kill.py::"
BRK = "tests/broker/test_broker.py::"
RST = "tests/broker/test_restart.py::"
SEC = "tests/security/test_attacks.py::"


class Breakage(NamedTuple):
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


SD, PS = "[systemd]", "[psutil]"
SERVICE, RECORD = "condor_systemd/backends/service.py", "condor_systemd/backends/record.py"
FALLBACK = "condor_systemd/backends/fallback.py"
CGROUPFS, RUNNER = "condor_systemd/backends/cgroupfs.py", "condor_systemd/runner.py"
POLICY = "condor_systemd/broker/policy.py"

BREAKAGES = (
    # -- the review's four --------------------------------------------------------------------
    Breakage("wall_seconds x10, systemd", SERVICE,
             "wall = (exited - started) / 1e6", "wall = (exited - started) / 1e5",
             (REC + "test_wall_seconds_between_the_jobs_own_clock_and_the_tests" + SD,)),
    Breakage("wall_seconds x10, fallback", FALLBACK,
             "wall_seconds=round(self.ended - self.started, 6)",
             "wall_seconds=round(10 * (self.ended - self.started), 6)",
             (REC + "test_wall_seconds_between_the_jobs_own_clock_and_the_tests" + PS,)),
    Breakage("tasks_peak fixed at 1, systemd", RECORD,
             "tasks_peak=acct.tasks_peak", "tasks_peak=1",
             (REC + "test_tasks_peak_is_the_number_of_processes_held_at_once" + SD,)),
    Breakage("tasks_peak fixed at 1, fallback", FALLBACK,
             "tasks_peak=max(self.family.tasks_peak, 1)", "tasks_peak=1",
             (REC + "test_tasks_peak_is_the_number_of_processes_held_at_once" + PS,)),
    Breakage("escaped processes' CPU counted three times, fallback",
             "condor_systemd/backends/family.py",
             "return user / TICK, system / TICK", "return 3 * user / TICK, 3 * system / TICK",
             ("tests/fallback/test_fallback.py::"
              "test_a_process_outside_the_tree_is_found_by_its_token_and_killed",)),
    Breakage("leftovers not SIGKILLed when the main process ends, systemd", SERVICE,
             'self.log.info("main process ended: killing the processes it left behind")\n'
             "            self.kill_all_but_holder()",
             'self.log.info("main process ended: killing the processes it left behind")',
             (KILL + "test_escaped_processes_die_at_once_when_the_main_process_exits" + SD,)),
    # -- the same kind, for every record field ----------------------------------------------
    Breakage("wall_seconds x2, systemd", SERVICE,
             "wall = (exited - started) / 1e6", "wall = (exited - started) / 5e5",
             (REC + "test_wall_seconds_between_the_jobs_own_clock_and_the_tests" + SD,)),
    Breakage("wall_seconds halved, fallback", FALLBACK,
             "wall_seconds=round(self.ended - self.started, 6)",
             "wall_seconds=round((self.ended - self.started) / 2, 6)",
             (REC + "test_wall_seconds_between_the_jobs_own_clock_and_the_tests" + PS,)),
    Breakage("CPU user x2, systemd (cpu.stat)", CGROUPFS,
             'user, system = stat["user_usec"] / 1e6, stat["system_usec"] / 1e6',
             'user, system = stat["user_usec"] / 5e5, stat["system_usec"] / 1e6',
             (ACC + "test_cpu_user_and_system_of_short_lived_children" + SD,)),
    Breakage("CPU user and system swapped, systemd", CGROUPFS,
             'user, system = stat["user_usec"] / 1e6, stat["system_usec"] / 1e6',
             'system, user = stat["user_usec"] / 1e6, stat["system_usec"] / 1e6',
             (ACC + "test_cpu_user_and_system_of_short_lived_children" + SD,)),
    Breakage("CPU system halved, fallback", FALLBACK,
             "system = after.ru_stime - before.ru_stime + escaped_system",
             "system = (after.ru_stime - before.ru_stime) / 2 + escaped_system",
             (ACC + "test_cpu_user_and_system_of_short_lived_children" + PS,)),
    Breakage("an escaped daemon's CPU counted twice, fallback", FALLBACK,
             "user = after.ru_utime - before.ru_utime + escaped_user",
             "user = after.ru_utime - before.ru_utime + escaped_user + 0.5",
             (ACC + "test_cpu_of_an_escaped_daemon" + PS,)),
    Breakage("peak memory x2, systemd on v1 (memory.max_usage_in_bytes)", CGROUPFS,
             'peak = _int(_path(mem, "memory.max_usage_in_bytes"))',
             'peak = 2 * (_int(_path(mem, "memory.max_usage_in_bytes")) or 0)',
             (ACC + "test_peak_memory_of_a_known_allocation" + SD,)),
    Breakage("peak memory halved, fallback", FALLBACK,
             "peak = max(self.family.rss_peak, largest) or None",
             "peak = max(self.family.rss_peak, largest) // 2 or None",
             (ACC + "test_peak_memory_of_a_known_allocation" + PS,)),
    Breakage("burst: the fallback claims the sum it cannot see", FALLBACK,
             "peak = max(self.family.rss_peak, largest) or None",
             "peak = 2 * max(self.family.rss_peak, largest) or None",
             (ACC + "test_peak_memory_of_a_burst_between_samples" + PS,)),
    Breakage("IO bytes x2, fallback", FALLBACK,
             "io = {key: (io_after[key] - self.io_before[key]",
             "io = {key: (2 * (io_after[key] - self.io_before[key])",
             (REC + "test_io_bytes_read_from_disk_and_written" + PS,)),
    Breakage("IO read bytes not counted, fallback", FALLBACK,
             'memory_peak_bytes=peak, io_read_bytes=io["read_bytes"],',
             'memory_peak_bytes=peak, io_read_bytes=0,',
             (REC + "test_io_bytes_read_from_disk_and_written" + PS,)),
    Breakage("exit code off by one in the record, systemd", RECORD,
             "exit_code = status if code == CLD_EXITED else None",
             "exit_code = status + 1 if code == CLD_EXITED else None",
             (REC + "test_exit_code_and_signal_fields" + SD,)),
    Breakage("signal recorded as an exit code, fallback", FALLBACK,
             "exit_code=None if signum else exit_code, signal=signum,",
             "exit_code=exit_code, signal=signum,",
             (REC + "test_exit_code_and_signal_fields" + PS,)),
    Breakage("every job reported OOM-killed, systemd", RECORD,
             "oom = None if acct.oom_kills is None else acct.oom_kills > 0",
             "oom = None if acct.oom_kills is None else acct.oom_kills >= 0",
             (REC + "test_exit_code_and_signal_fields" + SD,)),
    # -- timing claims --------------------------------------------------------------------------
    Breakage("stop grace doubled", RUNNER,
             "deadline = time.monotonic() + spec.stop_timeout",
             "deadline = time.monotonic() + 2 * spec.stop_timeout",
             (KILL + "test_sigterm_reaches_every_process_and_escapees_die" + SD,
              KILL + "test_sigterm_reaches_every_process_and_escapees_die" + PS)),
    Breakage("stop grace not given", RUNNER,
             "deadline = time.monotonic() + spec.stop_timeout",
             "deadline = time.monotonic()",
             (KILL + "test_sigterm_reaches_every_process_and_escapees_die" + SD,
              KILL + "test_sigterm_reaches_every_process_and_escapees_die" + PS)),
    # -- the broker ----------------------------------------------------------------------------
    Breakage("the caller's death does not stop its job", "condor_systemd/broker/session.py",
             "            self.job.kill_unit(signal.SIGKILL)\n            self.server.when_ended",
             "            self.server.when_ended",
             (BRK + "test_the_callers_death_kills_the_job_at_once",)),
    Breakage("any -p property for anybody", "condor_systemd/broker/policy.py",
             "            if name not in self.allowed:", "            if False:",
             (BRK + "test_what_an_unprivileged_caller_may_not_ask_is_refused_in_one_line",)),
    Breakage("the caller's cgroup does not cap the job's memory",
             "condor_systemd/broker/policy.py",
             '            ceilings["memory_max"].append((caps.memory_max, by_cgroup))\n', "",
             (BRK + "test_limits_are_capped_by_the_callers_cgroup",)),
    Breakage("stdio fds not checked", "condor_systemd/broker/interface.py",
             "        if not any(kinds) or flags & O_PATH:", "        if False:",
             (BRK + "test_hostile_input_gets_a_clear_answer_or_the_door",)),
    Breakage("a stopped caller's job runs on", "condor_systemd/broker/server.py",
             "        session.caller_suspended(stopped=suspend.stopped(session.peer.pid))\n", "",
             (BRK + "test_a_stopped_caller_stops_its_job",)),
    Breakage("a restart of the broker kills its jobs", "condor_systemd/broker/server.py",
             '        return "restart" in job_type', "        return False",
             (RST + "test_systemctl_restart_mid_job_keeps_the_job_and_its_record",)),
    Breakage("the next broker does not take the jobs back", "condor_systemd/broker/__init__.py",
             "    server.take_back(entries)\n", "",
             (RST + "test_a_job_that_ends_while_no_broker_runs_keeps_its_exit_status_and_"
                    "accounting",)),
    Breakage("a job whose caller died during a restart runs on", "condor_systemd/broker/server.py",
             "                other.close()  #", "                continue  #",
             (RST + "test_a_caller_that_dies_while_no_broker_runs_has_its_job_killed_by_the_"
                    "next",)),
    Breakage("the wrapper error file hidden from HTCondor's starter", "condor_systemd/exits.py",
             "        _let_the_starter_see(os.path.dirname(path))\n", "",
             ("tests/unit/test_cli.py::test_the_error_file_is_visible_through_a_private_scratch_"
              "directory",)),
    Breakage("the startd probe says ready when the broker is down",
             "condor_systemd/readiness.py",
             '            return f"the broker at {path} does not answer: '
             '{text or type(exc).__name__}"',
             "            return None",
             (BRK + "test_a_node_whose_broker_is_down_says_so_and_its_jobs_are_not_run_"
                    "without_it",)),
    Breakage("the startd probe says ready when there is no broker socket",
             "condor_systemd/readiness.py",
             '        return f"no broker socket at {path} (systemctl enable --now '
             'condor-systemd.socket)"',
             "        return None",
             (BRK + "test_a_node_whose_broker_is_down_says_so_and_its_jobs_are_not_run_"
                    "without_it",)),
    Breakage("forwarded signals not delivered", RUNNER,
             "                        job.send_signal(signum)\n",
             "                        pass\n",
             (KILL + "test_usr1_is_forwarded_to_every_process_within_a_second" + SD,
              KILL + "test_usr1_is_forwarded_to_every_process_within_a_second" + PS)),
    # -- isolation (issue 12) -----------------------------------------------------------------
    Breakage("no CPUAffinity where systemd sets no cpuset", SERVICE,
             '        if self.spec.limits.allowed_cpus is not None and "CPUAffinity" not in asked:',
             "        if False:",
             ("tests/behaviour/test_limits.py::test_limits_are_enforced_as_the_record_says" + SD,)),
    Breakage("the wrapper's affinity not the job's CPU set", "condor_systemd/backends/systemd.py",
             "        spec = spec.with_inherited_cpus()\n", "",
             ("tests/behaviour/test_limits.py::test_the_wrappers_cpu_affinity_is_the_jobs_cpu_"
              "set[broker]",)),
    Breakage("an affinity read back that was never set", "condor_systemd/backends/unitjob.py",
             "                 if format_cpu_list(cpus) != asked}", "                 if False}",
             ("tests/unit/test_affinity.py::test_a_process_on_other_cpus_is_not_in_force",)),
    Breakage("no device filter for GPUs", "condor_systemd/backends/unitjob.py",
             "        return props + self.device_props + self.io_props\n",
             "        return props + self.io_props\n",
             ("tests/behaviour/test_devices.py::test_only_the_assigned_gpu_can_be_opened" + SD,)),
    Breakage("every GPU of the node allowed", "condor_systemd/backends/unitjob.py",
             "devices.allow_list(nodes)", "devices.allow_list(present)",
             ("tests/behaviour/test_devices.py::test_only_the_assigned_gpu_can_be_opened"
              "[broker]",)),
    Breakage("NVIDIA's driver left open by name", "condor_systemd/devices.py",
             'if kind == "char" and (major == NVIDIA_MAJOR or name.startswith("nvidia")):',
             "if False:",
             ("tests/unit/test_devices.py::test_every_driver_but_nvidias_stays_open",)),
    Breakage("an AMD GPU leaves the other render nodes open", "condor_systemd/devices.py",
             "if kind == \"char\" and amd and", "if False and",
             ("tests/unit/test_devices.py::test_an_amd_gpu_closes_drm_and_kfd_and_keeps_the_rest",)),
    Breakage("a GPU the caller may not open granted", "condor_systemd/backends/unitjob.py",
             "            if not devices.may_open(node, uid, gids):",
             "            if False:",
             ("tests/behaviour/test_devices.py::test_a_gpu_the_user_could_not_open_is_not_"
              "granted[broker]",)),
    Breakage("--isolate without a PID namespace", SERVICE,
             "        if spec.sandbox.isolate:  # pidns.py", "        if False:  # pidns.py",
             ("tests/behaviour/test_isolation.py::test_two_jobs_of_one_user_cannot_touch_each_"
              "other" + SD,)),
    Breakage("--isolate shows the whole execute root", SERVICE,
             "            props += self.isolation_properties()\n", "",
             ("tests/behaviour/test_isolation.py::test_two_jobs_of_one_user_cannot_touch_each_"
              "other[broker]",)),
    Breakage("I/O caps on the partition, not on its disk", "condor_systemd/blockdev.py",
             "        sysfs = os.path.dirname(sysfs)  # the disk the partition is on\n",
             "        pass\n",
             ("tests/unit/test_blockdev.py::test_a_partition_is_capped_on_its_disk",)),
    Breakage("no I/O caps sent", "condor_systemd/backends/unitjob.py",
             "        return props + self.device_props + self.io_props\n",
             "        return props + self.device_props\n",
             ("tests/behaviour/test_io_caps.py::test_io_caps_go_on_the_disk_of_the_jobs_"
              "directory_or_say_why_not" + SD,)),
    Breakage("the broker binds a job directory that is not the caller's",
             "condor_systemd/broker/scratch.py",
             "    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:\n        return None",
             "    if not stat.S_ISDIR(st.st_mode):\n        return None",
             (BRK + "test_isolate_binds_only_the_callers_own_directory",)),
    # -- the broker's guards (SECURITY.md), each against its attack by a real unprivileged user --
    Breakage("--isolate binds at the path the caller names", SERVICE,
             "        if self.spec.for_caller:  # the broker derived",
             "        if False:  # the broker derived",
             (SEC + "test_isolate_rewrites_no_path_the_caller_names",)),
    Breakage("-p undoes --isolate", POLICY,
             "                if name in UNDO_ISOLATION:", "                if False:",
             (SEC + "test_properties_cannot_undo_isolation[ReadWritePaths]",)),
    Breakage("an isolated job's working directory is writable", SERVICE,
             "        if spec.for_caller and spec.sandbox.isolate:",
             "        if False:",
             (SEC + "test_a_working_directory_at_the_execute_root_shows_no_other_job",)),
    Breakage("the job's environment in its unit's properties", SERVICE,
             "            path = envfile.write(self.spec.unit_name, assignments)\n"
             "        except OSError as exc:\n            if self.spec.for_caller:",
             "            raise OSError(1, 'broken')\n"
             "        except OSError as exc:\n            if False:",
             (SEC + "test_another_users_environment_is_not_in_the_units_properties",)),
    Breakage("the environment file's values unescaped", "condor_systemd/backends/envfile.py",
             '_ESCAPED = {"\\\\": "\\\\\\\\", \'"\': \'\\\\"\', "`": "\\\\`", "$": "\\\\$"}',
             "_ESCAPED: dict = {}",
             ("tests/behaviour/test_contract.py::test_awkward_environment_values_arrive_byte_for_"
              "byte" + SD,)),
    Breakage("a caller's slice without its cgroup's caps", "condor_systemd/broker/slices.py",
             "tasks_max=caps.tasks_max, allowed_cpus=caps.cpus) if capped else Limits()",
             "tasks_max=caps.tasks_max, allowed_cpus=caps.cpus) if False else Limits()",
             (SEC + "test_a_callers_jobs_together_stay_within_its_cgroup",)),
    Breakage("the caller's own end not watched", "condor_systemd/broker/server.py",
             "        if session.peer.pidfd != peer.NO_PIDFD:\n            # the caller's own end",
             "        if False:\n            # the caller's own end",
             (SEC + "test_a_connection_that_outlives_its_caller_does_not_keep_the_job",)),
    Breakage("units without a caller left running", "condor_systemd/broker/server.py",
             "            if unit not in claimed:", "            if False:",
             (SEC + "test_a_callers_unit_that_no_broker_answers_for_is_killed",)),
    Breakage("an unreadable caller cgroup is no limit", "condor_systemd/broker/peer.py",
             "        raise LaunchError(f\"cannot read the caller's cgroup",
             "        return out\n        raise LaunchError(f\"cannot read the caller's cgroup",
             ("tests/unit/test_peer.py::test_an_unreadable_cgroup_refuses_the_job",)),
    Breakage("an unreadable limit file is no limit", "condor_systemd/broker/peer.py",
             "        raise LaunchError(f\"cannot read the caller's limits",
             "        return None\n        raise LaunchError(f\"cannot read the caller's limits",
             ("tests/unit/test_peer.py::test_an_unreadable_limit_file_refuses_the_job",)),
    Breakage("swap not capped by the caller's cgroup", POLICY,
             '            ceilings["swap_max"] = [(caps.swap_max, by_cgroup)]\n', "",
             ("tests/unit/test_policy.py::test_limits_are_capped_by_the_callers_cgroup_and_"
              "say_so",)),
    Breakage("memory nodes not narrowed to the caller's", POLICY,
             '        if name == "AllowedMemoryNodes" and self.cap_by_caller_cgroup',
             '        if False and self.cap_by_caller_cgroup',
             ("tests/unit/test_policy.py::test_memory_nodes_are_narrowed_to_the_callers_and_"
              "none_of_them_is_refused",)),
    Breakage("a broker connection as the job's stdin", "condor_systemd/broker/interface.py",
             "        if stat.S_ISSOCK(mode) and _peer_address(fd) in broker_addresses:",
             "        if False:",
             (SEC + "test_a_broker_connection_is_refused_as_the_jobs_stdio",)),
    Breakage("no connection limit per user", POLICY,
             '"max_connections_per_user": 320,', '"max_connections_per_user": 100000,',
             (SEC + "test_idle_connections_of_one_user_cost_another_nothing",)),
    Breakage("no bound on a job's notices and forwarded signals",
             "condor_systemd/broker/session.py",
             "SIGNAL_BURST, SIGNALS_PER_SECOND = 20, 10.0\n",
             "SIGNAL_BURST, SIGNALS_PER_SECOND = 10**9, 10.0\nMAX_PENDING_NOTICES = 10**9\n",
             (SEC + "test_a_signal_flood_does_not_bring_the_broker_down",)),
    # -- a job's bound directories, its hold, the fd store, I/O per caller -----------------
    Breakage("the bound directories' fds closed once the job runs",
             "condor_systemd/broker/session.py",
             "        job = self.job\n"
             "        if job is None or self.final_sent or not job.has_ended():",
             "        job = self.job\n        if job is not None and job.phase != \"starting\":\n"
             "            self.release_held_fds()\n"
             "        if job is None or self.final_sent or not job.has_ended():",
             (BRK + "test_the_broker_fds_a_unit_binds_from_name_its_directories_while_it_lives",)),
    Breakage("a bound directory's source must exist (a holder after a restart fails)", SERVICE,
             "BY_BROKER_FD = True", "BY_BROKER_FD = False",
             (RST + "test_an_isolated_job_that_ends_after_a_restart_keeps_its_exit_status_and_"
              "accounting",)),
    Breakage("a suspended caller's job held in systemd's freezer",
             "condor_systemd/backends/unitjob.py",
             "        self.kill_unit(signal.SIGSTOP if on else signal.SIGCONT)\n\n",
             "        self.manager(\"FreezeUnit\" if on else \"ThawUnit\", \"s\",\n"
             "                     (self.unit,))\n\n",
             (SEC + "test_a_job_killed_by_its_owner_while_held_does_not_hang_pid_1",)),
    Breakage("jobs beyond the fd store's room run", "condor_systemd/broker/server.py",
             "        return kept >= self.restart_room", "        return False",
             (RST + "test_jobs_beyond_what_the_fd_store_keeps_are_refused",)),
    Breakage("the caller slice carries no I/O caps", "condor_systemd/broker/slices.py",
             "                                  io_caps(caps) if capped else ())",
             "                                  ())",
             (SEC + "test_a_callers_jobs_together_stay_within_its_io_caps",
              "tests/unit/test_peer.py::test_the_callers_io_caps_go_onto_its_slice_by_device_"
              "node")),
)


def copy_checkout(dest: Path) -> None:
    """The work tree as it is (tracked and untracked files, not ignored ones) into dest."""
    listed = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout.split(b"\0")
    for name in filter(None, listed):
        src = ROOT / os.fsdecode(name)
        if src.is_file():
            target = dest / os.fsdecode(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)


def pytest_selection(tests: tuple[str, ...]) -> list[str]:
    """"file::name[backend]" -> the files and a -k expression (parametrised names carry more
    in their brackets, e.g. test_x[systemd-exit 7])."""
    files, terms = [], []
    for test in tests:
        path, _, name = test.partition("::")
        files.append(path)
        base, _, backend = name.partition("[")
        backend = backend.rstrip("]")
        terms.append(f"({base} and {backend})" if backend else base)
    return [*dict.fromkeys(files), "-k", " or ".join(terms)]


def run_tests(copy: Path, tests: tuple[str, ...]) -> tuple[int, str]:
    env = dict(os.environ, PYTHONPATH=str(copy))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "--no-header", "-rfE", *pytest_selection(tests)], cwd=copy, env=env,
                          capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr


def verdict_of(status: int, output: str) -> tuple[str, str]:
    """caught only when a guarding test FAILED on an assertion (an error in set-up or
    collection alone would catch anything; one in teardown, e.g. the leftovers check, may come
    with the failure); the first failure as evidence."""
    failed = [line for line in output.splitlines() if line.startswith("FAILED ")]
    errors = [line for line in output.splitlines() if line.startswith("ERROR ")]
    if status == 0:
        return "SURVIVED", ""
    if status == 1 and failed:
        return "caught", failed[0][len("FAILED "):]
    return f"error (pytest {status})", (errors or failed or [""])[0]


def apply(copy: Path, breakage: Breakage) -> str | None:
    """Apply the change in the copy; the reason it cannot be applied, if so."""
    path = copy / breakage.path
    text = path.read_text()
    count = text.count(breakage.old)
    if count != 1:
        return f"the code it breaks is found {count} times in {breakage.path}"
    path.write_text(text.replace(breakage.old, breakage.new))
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="only breakages whose name contains this")
    parser.add_argument("--list", action="store_true", help="list the breakages and stop")
    args = parser.parse_args()
    chosen = [b for b in BREAKAGES if args.only in b.name]
    if args.list:
        for b in chosen:
            print(f"{b.name}: {b.path}")
        return 0
    scratch = Path(tempfile.mkdtemp(prefix="csd-breakages-", dir="/tmp"))
    try:
        control = scratch / "control"
        copy_checkout(control)
        all_tests = tuple(dict.fromkeys(t for b in chosen for t in b.tests))
        status, output = run_tests(control, all_tests)
        if status != 0:
            print(output[-3000:])
            print("the guarding tests fail on the unbroken code: fix that first")
            return 1
        bad = 0
        for n, breakage in enumerate(chosen):
            copy = scratch / f"b{n}"
            copy_checkout(copy)
            start = time.monotonic()
            problem = apply(copy, breakage)
            if problem is None:
                status, output = run_tests(copy, breakage.tests)
                verdict, evidence = verdict_of(status, output)
            else:
                verdict, evidence = f"NOT APPLIED: {problem}", ""
            took = time.monotonic() - start
            print(f"{verdict:>10s}  {breakage.name}  ({took:.1f} s)", flush=True)
            if evidence:
                print(f"            {evidence[:160]}", flush=True)
            if verdict != "caught":
                bad += 1
                if problem is None:
                    print("\n".join("            " + line for line in output.splitlines()[-8:]))
            shutil.rmtree(copy, ignore_errors=True)
        print(f"{len(chosen) - bad} of {len(chosen)} breakages caught")
        return 1 if bad else 0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
