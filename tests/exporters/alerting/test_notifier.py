"""The notifier's Alertmanager-like semantics, on an injected clock."""

from __future__ import annotations

import pytest

from agent_sre.exporters.alerting.notifier import Alert, DeliveryError, Notifier, RoutingConfig


def alert(fp: str, state: str = "firing", severity: str = "page", agent: str = "a1") -> Alert:
    return Alert(fingerprint=fp, state=state, severity=severity, name=f"rule-{fp}", summary=f"alert {fp}",
                 labels={"slo": "tools", "agent_id": agent}, started_ns=0)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def setup():
    clock = Clock()
    sent = []
    cfg = RoutingConfig(group_wait="30s", group_interval="5m", repeat_interval="4h", severities=["page"])
    return Notifier(cfg, sent.append, clock=clock, sleep=lambda s: None), clock, sent


def states(notification) -> list[tuple[str, str]]:
    return [(a.fingerprint, a.state) for a in notification.alerts]


def test_alerts_of_a_group_wait_and_go_out_together(setup):
    n, clock, sent = setup
    n.add([alert("x")])
    clock.now = 10
    n.add([alert("y"), alert("z", agent="a2")])  # z is another group
    clock.now = 29
    assert n.tick() == 0
    clock.now = 30
    assert n.tick() == 1
    assert states(sent[0]) == [("x", "firing"), ("y", "firing")] and sent[0].group_labels == {
        "slo": "tools", "agent_id": "a1"}
    clock.now = 40
    assert n.tick() == 1 and states(sent[1]) == [("z", "firing")]  # its own group_wait from t=10


def test_unchanged_groups_repeat_only_after_repeat_interval_and_duplicates_are_not_changes(setup):
    n, clock, sent = setup
    n.add([alert("x")])
    clock.now = 30
    n.tick()
    clock.now = 400
    n.add([alert("x")])  # the same alert in the same state again: no change
    assert n.tick() == 0
    clock.now = 30 + 4 * 3600
    assert n.tick() == 1 and states(sent[-1]) == [("x", "firing")]


def test_a_change_waits_for_group_interval_and_a_resolve_is_sent_once(setup):
    n, clock, sent = setup
    n.add([alert("x")])
    clock.now = 30
    n.tick()
    clock.now = 100
    n.add([alert("y")])
    assert n.tick() == 0  # changed, but group_interval (5m) since t=30 has not passed
    clock.now = 330
    assert n.tick() == 1 and states(sent[-1]) == [("x", "firing"), ("y", "firing")]
    clock.now = 400
    n.add([alert("x", "resolved"), alert("y", "resolved")])
    clock.now = 630
    assert n.tick() == 1 and states(sent[-1]) == [("x", "resolved"), ("y", "resolved")]
    assert sent[-1].status == "resolved" and n.pending_groups == 0
    clock.now = 100_000
    assert n.tick() == 0


def test_severity_filter_and_unknown_resolves_are_ignored(setup):
    n, clock, sent = setup
    n.add([alert("t", severity="ticket"), alert("never-fired", "resolved")])
    clock.now = 1000
    assert n.tick() == 0 and n.pending_groups == 0


def test_retryable_failures_are_retried_with_backoff_then_later_not_every_tick():
    clock, naps, calls = Clock(), [], []

    def flaky(notification):
        calls.append(clock.now)
        if len(calls) < 3:
            raise DeliveryError("503")

    n = Notifier(RoutingConfig(group_wait="0s", max_attempts=5), flaky, clock=clock, sleep=naps.append)
    n.add([alert("x")])
    assert n.tick() == 1 and naps == [0.5, 1.0] and n.sent == 1

    def down(notification):
        calls.append(clock.now)
        raise DeliveryError("connection refused")

    n = Notifier(RoutingConfig(group_wait="0s", group_interval="5m", max_attempts=2), down, clock=clock,
                 sleep=lambda s: None)
    calls.clear()
    n.add([alert("x")])
    assert n.tick() == 0 and len(calls) == 2 and n.failed == 1
    clock.now = 60
    assert n.tick() == 0 and len(calls) == 2  # not hammered every tick
    clock.now = 301
    n.tick()
    assert len(calls) == 4  # tried again after group_interval


def test_a_refusal_that_cannot_succeed_is_not_retried():
    calls = []

    def refuse(notification):
        calls.append(1)
        raise DeliveryError("HTTP 400: bad payload", retryable=False)

    clock = Clock()
    n = Notifier(RoutingConfig(group_wait="0s", group_interval="0s", max_attempts=5), refuse, clock=clock,
                 sleep=lambda s: None)
    n.add([alert("x")])
    n.tick()
    clock.now = 10
    n.tick()
    assert len(calls) == 1


def test_a_forced_tick_sends_what_is_still_waiting(setup):
    n, clock, sent = setup
    n.add([alert("x")])
    clock.now = 5  # group_wait (30 s) not over
    assert n.tick() == 0
    assert n.tick(force=True) == 1 and states(sent[0]) == [("x", "firing")]
    assert n.tick(force=True) == 0  # nothing new since
