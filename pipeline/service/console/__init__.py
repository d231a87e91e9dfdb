"""console: the web console on the admin API's listener (issue 17), read-only.

    GET /ui                 fleet overview: every agent's SLO status, budget bars (throttle and kill marks),
                            breaker, decision, open incidents, spans/s and error-rate sparklines; ?sort=&q=
    GET /ui/slo[?agent=&slo=]   SLOs; one: SLI, error budget, burn rate per window against its thresholds,
                            firing history
    GET /ui/costs[?days=]   spend per day (anomalies marked), agent, model and tenant; budgets; top tasks
    GET /ui/incidents[/{id}]    incidents; one: timeline, the CLI commands that move it on, its postmortem
    GET /ui/traces[/{id}]   trace search; one trace (its delegation chain included) as a waterfall
    GET /ui/sql[.csv]?q=    the read-only SQL of POST /v1/query (its sandbox), as a table or CSV

Server-rendered HTML and inline SVG; one stylesheet and a few lines of script, served here.
"""

from __future__ import annotations

from agent_sre.pipeline.component import Factory, Kind
from agent_sre.pipeline.service.console.config import ConsoleConfig
from agent_sre.pipeline.service.console.extension import Console

factory = Factory(type="console", kind=Kind.EXTENSION, config_model=ConsoleConfig, create=Console, signals=(),
                  description="The web console (/ui): fleet, SLOs, costs, incidents, traces and SQL, read-only.")

__all__ = ["Console", "ConsoleConfig", "factory"]
