"""Incident correlation on hand-made signals: by agent and time window, dedup, P1-P4, the lifecycle."""

from __future__ import annotations

import pytest

from agent_sre.processors.incidents.correlate import Correlator, Signal, TransitionError

M = 60 * 10**9


def sig(t_min: float, type_: str, state: str = "firing", agent: str = "a1", fp: str | None = None,
        priority: int = 2, kind: str | None = None, name: str = "n") -> Signal:
    kind = kind or type_.split("_")[0]
    return Signal(int(t_min * M), agent, type_, kind, name, fp or f"{agent}-{type_}", state, priority, type_)


def test_signals_of_one_agent_make_one_incident_escalated_to_p1_and_resolved_when_all_resolve():
    c = Correlator()
    opened = c.add(sig(0, "slo_page", kind="alert"))
    assert [(e.entry, e.state, e.priority) for e in opened] == [("state", "open", "P2"), ("signal", "firing", "P2")]
    inc = c.active["INC-00001"]
    # an open circuit of the same agent two minutes later joins, and two kinds at P2 make it P1
    joined = c.add(sig(2, "circuit_open", kind="circuit", name="open"))
    assert [(e.entry, e.priority) for e in joined] == [("signal", "P2"), ("priority", "P1")]
    assert inc.priority == 1
    assert c.add(sig(3, "slo_page", kind="alert")) == [] and inc.duplicates == 1  # the same page again: counted
    other = c.add(sig(3, "slo_page", agent="a2", kind="alert"))
    assert other[0].incident_id == "INC-00002"  # another agent, another incident
    c.add(sig(10, "slo_page", "resolved", kind="alert"))
    assert inc.state == "open"  # the circuit is still open
    entries = c.add(sig(12, "circuit_open", "resolved", kind="circuit", name="closed"))
    assert [(e.entry, e.state, e.who) for e in entries][-1] == ("state", "resolved", "agent-sre")
    assert "INC-00001" not in c.active and c.take("INC-00001").resolved_ns == 12 * M
    # a later signal of the same agent opens a new incident
    assert c.add(sig(20, "slo_page", kind="alert", fp="again"))[0].incident_id == "INC-00003"


def test_weak_signals_join_but_do_not_open_and_the_window_bounds_correlation():
    c = Correlator(correlation_window_s=300, auto_resolve=False)
    assert c.add(sig(0, "anomaly_warning", priority=4)) == []  # P4 opens nothing (open_at P3)
    c.add(sig(1, "policy_violation", priority=3))
    assert [e.entry for e in c.add(sig(2, "anomaly_warning", priority=4))] == ["signal"]  # joins INC-00001
    c.add(sig(3, "anomaly_warning", "resolved", priority=4))
    assert c.add(sig(5.5, "policy_violation", fp="other", priority=3))[0].incident_id == "INC-00001"
    # 5.5 -> 11: over the window since the last signal, and nothing of INC-00001 is firing any more
    assert c.add(sig(11, "policy_violation", fp="third", priority=3))[0].incident_id == "INC-00002"


def test_point_signals_age_out_before_an_incident_resolves_by_the_clock():
    c = Correlator(correlation_window_s=300)
    c.add(sig(0, "policy_violation", priority=3))
    assert c.tick(4 * M) == [] and "INC-00001" in c.active
    (e,) = c.tick(6 * M)
    assert (e.entry, e.state, e.why) == ("state", "resolved", "every signal resolved")


def test_the_lifecycle_goes_forward_with_who_and_why():
    c = Correlator()
    c.add(sig(0, "kill", kind="decision"))
    (e,) = c.transition("INC-00001", "acknowledged", 1 * M, "alice", "looking")
    assert (e.state, e.who, e.why, e.time_ns) == ("acknowledged", "alice", "looking", M)
    c.transition("INC-00001", "mitigated", 2 * M, "alice", "budget raised")  # investigating skipped
    with pytest.raises(TransitionError, match="is mitigated; it cannot become investigating"):
        c.transition("INC-00001", "investigating", 3 * M, "bob", "")
    with pytest.raises(TransitionError, match="unknown state"):
        c.transition("INC-00001", "closed", 3 * M, "bob", "")
    c.transition("INC-00001", "resolved", 4 * M, "alice", "fixed")
    with pytest.raises(TransitionError, match="no open incident"):
        c.transition("INC-00001", "resolved", 5 * M, "alice", "")
