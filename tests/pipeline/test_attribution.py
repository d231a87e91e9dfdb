"""Agent identity follows the trace (pipeline/attribution.py), in the store's insert transaction:
children exported before their parent, in other batches, get their nearest ancestor's agent, and
every rollup (cost, SLIs, agent minutes) counts them under that agent exactly once."""

from __future__ import annotations

import time

import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_sre.pipeline.pdata.schema import SPAN_SCHEMA
from agent_sre.pipeline.storage.attribution import AttributionSettings
from agent_sre.pipeline.storage.store import SpanStore, SpoolSettings

T = "0af7651916cd43dd8448eb211c80319c"
NOW_NS = time.time_ns()


def span(span_id: str, parent: str | None, role: str = "other", trace: str = T, **cols) -> dict:
    row = {"trace_id": trace, "span_id": span_id, "parent_span_id": parent or "", "name": span_id,
           "kind": "internal", "start_ns": NOW_NS - 10**9, "end_ns": NOW_NS, "duration_ns": 10**9,
           "status_code": "unset", "span_role": role, "service_name": "agent-svc",
           "attributes": [], "resource_attributes": [], "scope_attributes": []}
    row.update(cols)
    return row


def batch(*rows: dict) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=SPAN_SCHEMA)


def agents(store: SpanStore) -> dict[str, str | None]:
    return dict(store.read("SELECT span_id, agent_id FROM spans"))


def open_store(tmp_path, wait: float = 120.0, spool: bool = False, **kw) -> SpanStore:
    return SpanStore(tmp_path / "s.duckdb", attribution=AttributionSettings(wait=wait, **kw),
                     spool=SpoolSettings(str(tmp_path / "spool"), flush_interval=0.02) if spool else None)


def test_children_exported_before_their_invoke_agent_span_get_its_agent(tmp_path):
    store = open_store(tmp_path)
    llm = span("00000000000000b1", "00000000000000a1", "llm", model="gpt-4o", input_tokens=1000,
               output_tokens=100, cost_usd=0.5)
    tool = span("00000000000000b2", "00000000000000a1", "tool", tool_name="search", status_code="error")
    store.append(batch(llm))
    store.append(batch(tool))
    # Held, not lost: queryable at once, without an agent yet, and charged to nobody.
    assert agents(store) == {"00000000000000b1": None, "00000000000000b2": None}
    assert store.read("SELECT count(*) FROM cost_minutes")[0][0] == 0
    root = span("00000000000000a1", None, "agent_task", agent_id="triage", agent_version="1.2",
                session_id="s-9", task_name="triage-ticket")
    store.append(batch(root))
    assert agents(store) == {"00000000000000a1": "triage", "00000000000000b1": "triage", "00000000000000b2": "triage"}
    assert store.read("SELECT DISTINCT agent_version, session_id, task_name FROM spans") == [("1.2", "s-9", "triage-ticket")]
    assert store.read("SELECT agent_id, cost_usd FROM cost_minutes") == [("triage", 0.5)]
    assert store.read("SELECT agent_id, spans, errors, llm_calls FROM agent_minutes") == [("triage", 3, 1, 1)]
    assert store.read("SELECT count(*) FROM held_spans")[0][0] == 0
    store.close()


def test_a_child_after_its_parent_finds_it_among_committed_spans(tmp_path):
    store = open_store(tmp_path)
    store.append(batch(span("00000000000000a1", None, "agent_task", agent_id="planner")))
    store.append(batch(span("00000000000000b1", "00000000000000a1", "tool")))
    assert agents(store)["00000000000000b1"] == "planner"
    store.close()


def test_the_nearest_ancestor_with_an_agent_wins_in_nested_agents(tmp_path):
    store = open_store(tmp_path)
    store.append(batch(span("00000000000000c1", "00000000000000b1", "tool"),
                       span("00000000000000c2", "00000000000000a2", "llm")))
    store.append(batch(span("00000000000000b1", "00000000000000a2", "agent_task", agent_id="researcher"),
                       span("00000000000000a2", "00000000000000a1", "delegation")))
    store.append(batch(span("00000000000000a1", None, "agent_task", agent_id="orchestrator")))
    assert agents(store) == {"00000000000000a1": "orchestrator", "00000000000000a2": "orchestrator",
                             "00000000000000b1": "researcher", "00000000000000c1": "researcher",
                             "00000000000000c2": "orchestrator"}
    store.close()


def test_a_trace_with_no_agent_anywhere_falls_back_to_the_service_then_is_unattributed(tmp_path):
    store = open_store(tmp_path)
    store.append(batch(span("00000000000000b1", "00000000000000a1", "llm", service_name="billing-bot"),
                       span("00000000000000a1", None, service_name="billing-bot"),
                       span("00000000000000d1", None, trace="1" * 32, service_name="unknown_service:python")))
    assert agents(store) == {"00000000000000a1": "billing-bot", "00000000000000b1": "billing-bot",
                             "00000000000000d1": None}
    assert store.unattributed_spans == 1
    store.close()


def test_a_span_whose_parent_never_comes_is_released_after_the_wait_without_new_traffic(tmp_path):
    store = open_store(tmp_path, wait=0.3, spool=True, service_name_fallback=False)
    store.append(batch(span("00000000000000b1", "00000000000000a1", "llm", cost_usd=0.25)))
    store.sync()
    assert store.read("SELECT count(*) FROM held_spans")[0][0] == 1
    deadline = time.monotonic() + 10
    while store.unattributed_spans == 0 and time.monotonic() < deadline:  # counted after the commit
        time.sleep(0.05)
    assert store.unattributed_spans == 1
    assert store.read("SELECT count(*) FROM held_spans")[0][0] == 0
    store.sync()  # the rollups of what the release stored
    assert store.read("SELECT agent_id, cost_usd FROM cost_minutes") == [("", 0.25)]
    assert agents(store) == {"00000000000000b1": None}
    store.close()


def test_held_spans_survive_a_restart_and_are_counted_once(tmp_path):
    store = open_store(tmp_path, spool=True)
    store.append(batch(span("00000000000000b1", "00000000000000a1", "llm", cost_usd=0.5)))
    store.close()
    store = open_store(tmp_path, spool=True)
    store.append(batch(span("00000000000000a1", None, "agent_task", agent_id="triage", cost_usd=0.25)))
    store.sync()
    assert agents(store) == {"00000000000000a1": "triage", "00000000000000b1": "triage"}
    assert store.read("SELECT agent_id, sum(cost_usd), sum(spans) FROM cost_minutes GROUP BY ALL") == [
        ("triage", 0.75, 2)]
    store.close()


@st.composite
def trees(draw):
    """A random span tree where some spans carry an agent, and a random order of arrival split into
    batches; returns (spans, batches, expected agent per span)."""
    n = draw(st.integers(1, 14))
    parents = [None] + [draw(st.integers(0, i - 1)) for i in range(1, n)]
    own = [draw(st.sampled_from([None, None, "a", "b"])) for _ in range(n)]
    order = draw(st.permutations(range(n)))
    cuts = sorted(draw(st.sets(st.integers(1, max(n - 1, 1)), max_size=4)))
    expected = []
    for i in range(n):
        j = i
        while j is not None and own[j] is None:
            j = parents[j]
        expected.append(own[j] if j is not None else None)
    rows = [span(f"{i + 1:016x}", f"{parents[i] + 1:016x}" if parents[i] is not None else None,
                 agent_id=own[i], service_name="unknown_service") for i in range(n)]
    bounds = [0, *[c for c in cuts if c < n], n]
    batches = [[rows[k] for k in order[a:b]] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
    return batches, {f"{i + 1:016x}": expected[i] for i in range(n)}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(trees())
def test_any_arrival_order_gives_every_span_its_nearest_ancestors_agent(tmp_path_factory, tree):
    batches, expected = tree
    store = open_store(tmp_path_factory.mktemp("attr"))
    for rows in batches:
        store.append(batch(*rows))
    assert agents(store) == expected
    # Each span counted once in the per-agent rollup, under its resolved agent.
    counts = dict(store.read("SELECT agent_id, sum(spans) FROM agent_minutes GROUP BY ALL"))
    want: dict[str, int] = {}
    for agent in expected.values():
        want[agent or ""] = want.get(agent or "", 0) + 1
    assert counts == want
    store.close()


def test_commit_callbacks_get_the_released_spans_with_their_agent(tmp_path):
    store = open_store(tmp_path)
    seen: list[pa.Table] = []
    store.on_commit(seen.append)
    store.append(batch(span("00000000000000b1", "00000000000000a1", "tool", status_code="error")))
    store.append(batch(span("00000000000000a1", None, "agent_task", agent_id="triage")))
    assert [t.num_rows for t in seen] == [0, 2]
    assert sorted(zip(seen[1].column("span_id").to_pylist(), seen[1].column("agent_id").to_pylist(), strict=True)) == [
        ("00000000000000a1", "triage"), ("00000000000000b1", "triage")]
    store.close()


def test_an_agent_named_only_on_its_own_span_is_identified_by_name_and_children_keep_its_id(tmp_path):
    """`gen_ai.agent.name` identifies an `invoke_agent` span that has no id; on a child it does not
    split an agent that has an id (the child takes its ancestor's id)."""
    from agent_sre.pipeline.pdata.normalize import load_conventions, normalize

    def attrs(**kv):
        return [(k.replace("__", "."), v) for k, v in kv.items()]

    named = span("00000000000000a1", None, attributes=attrs(gen_ai__operation__name="invoke_agent",
                                                            gen_ai__agent__name="Planner"))
    with_id = span("00000000000000b1", None, trace="2" * 32, attributes=attrs(
        gen_ai__operation__name="invoke_agent", gen_ai__agent__id="asst_1", gen_ai__agent__name="Triage"))
    child = span("00000000000000b2", "00000000000000b1", trace="2" * 32, attributes=attrs(
        gen_ai__operation__name="chat", gen_ai__agent__name="Triage"))
    store = open_store(tmp_path)
    store.append(normalize(batch(child), load_conventions()))
    store.append(normalize(batch(named, with_id), load_conventions()))
    assert agents(store) == {"00000000000000a1": "Planner", "00000000000000b1": "asst_1",
                             "00000000000000b2": "asst_1"}
    store.close()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(trees(), trees(), st.randoms(use_true_random=False))
def test_held_spans_of_a_trace_that_gets_nothing_new_stay_held_and_resolve_when_it_does(
        tmp_path_factory, first, second, rnd):
    """Two traces whose batches interleave: a held span is re-examined only when its own trace gets
    spans (or its wait ends), and still ends with its nearest ancestor's agent."""
    (b1, e1), (b2, e2) = first, second
    other = "f" * 32
    b2 = [[{**r, "trace_id": other} for r in rows] for rows in b2]
    merged = b1 + b2
    rnd.shuffle(merged)
    store = open_store(tmp_path_factory.mktemp("attr2"))
    for rows in merged:
        store.append(batch(*rows))
    got = dict(((t, s), a) for t, s, a in store.read("SELECT trace_id, span_id, agent_id FROM spans"))
    assert got == {**{(T, k): v for k, v in e1.items()}, **{(other, k): v for k, v in e2.items()}}
    store.close()


def test_spans_released_because_too_many_are_held_keep_their_receipt_and_survive_retention(tmp_path):
    """Beyond max_held_spans the oldest held spans are released at once, stored with the time of the insert
    that releases them (never 1970), so retention (by that time) keeps them as long as any other span."""
    store = open_store(tmp_path, max_held_spans=2)
    orphans = [span(f"00000000000000c{i}", "00000000000000ff", "tool", trace=f"{i:032x}") for i in range(1, 5)]
    before = time.time_ns()
    store.append(batch(*orphans))  # four wait for a parent that never comes; two are too many
    store.append(batch(span("00000000000000d1", None, "agent_task", trace="e" * 32, agent_id="other")))
    assert store.read("SELECT count(*) FROM held_spans")[0][0] == 2
    released = store.read("SELECT received_ns FROM span_rows WHERE span_id LIKE '00000000000000c%'")
    assert len(released) == 2 and all(received >= before for (received,) in released)
    assert store.delete_older_than(7) == 0  # nothing is a week old
    assert store.read("SELECT count(*) FROM spans WHERE span_id LIKE '00000000000000c%'")[0][0] == 4


def test_a_delegation_without_a_delegator_is_its_inherited_agents(tmp_path):
    """A handoff recorded as a tool call names its target only (Semantic Kernel, LlamaIndex): it was sent
    by the agent it belongs to through the trace; a delegator the span names is kept."""
    store = open_store(tmp_path)
    store.append(batch(span("00000000000000b1", "00000000000000a1", "delegation", delegation_to="NetworkAgent"),
                       span("00000000000000b2", "00000000000000a1", "delegation", delegation_to="X",
                            delegation_from="given")))
    store.append(batch(span("00000000000000a1", None, "agent_task", agent_id="triage-agent")))
    assert store.read("SELECT span_id, delegation_from FROM spans ORDER BY span_id") == [
        ("00000000000000a1", None), ("00000000000000b1", "triage-agent"), ("00000000000000b2", "given")]
    store.close()
