"""Prometheus recording and alerting rules for the SLOs (the Sloth/Pyrra pattern).

Many sidecars export the same SLI counters (``agent_sre_sli_events_total`` and
``agent_sre_sli_good_events_total``, by sli, agent_id, agent_version); these
rules let Prometheus compute each objective's error ratio and burn rate over
every window its alert rules use, summed over all sidecars, and alert with the
same multiwindow rules the ``slo`` processor applies locally:

    agent_sre:sli_error_ratio:<window>   bad / total events over the window, per agent
    agent_sre:slo_burn_rate:<window>     that ratio / (1 - target)
    alert AgentSloBurnRate               long and short window burn >= factor, per rule
"""

from __future__ import annotations

import yaml

from agent_sre.processors.slo.alerts import BurnRateRule
from agent_sre.processors.slo.budget import allowed_error_rate, window_label


def _q(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def objective_rules(name: str, sli: str, target: float, rules: tuple[BurnRateRule, ...],
                    per_version: bool = False) -> dict:
    """One Prometheus rule group for one objective."""
    by = "agent_id, agent_version" if per_version else "agent_id"
    allowed = allowed_error_rate(target)
    windows = sorted({m for r in rules for m in (r.long_minutes, r.short_minutes)})
    sel = f"sli={_q(sli)}"
    out: list[dict] = []
    for m in windows:
        w = window_label(m)
        total = f"sum by ({by}) (increase(agent_sre_sli_events_total{{{sel}}}[{w}]))"
        good = f"sum by ({by}) (increase(agent_sre_sli_good_events_total{{{sel}}}[{w}]))"
        out.append({"record": f"agent_sre:sli_error_ratio:{w}", "expr": f"({total} - {good}) / {total}",
                    "labels": {"slo": name, "sli": sli}})
        out.append({"record": f"agent_sre:slo_burn_rate:{w}",
                    "expr": f"agent_sre:sli_error_ratio:{w}{{slo={_q(name)}}} / {allowed!r}",
                    "labels": {"slo": name, "sli": sli}})
    for r in rules:
        long, short = window_label(r.long_minutes), window_label(r.short_minutes)
        out.append({
            "alert": "AgentSloBurnRate",
            "expr": (f"agent_sre:slo_burn_rate:{long}{{slo={_q(name)}}} >= {r.factor!r} and "
                     f"agent_sre:slo_burn_rate:{short}{{slo={_q(name)}}} >= {r.factor!r}"),
            "labels": {"severity": r.severity, "slo": name, "rule": r.name},
            "annotations": {"summary": f"SLO {name} of agent {{{{ $labels.agent_id }}}} burns its error budget "
                                       f"at >= {r.factor:g}x over {long} and {short}"},
        })
    return {"name": f"agent-sre-slo-{name}", "rules": out}


def rules_document(objectives) -> str:
    """The rules file for ``objectives`` (slo processor Objective configs), as YAML."""
    groups = [objective_rules(o.name, o.sli, o.target, o.burn_rules, o.per_version) for o in objectives]
    return yaml.safe_dump({"groups": groups}, sort_keys=False, width=200)
