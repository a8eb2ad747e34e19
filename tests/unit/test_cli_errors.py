"""The CLI's last line of defence: a bug of ours is one line for the user, never a traceback
in the job's output, on every Python the package supports (CI runs this tier on 3.9 too)."""

from __future__ import annotations

import condor_systemd.runner
from condor_systemd import cli


def test_internal_error_is_one_line_and_exit_125(monkeypatch, capsys, tmp_path):
    def broken_run(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(condor_systemd.runner, "run", broken_run)
    log = tmp_path / "log"
    status = cli.main(["run", "--log-file", str(log), "--", "true"])
    out, err = capsys.readouterr()
    assert status == 125
    assert out == ""
    assert err == "condor-systemd: internal error: RuntimeError: boom\n"
    # the details go to the log, with the traceback, for the administrator
    text = log.read_text()
    assert "internal error: Traceback" in text and "broken_run" in text


def test_internal_error_keeps_the_launch_error_file_untouched(monkeypatch, tmp_path):
    """Only launch failures requeue the job: a bug after the start must not claim one."""
    monkeypatch.setattr(condor_systemd.runner, "run",
                        lambda *a, **k: (_ for _ in ()).throw(ValueError("x")))
    error_file = tmp_path / "wrapper-error"
    monkeypatch.setenv("_CONDOR_WRAPPER_ERROR_FILE", str(error_file))
    assert cli.main(["run", "--", "true"]) == 125
    assert not error_file.exists()
