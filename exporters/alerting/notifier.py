"""Alert notification, the way Alertmanager does it: grouping, waiting, deduplication, repeats, resolves.

Alerts (events of the ``events`` signal) are grouped by ``group_by`` labels. A new
group is sent ``group_wait`` after its first alert (so alerts that fire together
go out together); after that, a group is sent again only when it changed (an
alert fired, or resolved) and ``group_interval`` has passed, or, unchanged but
still firing, every ``repeat_interval``. An alert notified in a state is not
notified in that state again (dedup). A resolved alert is sent once (with
``send_resolved``) and leaves its group. A failed delivery is retried with
backoff; if every attempt fails the group stays due and is tried again at the
next tick. Time comes from ``clock``, so all of this is testable in milliseconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import Field

from agent_sre.pipeline.component.config import ConfigModel, Duration

log = logging.getLogger("agent_sre.alerting")


class DeliveryError(Exception):
    """A channel could not deliver; ``retryable`` False means trying again cannot help (e.g. HTTP 400)."""

    def __init__(self, message: str, retryable: bool = True):
        super().__init__(message)
        self.retryable = retryable


class RoutingConfig(ConfigModel):
    """Settings every channel exporter has."""

    group_by: list[str] = ["slo", "agent_id"]
    group_wait: Duration = Field(default="30s", ge=0)
    group_interval: Duration = Field(default="5m", ge=0)
    repeat_interval: Duration = Field(default="4h", gt=0)
    severities: list[str] = ["page", "ticket"]  # the events this channel takes: of these severities ...
    kinds: list[str] = ["alert", "budget", "decision", "anomaly", "circuit", "incident"]  # ... and kinds
    send_resolved: bool = True
    max_attempts: int = Field(default=5, ge=1)
    timeout: Duration = Field(default="10s", gt=0)


@dataclass
class Alert:
    fingerprint: str
    state: str  # firing | resolved
    severity: str
    name: str
    summary: str
    labels: dict[str, str]
    started_ns: int
    ended_ns: int | None = None
    kind: str = "alert"

    @property
    def notice(self) -> str:
        """What was notified of this alert: a change of any part (throttle -> kill, P3 -> P1) is news."""
        return f"{self.state}|{self.severity}|{self.name}"


@dataclass
class Notification:
    """What a channel sends: one group, its firing alerts and the ones that just resolved."""

    group_key: str
    group_labels: dict[str, str]
    alerts: list[Alert]

    @property
    def status(self) -> str:
        return "firing" if any(a.state == "firing" for a in self.alerts) else "resolved"


@dataclass
class _Group:
    labels: dict[str, str]
    created: float
    alerts: dict[str, Alert] = field(default_factory=dict)
    notified: dict[str, str] = field(default_factory=dict)  # fingerprint -> notice last notified
    last_sent: float | None = None

    def changed(self) -> bool:
        return any(self.notified.get(fp) != a.notice for fp, a in self.alerts.items())


class Notifier:
    def __init__(self, config: RoutingConfig, deliver: Callable[[Notification], None],
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep):
        self.config = config
        self.deliver = deliver
        self.clock = clock
        self.sleep = sleep
        self._groups: dict[str, _Group] = {}
        self._lock = threading.Lock()
        self.sent = 0
        self.failed = 0

    def add(self, alerts: list[Alert]) -> None:
        cfg = self.config
        now = self.clock()
        with self._lock:
            for alert in alerts:
                if alert.kind not in cfg.kinds:
                    continue
                labels = {k: alert.labels.get(k, "") for k in cfg.group_by}
                key = "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
                group = self._groups.get(key)
                known = group is not None and alert.fingerprint in group.alerts
                # A resolve reaches an alert this channel took whatever its severity (kill, then
                # throttle, then allow); a firing one of another severity is not this channel's.
                if alert.state == "resolved" and not known:
                    continue  # resolving an alert this channel never saw
                if alert.state != "resolved" and alert.severity not in cfg.severities:
                    continue
                if group is None:
                    group = self._groups[key] = _Group(labels, now)
                group.alerts[alert.fingerprint] = alert

    def due(self, now: float, force: bool = False) -> list[tuple[str, Notification]]:
        cfg = self.config
        out = []
        with self._lock:
            for key, g in self._groups.items():
                if force:
                    ready = g.changed()
                elif g.last_sent is None:
                    ready = now - g.created >= cfg.group_wait
                elif g.changed():
                    ready = now - g.last_sent >= cfg.group_interval
                else:
                    ready = (now - g.last_sent >= cfg.repeat_interval
                             and any(a.state == "firing" for a in g.alerts.values()))
                if not ready:
                    continue
                alerts = [a for a in g.alerts.values() if a.state == "firing" or
                          (cfg.send_resolved and g.notified.get(a.fingerprint, "").startswith("firing|"))]
                if alerts:
                    out.append((key, Notification(key, dict(g.labels), alerts)))
                else:
                    self._mark_sent(key, now)  # only resolved alerts nobody needs to hear about
        return out

    def _mark_sent(self, key: str, now: float) -> None:
        g = self._groups[key]
        g.last_sent = now
        for fp, alert in list(g.alerts.items()):
            g.notified[fp] = alert.notice
            if alert.state == "resolved":
                del g.alerts[fp]
                del g.notified[fp]
        if not g.alerts:
            del self._groups[key]

    def tick(self, force: bool = False) -> int:
        """Send every group that is due (``force``: every group with news, waits or not, as at
        shutdown); returns how many notifications went out."""
        now = self.clock()
        sent = 0
        for key, notification in self.due(now, force):
            outcome = self._deliver(notification)
            with self._lock:
                if key not in self._groups:
                    continue
                if outcome == "retry":  # try again in group_interval, not at every tick
                    self._groups[key].last_sent = now
                else:  # delivered, or refused for good (a 4xx would be refused again)
                    self._mark_sent(key, now)
            sent += outcome == "sent"
        return sent

    def _deliver(self, notification: Notification) -> str:
        delay = 0.5
        for attempt in range(1, self.config.max_attempts + 1):
            try:
                self.deliver(notification)
                self.sent += 1
                return "sent"
            except DeliveryError as exc:
                if not exc.retryable or attempt == self.config.max_attempts:
                    self.failed += 1
                    log.error("notification for %s failed after %d attempt(s)%s: %s", notification.group_key,
                              attempt, "" if exc.retryable else " (not retryable)", exc)
                    return "retry" if exc.retryable else "dropped"
                self.sleep(delay)
                delay = min(delay * 2, 30.0)
        return "retry"

    @property
    def pending_groups(self) -> int:
        return len(self._groups)
