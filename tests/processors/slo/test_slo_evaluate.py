"""evaluate(): one aggregate over the rollup for every objective gives the very rows (burn rates, budgets,
firing, status, alert transitions) that summing every minute of every subject's series gives."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from agent_sre.processors.slo.alerts import AlertTracker, slo_status
from agent_sre.processors.slo.budget import MinuteSeries, WindowCounts, window_label
from agent_sre.processors.slo.factory import Objective, _minutes, evaluate

NOW = 29_000_000  # a minute (Unix time // 60)


def _rollup(seed: int) -> duckdb.DuckDBPyConnection:
    """sli_minutes (the store's layout) with 12 agents, 2 versions each, over 5 days of sparse minutes:
    some agents healthy, some burning, one with data only older than the windows."""
    rng = np.random.default_rng(seed)
    con = duckdb.connect()
    con.execute("CREATE TABLE sli_minutes (minute BIGINT NOT NULL, sli VARCHAR NOT NULL, agent_id VARCHAR NOT NULL, "
                "agent_version VARCHAR NOT NULL, good BIGINT NOT NULL, total BIGINT NOT NULL, "
                "PRIMARY KEY (minute, sli, agent_id, agent_version))")
    rows = []
    for a in range(12):
        bad_share = [0.0, 0.001, 0.02, 0.3][a % 4]
        for version in ("1.0", "1.1"):
            minutes = NOW - 1 - rng.choice(5 * 1440, size=600, replace=False)
            if a == 11:
                minutes = minutes - 40 * 1440  # outside every window: no row for this agent
            for m in minutes:
                total = int(rng.integers(1, 50))
                bad = int(rng.binomial(total, bad_share))
                rows.append((int(m), "task_success_rate", f"agent-{a}", version, total - bad, total))
    rows.append((NOW, "task_success_rate", "agent-0", "1.0", 0, 7))  # the minute in progress: not counted
    rows.append((NOW - 5, "other_sli", "agent-0", "1.0", 0, 7))  # another SLI: not counted
    table = pa.table({name: list(column) for name, column in zip(
        ("minute", "sli", "agent_id", "agent_version", "good", "total"), zip(*rows, strict=True), strict=True)})
    con.register("new_rows", table)
    con.execute("INSERT INTO sli_minutes SELECT * FROM new_rows")
    return con


def _minute_by_minute(con, obj: Objective, now_minute: int, trackers: dict) -> list[dict]:
    """The reference: each subject's whole per-minute series, windows summed from it."""
    rules, window = obj.burn_rules, _minutes(obj.window)
    longest = max([window, *(r.long_minutes for r in rules)])
    version = "agent_version" if obj.per_version else "''"
    data = con.execute(f"SELECT agent_id, {version}, minute, sum(good), sum(total) FROM sli_minutes WHERE sli = ? "
                       "AND minute >= ? AND minute < ? GROUP BY ALL ORDER BY ALL",
                       [obj.sli, now_minute - longest, now_minute]).fetchall()
    out = []
    for agent, ver in sorted({(r[0], r[1]) for r in data}):
        mine = [r for r in data if (r[0], r[1]) == (agent, ver)]
        series = MinuteSeries.from_minutes([r[2] for r in mine], [r[3] for r in mine], [r[4] for r in mine])
        budget = series.budget(now_minute, window, obj.target)
        tracker = trackers.setdefault((obj.name, agent, ver), AlertTracker(obj.target, rules))
        events = [(e.state, e.rule.name, e.long_burn, e.short_burn) for e in tracker.evaluate(series, now_minute)]
        out.append({"agent_id": agent, "agent_version": ver if obj.per_version else None, "events": budget.total,
                    "bad_events": budget.bad, "budget_remaining": round(budget.remaining, 6),
                    "burn_rates": {window_label(m): round(float(series.burn_rates(now_minute, m, obj.target)), 6)
                                   for m in sorted({m for r in rules for m in (r.long_minutes, r.short_minutes)})},
                    "firing": sorted(r.name for r in tracker.firing), "transitions": events,
                    "status": slo_status(series, now_minute, obj.target, window, rules).value})
    return out


@pytest.mark.parametrize("per_version", [False, True])
def test_one_aggregate_for_every_objective_gives_the_rows_the_minute_series_give(per_version):
    con = _rollup(seed=17)
    read = lambda sql, params: con.execute(sql, params).fetchall()  # noqa: E731 - the store's read
    objectives = [Objective(name="tasks", sli="task_success_rate", target=0.99, window="3d", per_version=per_version),
                  Objective(name="strict", sli="task_success_rate", target=0.999, window="1d", per_version=per_version,
                            rules=[{"severity": "page", "factor": 2, "long_window": "2h", "short_window": "10m"}]),
                  Objective(name="other", sli="other_sli", target=0.9, window="1h", per_version=per_version,
                            rules=[{"severity": "page", "factor": 1, "long_window": "30m", "short_window": "7m"}])]
    trackers: dict = {}
    reference_trackers: dict = {}
    seen_firing = seen_resolved = False
    for now_minute in (NOW, NOW + 7, NOW + 90, NOW + 1500):  # windows slide: alerts fire and resolve
        transitions: list = []
        rows = evaluate(read, objectives, now_minute, trackers, transitions)
        expected = [row for obj in objectives for row in _minute_by_minute(con, obj, now_minute, reference_trackers)]
        assert len(rows) == len(expected) > 0
        assert {r["agent_id"] for r in rows} == {f"agent-{a}" for a in range(11)}
        for got, want in zip(rows, expected, strict=True):
            assert {k: got[k] for k in want if k != "transitions"} == {k: v for k, v in want.items() if k != "transitions"}
        got_transitions = [(ev.state, ev.rule.name, ev.long_burn, ev.short_burn) for _, _, ev in transitions]
        assert got_transitions == [t for row in expected for t in row["transitions"]]
        seen_firing |= any(t[0] == "firing" for t in got_transitions)
        seen_resolved |= any(t[0] == "resolved" for t in got_transitions)
    assert seen_firing and seen_resolved  # the scenario exercised both transitions


def test_window_counts_refuse_a_window_they_did_not_count():
    counts = WindowCounts(NOW, {60: (9, 10)})
    assert float(counts.burn_rates(NOW, 60, 0.9)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="not 5 ending at"):
        counts.window(NOW, 5)
    with pytest.raises(ValueError, match="counted the windows \\[60\\] ending at minute"):
        counts.window(NOW + 1, 60)
