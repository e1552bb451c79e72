"""How the investigation reads the log beside tracing: it bears out an accused copy only when that
copy's buyer was flagged, and says so either way (no log, no claim)."""

from __future__ import annotations

from types import SimpleNamespace

from advforensics.investigation import _queries
from advforensics.serving.detection import BuyerVerdict, DetectorConfig
from advforensics.serving.forensics import BuyerFinding, LogFindings


def _findings() -> LogFindings:
    alice = BuyerFinding(BuyerVerdict("alice", 900, 40, 31, 0.01), copy_index=1, family="hopskipjump",
                         family_probability=0.93)
    bob = BuyerFinding(BuyerVerdict("bob", 1000, 0, None, 2.4), copy_index=2)
    return LogFindings("queries.sqlite", DetectorConfig(threshold=1.5), [alice, bob], (1, 8, 8))


def test_the_log_bears_out_the_accused_copy_of_a_flagged_buyer() -> None:
    queries = _queries(_findings(), SimpleNamespace(accused=True, source=1))
    assert queries["flagged"] == ["alice"] and queries["corroborates_trace"] is True
    assert "alice (copy 1, at query 31, hopskipjump)" in queries["verdict"] and "bears out" in queries["verdict"]


def test_an_accused_copy_without_a_flagged_buyer_is_a_caveat() -> None:
    queries = _queries(_findings(), SimpleNamespace(accused=True, source=2))
    assert queries["corroborates_trace"] is False
    assert any("no attack by its buyer" in c for c in queries["caveats"])
    assert "No buyer of the traced copy 2" in queries["verdict"]


def test_no_accusation_no_claim() -> None:
    for tracing in (None, SimpleNamespace(accused=False, source=1)):
        assert _queries(_findings(), tracing)["corroborates_trace"] is None
