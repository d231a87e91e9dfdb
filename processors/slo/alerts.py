"""Multiwindow, multi-burn-rate alerts (Google SRE Workbook, "Alerting on SLOs", table 5-8).

A rule fires while the burn rate over its long window **and** over its short window
are both at or above its factor: the long window makes it significant, the short
one makes it resolve soon after the burning stops.  Defaults, for a 30-day SLO:

    page    14.4x over 1h and 5m     (2% of a 30-day budget in an hour)
    page     6x   over 6h and 30m    (5% in six hours)
    ticket   3x   over 1d and 2h     (10% in a day)
    ticket   1x   over 3d and 6h     (10% in three days)

``AlertTracker`` turns evaluations into firing/resolved events, once each; the
caller passes the minute it evaluates at, so scenarios replay in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from agent_sre.processors.slo.budget import EventWindows, MinuteSeries, window_label

__all__ = ["DEFAULT_RULES", "AlertEvent", "AlertTracker", "BurnRateRule", "SloStatus", "slo_status"]


@dataclass(frozen=True)
class BurnRateRule:
    severity: str  # "page" or "ticket"
    factor: float
    long_minutes: int
    short_minutes: int

    def __post_init__(self) -> None:
        if self.severity not in ("page", "ticket"):
            raise ValueError(f"severity must be page or ticket, got {self.severity!r}")
        if not 0 < self.short_minutes < self.long_minutes:
            raise ValueError("need 0 < short window < long window")
        if self.factor <= 0:
            raise ValueError("factor must be positive")

    @property
    def name(self) -> str:
        long, short = window_label(self.long_minutes), window_label(self.short_minutes)
        return f"{self.severity}:{self.factor:g}x:{long}/{short}"

    def burns(self, series: EventWindows, at_minute: int, target: float) -> tuple[float, float]:
        long = float(series.burn_rates(at_minute, self.long_minutes, target))
        short = float(series.burn_rates(at_minute, self.short_minutes, target))
        return long, short

    def firing(self, series: EventWindows, at_minute: int, target: float) -> bool:
        long, short = self.burns(series, at_minute, target)
        return long >= self.factor and short >= self.factor

    def firing_at(self, series: MinuteSeries, minutes, target: float) -> np.ndarray:
        """``firing`` at each of ``minutes`` (vectorised: a what-if replays a day of minutes at once)."""
        long = series.burn_rates(minutes, self.long_minutes, target)
        short = series.burn_rates(minutes, self.short_minutes, target)
        return (long >= self.factor) & (short >= self.factor)



DEFAULT_RULES = (
    BurnRateRule("page", 14.4, 60, 5),
    BurnRateRule("page", 6.0, 360, 30),
    BurnRateRule("ticket", 3.0, 1440, 120),
    BurnRateRule("ticket", 1.0, 4320, 360),
)


class SloStatus(str, Enum):
    HEALTHY = "healthy"
    WARNING = "warning"  # a ticket rule fires
    CRITICAL = "critical"  # a page rule fires
    EXHAUSTED = "exhausted"  # no budget left over the SLO window


def slo_status(series: EventWindows, at_minute: int, target: float, window_minutes: int,
               rules: tuple[BurnRateRule, ...] = DEFAULT_RULES) -> SloStatus:
    if series.budget(at_minute, window_minutes, target).exhausted:
        return SloStatus.EXHAUSTED
    firing = {r.severity for r in rules if r.firing(series, at_minute, target)}
    if "page" in firing:
        return SloStatus.CRITICAL
    if "ticket" in firing:
        return SloStatus.WARNING
    return SloStatus.HEALTHY


@dataclass(frozen=True)
class AlertEvent:
    state: str  # "firing" or "resolved"
    rule: BurnRateRule
    at_minute: int
    long_burn: float
    short_burn: float


@dataclass
class AlertTracker:
    """The alert state of one SLO for one subject: emits each transition once."""

    target: float
    rules: tuple[BurnRateRule, ...] = DEFAULT_RULES
    firing: set[BurnRateRule] = field(default_factory=set)

    def evaluate(self, series: EventWindows, at_minute: int) -> list[AlertEvent]:
        events = []
        for rule in self.rules:
            long, short = rule.burns(series, at_minute, self.target)
            now = long >= rule.factor and short >= rule.factor
            if now and rule not in self.firing:
                self.firing.add(rule)
                events.append(AlertEvent("firing", rule, at_minute, long, short))
            elif not now and rule in self.firing:
                self.firing.discard(rule)
                events.append(AlertEvent("resolved", rule, at_minute, long, short))
        return events
