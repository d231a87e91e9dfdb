"""The SLOs of every pipeline writing to the fleet store (pipeline/storage/fleet.py): the same
``evaluate`` over the SLI events per minute ClickHouse counts with these SLI definitions.  Asked by
``agent-sre slo status --store`` and the admin API's ``GET /v1/slos?store=fleet``."""

from __future__ import annotations

from collections.abc import Iterable

from agent_sre.pipeline.storage.fleet import FleetStore, fleet_sli_minutes
from agent_sre.pipeline.storage.rollups import SliRollup
from agent_sre.processors.slo.factory import Objective, evaluate


def fleet_slos(source: str | FleetStore, objectives: list[Objective], slis: Iterable[SliRollup],
               now_minute: int) -> tuple[list[dict], dict[str, str]]:
    """(the rows ``GET /v1/slos`` answers, {SLI left out: why}) over the fleet at ``now_minute``."""
    slis = list(slis)
    lookback: dict[str, int] = {}
    for o in objectives:  # the longest window each SLI is read over (the objective's or a rule's)
        longest = max([int(o.window // 60), *(r.long_minutes for r in o.burn_rules)])
        lookback[o.sli] = max(lookback.get(o.sli, 0), longest)
    con, skipped = fleet_sli_minutes(source, slis, lookback, now_minute)
    skipped.update({name: "the config defines no such SLI" for name in sorted(set(lookback) - {x.name for x in slis})})
    try:
        rows = evaluate(lambda sql, params: con.execute(sql, params).fetchall(),
                        [o for o in objectives if o.sli not in skipped], now_minute)
    finally:
        con.close()
    return rows, skipped
