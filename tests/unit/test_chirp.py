"""Chirp's wire format against a proxy that parses requests as the starter's does (escaped
words, the cookie first, one integer per answer); the real starter is the HTCondor tier's."""

from __future__ import annotations

import socket
import threading

import pytest

from condor_systemd.chirp import ChirpError, log_line, publish, publish_usage
from condor_systemd.jobad import wants_remote_updates
from condor_systemd.usage import Usage, Verdict, job_attributes


def _words(line: str) -> list[str]:
    """Split like the starter's sscanf_chirp: blanks separate, a backslash escapes."""
    words, word, escaped, in_word = [], [], False, False
    for char in line:
        if escaped:
            word.append(char)
            escaped = False
        elif char == "\\":
            escaped = in_word = True
        elif char in " \t":
            if in_word:
                words.append("".join(word))
            word, in_word = [], False
        else:
            word.append(char)
            in_word = True
    if in_word:
        words.append("".join(word))
    return words


class Proxy:
    def __init__(self, cookie: str = "s3cret", refuse: str | None = None) -> None:
        self.cookie, self.refuse = cookie, refuse
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.received: list[list[str]] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        conn, _ = self.server.accept()
        with conn, conn.makefile("rw", encoding="utf-8", newline="\n") as f:
            for line in f:
                words = _words(line.rstrip("\n"))
                self.received.append(words)
                if words[0] == "cookie":
                    ok = words[1:] == [self.cookie]
                elif words[0] == "set_job_attr_delayed" and len(words) == 3:
                    ok = words[1] != self.refuse
                elif words[0] == "ulog" and len(words) == 2:
                    ok = True
                else:
                    ok = False
                f.write("0\n" if ok else "-1\n")
                f.flush()

    def config(self, tmp_path) -> str:
        path = tmp_path / ".chirp.config"
        path.write_text(f"127.0.0.1 {self.port} {self.cookie}\n")
        return str(path)


def test_every_attribute_arrives_as_one_word_after_the_cookie(tmp_path):
    proxy = Proxy()
    attributes = [("ChirpA", '"two words and a \\\\ backslash"'), ("ChirpB", "1.5")]
    publish(proxy.config(tmp_path), attributes)
    proxy.thread.join(5)
    assert proxy.received == [["cookie", "s3cret"],
                              ["set_job_attr_delayed", "ChirpA",
                               '"two words and a \\\\ backslash"'],
                              ["set_job_attr_delayed", "ChirpB", "1.5"]]


def test_a_refusal_is_one_line_naming_the_attribute(tmp_path):
    proxy = Proxy(refuse="ChirpB")
    with pytest.raises(ChirpError, match=r"refused ChirpB \(error -1\)"):
        publish(proxy.config(tmp_path), [("ChirpA", "1"), ("ChirpB", "2")])


def test_a_wrong_cookie_is_refused(tmp_path):
    proxy = Proxy()
    path = tmp_path / "config"
    path.write_text(f"127.0.0.1 {proxy.port} wrong\n")
    with pytest.raises(ChirpError, match="refused the Chirp cookie"):
        publish(str(path), [("ChirpA", "1")])


@pytest.mark.parametrize("text", ["", "127.0.0.1 notaport cookie\n", "127.0.0.1 9618\n"])
def test_an_unusable_configuration_is_one_line(tmp_path, text):
    path = tmp_path / "config"
    path.write_text(text)
    with pytest.raises(ChirpError, match="cannot read the Chirp configuration"):
        publish(str(path), [("ChirpA", "1")])


def test_no_proxy_listening_is_one_line(tmp_path):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    path = tmp_path / "config"
    path.write_text(f"127.0.0.1 {port} c\n")
    with pytest.raises(ChirpError, match=f"Chirp proxy 127.0.0.1:{port}: "):
        publish(str(path), [("ChirpA", "1")])


def test_the_records_attributes():
    usage = Usage(unit="condor-job-1.0.service", backend="systemd", job_id="1.0", exit_code=0,
                  oom_killed=True, cpu_user_seconds=1.25, memory_peak_bytes=134217729,
                  limits={"memory_max": 134217728, "swap_max": 0},
                  enforced={"memory_max": Verdict("enforced"),
                            "swap_max": Verdict("not enforced", "no swap accounting")})
    attributes = dict(job_attributes(usage))
    assert attributes["ChirpCondorSystemdCpuUserSeconds"] == "1.25"
    assert attributes["ChirpCondorSystemdOomKilled"] == "true"
    assert attributes["ChirpCondorSystemdMemoryPeakMB"] == "129"  # rounded up, as HTCondor
    assert attributes["ChirpCondorSystemdMemoryMaxMB"] == "128"
    assert attributes["ChirpCondorSystemdLimits"] == '"memory_max=134217728 swap_max=0"'
    assert attributes["ChirpCondorSystemdNotEnforced"] == \
        '"swap_max: not enforced: no swap accounting"'
    assert attributes["ChirpCondorSystemdIoReadBytes"] == "undefined"
    assert all(name.startswith("Chirp") for name in attributes) and len(attributes) <= 100


def test_long_texts_are_cut_to_what_chirp_takes():
    many = {f"limit_{i}": Verdict("not enforced", "x" * 80) for i in range(20)}
    usage = Usage(unit=None, backend="psutil", job_id="1.0", enforced=many)
    value = dict(job_attributes(usage))["ChirpCondorSystemdNotEnforced"]
    assert len(value) == 902 and value.endswith('..."'), len(value)


def test_the_user_log_line_follows_the_attributes(tmp_path):
    proxy = Proxy()
    attributes = [("ChirpCondorSystemdCpuUserSeconds", "1.25"),
                  ("ChirpCondorSystemdCpuSystemSeconds", "0.5"),
                  ("ChirpCondorSystemdMemoryPeakMB", "129"),
                  ("ChirpCondorSystemdOomKilled", "true")]
    line = log_line(attributes)
    assert line == ("condor-systemd: cpu 1.25 s user 0.5 s system, peak memory 129 MB, "
                    "killed: out of memory")
    publish(proxy.config(tmp_path), attributes, line)
    proxy.thread.join(5)
    assert proxy.received[-1] == ["ulog", line]


@pytest.mark.parametrize("ad, wanted", [
    ("WantIOProxy = true\n", True),
    ("WantIOProxy = true\nWantRemoteUpdates = false\n", False),
    ("WantRemoteUpdates = TRUE\n", True),
    ("", False),
])
def test_user_log_events_only_where_the_job_ad_lets_the_starter_take_them(tmp_path, ad, wanted):
    (tmp_path / "job.ad").write_text(ad)
    assert wants_remote_updates({"_CONDOR_JOB_AD": str(tmp_path / "job.ad")}) is wanted


def test_publish_usage_only_under_htcondor_and_says_why_it_failed(tmp_path):
    asked = []

    def attributes() -> list[tuple[str, str]]:
        asked.append(1)
        return [("ChirpCondorSystemdCpuUserSeconds", "1.0")]

    assert publish_usage({}, attributes) is None and not asked  # not under HTCondor: nothing
    (tmp_path / "job.ad").write_text("WantIOProxy = true\n")
    proxy = Proxy()
    env = {"_CONDOR_CHIRP_CONFIG": proxy.config(tmp_path),
           "_CONDOR_JOB_AD": str(tmp_path / "job.ad")}
    assert publish_usage(env, attributes) is None
    proxy.thread.join(5)
    assert [words[0] for words in proxy.received] == ["cookie", "set_job_attr_delayed", "ulog"]
    env["_CONDOR_CHIRP_CONFIG"] = str(tmp_path / "missing")
    assert publish_usage(env, attributes).startswith(
        "the usage did not reach the job ad: cannot read the Chirp configuration ")
