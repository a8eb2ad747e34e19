"""What one caller can make the broker say: bounded per uid (the journal) and per job (its
notices), so that one caller cannot make journald silence the broker's lines about others."""

from __future__ import annotations

from condor_systemd.broker import session as session_module
from condor_systemd.broker.session import JournalBudget


class Lines:
    def __init__(self) -> None:
        self.said: list[str] = []

    def warning(self, message: str) -> None:
        self.said.append(message)


def test_a_uids_journal_lines_are_a_burst_then_a_rate(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(session_module.time, "monotonic", lambda: now[0])
    log = Lines()
    budget = JournalBudget(log)  # type: ignore[arg-type]
    allowed = sum(budget.allows(1000) for _ in range(1000))
    assert allowed == JournalBudget.BURST == 400
    assert budget.allows(2000)  # another uid's lines are not held back
    now[0] += 1.0  # a second later: PER_SECOND more, and a word about what was held back
    assert sum(budget.allows(1000) for _ in range(100)) == JournalBudget.PER_SECOND == 20
    assert log.said == ["600 lines about the jobs of uid 1000 were not logged: more than 20 a "
                        "second"]
