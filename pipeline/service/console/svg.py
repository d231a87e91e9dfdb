"""Charts drawn on the server as inline SVG: no JavaScript, no charting library, no CDN.

Every function returns one ``<svg>`` element as text; numbers are formatted here, labels escaped."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from html import escape

import numpy as np


@lru_cache(maxsize=16)
def _xs(n: int, width: int) -> tuple[str, ...]:
    step = width * 10 / max(n - 1, 1)
    return tuple(f"{round(i * step)}," for i in range(n))


def sparkline(values: Sequence[float], width: int = 120, height: int = 24, label: str = "",
              css: str = "spark") -> str:
    """A line over ``values`` (oldest first); an empty series is a flat line at zero.  Coordinates are
    integers in tenths of a pixel, computed with numpy: the overview draws two per agent (measured: a
    Python loop per point was 60 ms of a 100-agent page)."""
    v = np.asarray(values if len(values) else [0.0, 0.0], dtype=np.float64)
    peak = max(float(v.max()), 1e-12)
    ys = (height * 10 - 10 - v / peak * (height * 10 - 20)).astype(np.int64).tolist()
    path = " ".join(map(str.__add__, _xs(len(ys), width), map(str, ys)))
    return (f'<svg class="{css}" width="{width}" height="{height}" viewBox="0 0 {width * 10} {height * 10}" '
            f'role="img" aria-label="{escape(label)}"><polyline points="{path}" fill="none"/></svg>')


def budget_bar(utilisation: float, throttle_at: float | None, kill_at: float | None, width: int = 160,
               height: int = 14, label: str = "") -> str:
    """Spend against its limit, with the throttle and kill marks; beyond the limit the bar is full and red."""
    filled = max(0.0, min(utilisation, 1.0)) * width
    state = "kill" if kill_at is not None and utilisation >= kill_at else (
        "throttle" if throttle_at is not None and utilisation >= throttle_at else "ok")
    marks = "".join(f'<line class="mark-{name}" x1="{at * width:.1f}" x2="{at * width:.1f}" y1="0" y2="{height}"/>'
                    for name, at in (("throttle", throttle_at), ("kill", kill_at)) if at is not None and at <= 1)
    return (f'<svg class="bar bar-{state}" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'role="img" aria-label="{escape(label)}"><rect class="track" width="{width}" height="{height}"/>'
            f'<rect class="fill" width="{filled:.1f}" height="{height}"/>{marks}</svg>')


def burn_rates(burns: dict[str, float], thresholds: dict[str, float], width: int = 360, height: int = 120) -> str:
    """Burn rate per alert window (bars, log-free: capped at twice the highest threshold) with each
    window's threshold as a line: the picture Pyrra and Sloth users know."""
    windows = list(burns)
    if not windows:
        return '<svg class="burn" width="0" height="0"></svg>'
    top = max([*thresholds.values(), 1.0]) * 2
    slot = width / len(windows)
    parts = []
    for i, w in enumerate(windows):
        value = burns[w]
        h = min(value / top, 1.0) * (height - 18)
        over = w in thresholds and value >= thresholds[w]
        x = i * slot + slot * 0.2
        parts.append(f'<rect class="{"over" if over else "under"}" x="{x:.1f}" y="{height - 16 - h:.1f}" '
                     f'width="{slot * 0.6:.1f}" height="{h:.1f}"><title>{escape(w)}: {value:g}x</title></rect>')
        if w in thresholds:
            y = height - 16 - min(thresholds[w] / top, 1.0) * (height - 18)
            parts.append(f'<line class="threshold" x1="{i * slot:.1f}" x2="{(i + 1) * slot:.1f}" y1="{y:.1f}" '
                         f'y2="{y:.1f}"><title>{escape(w)} threshold {thresholds[w]:g}x</title></line>')
        parts.append(f'<text x="{i * slot + slot / 2:.1f}" y="{height - 3}" text-anchor="middle">{escape(w)}</text>')
    return (f'<svg class="burn" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="burn rate per window">{"".join(parts)}</svg>')


def daily_bars(days: list[tuple[str, float]], marks: set[str] | None = None, width: int = 480, height: int = 120,
               href: str = "", fmt=lambda v: f"${v:.4f}", top: float | None = None) -> str:
    """Spend per day; days in ``marks`` (anomalies) carry a marker; each bar links to ``href`` + day."""
    if not days:
        return '<svg class="days" width="0" height="0"></svg>'
    top = top or max(v for _, v in days) or 1.0
    slot = min(width / len(days), 60)
    parts = []
    for i, (day, value) in enumerate(days):
        h = value / top * (height - 20)
        bar = (f'<rect x="{i * slot + 2:.1f}" y="{height - 14 - h:.1f}" width="{max(slot - 4, 1):.1f}" height="{h:.1f}">'
               f'<title>{escape(day)}: {escape(fmt(value))}</title></rect>')
        parts.append(f'<a href="{escape(href + day)}">{bar}</a>' if href else bar)
        if marks and day in marks:
            parts.append(f'<circle class="anomaly" cx="{i * slot + slot / 2:.1f}" cy="5" r="4"><title>anomaly</title></circle>')
        parts.append(f'<text x="{i * slot + slot / 2:.1f}" y="{height - 2}" text-anchor="middle">{escape(day[5:])}</text>')
    return (f'<svg class="days" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="spend per day">{"".join(parts)}</svg>')


def burn_line(burns: Sequence[float], threshold: float, width: int = 480, height: int = 90, label: str = "") -> str:
    """Burn rate per hour (oldest first) as a line, with the alert threshold as a dashed line."""
    v = np.asarray(burns if len(burns) else [0.0, 0.0], dtype=np.float64)
    top = max(float(v.max()), threshold * 1.5, 1e-12)
    ys = (height * 10 - 10 - np.minimum(v, top) / top * (height * 10 - 20)).astype(np.int64).tolist()
    path = " ".join(map(str.__add__, _xs(len(ys), width), map(str, ys)))
    ty = int(height * 10 - 10 - threshold / top * (height * 10 - 20))
    return (f'<svg class="burnline" width="{width}" height="{height}" viewBox="0 0 {width * 10} {height * 10}" '
            f'role="img" aria-label="{escape(label)}"><line class="threshold" x1="0" x2="{width * 10}" y1="{ty}" y2="{ty}">'
            f'<title>threshold {threshold:g}x</title></line><polyline points="{path}" fill="none">'
            f'<title>peak: {float(v.max()):g}x</title></polyline></svg>')
