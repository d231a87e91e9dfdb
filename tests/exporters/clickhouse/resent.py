"""One client's request re-sent after lost OKs (issue #16), as rows the fleet store gets: 20 priced LLM
spans (0.25 USD each, every tenth an error) and 10 tool calls (2 failed), all of agent ``a`` and ending in
the minute given, and the three batches that carry it -- alone (pipeline p0), with another client's spans
(p1), with yet another's (p0 after its restart): three batch ids, so no batch check drops a copy."""

from __future__ import annotations

import pyarrow as pa

from agent_sre.pipeline.pdata.schema import SPAN_SCHEMA

COST = 20 * 0.25  # the request's
OTHER_COST = 4 * 0.5  # the other clients' spans in the second batch
SPANS = 30  # the request's
OTHER_SPANS = 4 + 1


def priced(i: int, end_ns: int, cost: float = 0.25) -> dict:
    return {"trace_id": f"{i // 10:032x}", "span_id": f"{i:016x}", "agent_id": "a", "span_role": "llm", "model": "m",
            "start_ns": end_ns - 10**9, "end_ns": end_ns, "duration_ns": 10**9, "cost_usd": cost,
            "status_code": "error" if i % 10 == 0 else "ok"}


def tool_call(agent: str, i: int, end_ns: int, failed: bool, replay: bool = False) -> dict:
    return {"trace_id": f"{i:032x}", "span_id": f"{i:016x}", "agent_id": agent, "span_role": "tool",
            "start_ns": end_ns - 10**9, "end_ns": end_ns, "duration_ns": 10**9, "status_code": "error" if failed
            else "ok", "attributes": [("agent_sre.replay.of", "t")] if replay else [("gen_ai.tool.name", "x")]}


def three_batches(end_ns: int) -> list[list[dict]]:
    """The batches (rows) in the order the fleet store gets them."""
    resent = [priced(i, end_ns + i) for i in range(20)]
    resent += [tool_call("a", 100 + i, end_ns + i, failed=i < 2) for i in range(10)]
    return [resent, [priced(1000 + i, end_ns, 0.5) for i in range(4)] + resent,
            resent + [tool_call("a", 2000, end_ns, failed=False)]]


def table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SPAN_SCHEMA)
