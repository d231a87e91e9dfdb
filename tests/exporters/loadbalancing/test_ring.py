"""The ring: the same hash in every process, keys spread evenly, a backend leaving moves only its keys,
and a batch split column-wise keeps every row and every trace on one backend."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest

from agent_sre.exporters.loadbalancing.config import LoadBalancingConfig
from agent_sre.exporters.loadbalancing.resolver import Resolver
from agent_sre.exporters.loadbalancing.ring import Ring, hash_strings, routing_keys
from agent_sre.pipeline.pdata.schema import SPAN_SCHEMA

GATEWAYS = ["gw-0:4317", "gw-1:4317", "gw-2:4317"]


def _reference_hash(text: str) -> int:
    """FNV-1a 32 then murmur3 fmix32, one byte at a time, as another process would compute it."""
    h = 2166136261
    for b in text.encode():
        h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    for shift, mult in ((16, 0x85EBCA6B), (13, 0xC2B2AE35)):
        h = ((h ^ (h >> shift)) * mult) & 0xFFFFFFFF
    return h ^ (h >> 16)


@pytest.mark.parametrize("values", [
    pa.array(["", "", ""]),  # fixed length 0
    pa.array(["ab", "cd", None]),  # fixed length, a null
    pa.array(["x"] * 10 + ["yy"]),  # few distinct values: hashed through the dictionary
    pa.array(["abc", "de", "fgh", "ij"]).slice(1, 3),  # an offset into the buffers
    pa.chunked_array([["aa", "bb"], ["cc"]]),
], ids=["empty", "fixed", "dictionary", "sliced", "chunked"])
def test_every_path_of_the_column_hash_gives_the_reference(values):
    assert hash_strings(values).tolist() == [_reference_hash(v or "") for v in values.to_pylist()]


def _trace_ids(n: int) -> list[str]:
    return [os.urandom(16).hex() for _ in range(n)]


def test_the_column_hash_equals_the_byte_by_byte_reference_for_any_length_and_nulls():
    values = ["", "a", "did:web:planner", "0af7651916cd43dd8448eb211c80319c", "é-ü", None]
    got = hash_strings(pa.array(values)).tolist()
    assert got == [_reference_hash(v or "") for v in values]
    assert _reference_hash("gw-1:4317#7") == 1718146624  # pinned: every sidecar of a fleet must agree


def test_keys_spread_evenly_over_the_backends():
    ring = Ring(GATEWAYS, 128)
    owners = ring.owners(hash_strings(pa.array(_trace_ids(30_000))))
    shares = np.bincount(owners, minlength=3) / 30_000
    assert np.all(np.abs(shares - 1 / 3) < 0.06), shares


def test_a_backend_leaving_moves_only_its_own_keys_to_the_others():
    keys = pa.array(_trace_ids(20_000))
    full, without = Ring(GATEWAYS, 128), Ring(["gw-0:4317", "gw-2:4317"], 128)
    before = np.array(full.endpoints)[full.owners(hash_strings(keys))]
    after = np.array(without.endpoints)[without.owners(hash_strings(keys))]
    stayed = before != "gw-1:4317"
    assert np.array_equal(before[stayed], after[stayed])  # nobody else's key moved
    assert set(after[~stayed]) == {"gw-0:4317", "gw-2:4317"}  # gw-1's keys spread over the rest


def test_the_ring_does_not_depend_on_the_order_the_backends_are_listed_in():
    keys = hash_strings(pa.array(_trace_ids(1000)))
    a, b = Ring(GATEWAYS, 64), Ring(list(reversed(GATEWAYS)), 64)
    assert np.array_equal(np.array(a.endpoints)[a.owners(keys)], np.array(b.endpoints)[b.owners(keys)])


def _batch(trace_ids: list[str], agents: list[str | None]) -> pa.Table:
    n = len(trace_ids)
    cols = {f.name: pa.nulls(n, f.type) for f in SPAN_SCHEMA}
    cols["trace_id"] = pa.array(trace_ids, pa.string())
    cols["span_id"] = pa.array([os.urandom(8).hex() for _ in range(n)], pa.string())
    cols["agent_id"] = pa.array(agents, pa.string())
    cols["attributes"] = pa.array([[("tenant.id", f"t{i % 2}")] for i in range(n)], SPAN_SCHEMA.field("attributes").type)
    return pa.table(cols, schema=SPAN_SCHEMA)


def test_a_split_keeps_every_row_and_puts_each_trace_on_one_backend():
    traces = _trace_ids(200)
    batch = _batch([t for t in traces for _ in range(5)], ["a"] * 1000)
    pieces = Ring(GATEWAYS, 128).split(batch, routing_keys(batch, "traceID", []))
    assert sum(p.num_rows for _, p in pieces) == 1000
    where: dict[str, set[str]] = {}
    for endpoint, piece in pieces:
        for t in piece.column("trace_id").to_pylist():
            where.setdefault(t, set()).add(endpoint)
    assert len(where) == 200 and all(len(e) == 1 for e in where.values())


def test_routing_by_agent_id_keeps_an_agent_together_and_falls_back_to_the_trace_without_one():
    traces = _trace_ids(300)
    batch = _batch(traces, ["planner"] * 150 + [None] * 150)
    keys = routing_keys(batch, "attributes", ["agent_id"])
    assert keys.to_pylist() == ["planner"] * 150 + traces[150:]
    pieces = Ring(GATEWAYS, 128).split(batch, keys)
    holders = [e for e, p in pieces if "planner" in p.column("agent_id").to_pylist()]
    assert len(holders) == 1
    by_attribute = routing_keys(batch, "attributes", ["tenant.id", "agent_id"])
    assert by_attribute.to_pylist()[:2] == ["t0\x1fplanner", "t1\x1fplanner"]


@pytest.mark.parametrize("body, message", [
    ({}, "resolver\n  Field required"),
    ({"resolver": {"static": {"hostnames": ["a:1"]}, "dns": {"hostname": "x"}}}, "exactly one resolver"),
    ({"resolver": {"static": {"hostnames": ["a:1"]}}, "routing_key": "traceid"}, "'traceID', 'service' or"),
    ({"resolver": {"static": {"hostnames": ["a:1"]}}, "protocol": {"otlp": {"timout": "1s"}}},
     "protocol::otlp: timout: Extra inputs are not permitted"),
    ({"resolver": {"static": {"hostnames": ["a:1"]}}, "protocol": {"otlp": {"endpoint": "b:1"}}},
     "the endpoint comes from the resolver"),
])
def test_bad_settings_are_refused_with_what_is_wrong(body, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        LoadBalancingConfig.model_validate(body)


def test_the_dns_resolver_returns_every_address_with_the_port():
    cfg = LoadBalancingConfig.model_validate({"resolver": {"dns": {"hostname": "localhost", "port": 4317}}})
    resolver = Resolver(cfg.resolver, http=False)
    try:
        assert "127.0.0.1:4317" in resolver.resolve()
    finally:
        resolver.close()
    http = Resolver(cfg.resolver, http=True)
    try:
        assert "http://127.0.0.1:4317" in http.resolve()
    finally:
        http.close()
