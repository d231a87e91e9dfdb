"""Budget charging: CPU per charge of the cost processor's ledger, the default budgets ($2 per task,
$100 per agent-day, $5000 per org-month), 1,000 per-task charges and 10 per-agent charges per commit
(a 16k-span commit of traces of 16 spans), 30 commits.  Thread CPU time, so other load on the box
changes the figure little.  Side by side: a commit's task charges in one call (``charge_tasks``, what
the cost processor does), one ``charge`` call per task, and one call per task assessing the agent
around every charge.

    .venv/bin/python bench/budget_charges.py
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent_sre.processors.cost.budget import BudgetLedger  # noqa: E402
from agent_sre.processors.cost.factory import BudgetConfig  # noqa: E402

SPECS = [BudgetConfig(name="per-task", scope="task", limit_usd=2).spec(),
         BudgetConfig(name="agent-daily", scope="agent_day", limit_usd=100).spec(),
         BudgetConfig(name="org-monthly", scope="org_month", limit_usd=5000).spec()]


def run(commits: int = 30, tasks: int = 1000, agents: int = 10, bulk: bool = False) -> tuple[float, int]:
    """(µs of CPU per charge, events announced)."""
    ledger, rnd, now = BudgetLedger(SPECS), random.Random(1), time.time()
    minute = int(now // 60) * 60.0
    plan = [[(f"agent-{i % agents}", f"{c:08x}{i:024x}", rnd.random() * 0.05, 5) for i in range(tasks)]
            for c in range(commits)]  # what the commits charge, made before the clock starts
    started, charges, events = time.thread_time(), 0, 0
    for charged in plan:
        if bulk:
            events += len(ledger.charge_tasks(charged, now))
        else:
            for agent, task, usd, calls in charged:
                events += len(ledger.charge(agent, usd, now, task=task, calls=calls, at=minute, only="task"))
        for a in range(agents):
            events += len(ledger.charge(f"agent-{a}", 1.0, now, model="gpt-4o-mini", calls=500, at=minute,
                                        only="period"))
        charges += tasks + agents
    return (time.thread_time() - started) / charges * 1e6, events


def main() -> None:
    """The ledger as it is, and side by side the same ledger assessing the agent around every charge
    (what it did before a charge that crosses no throttle or kill line skipped that)."""
    bulk = min(run(bulk=True)[0] for _ in range(3))
    best = min(run()[0] for _ in range(3))
    crosses = BudgetLedger._crosses
    BudgetLedger._crosses = lambda self, *args: True  # type: ignore[method-assign]
    try:
        always = min(run()[0] for _ in range(3))
    finally:
        BudgetLedger._crosses = crosses  # type: ignore[method-assign]
    print(f"budget ledger, CPU per charge (best of 3; 30 commits of 1,000 task and 10 agent charges, the default "
          f"budgets): a commit's task charges in one call {bulk:.1f} us; one call per charge {best:.1f} us; "
          f"assessing around every charge: {always:.1f} us")


if __name__ == "__main__":
    main()
