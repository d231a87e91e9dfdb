"""Redaction benchmark: what the redaction processor costs on the receiver's path.

Requests of 512 agent spans (bench/agent_spans.py: ~12 attributes each) are converted to Arrow as the
receivers do (protobuf_to_table) and normalised (agent_semconv), without and with a redaction
processor in front of the normalisation, in one process, one thread; then the processor alone.  A
share of the spans (--dirty, default 5 %) carries an email, an API key and a password, so the
patterns have something to redact.

    .venv/bin/python bench/redaction.py [--requests 200] [--dirty 0.05]
"""

from __future__ import annotations

import argparse
import random
import time

import pyarrow as pa

from agent_sre.pipeline.component import ComponentID, Kind, Settings
from agent_sre.pipeline.component.telemetry import Telemetry
from agent_sre.pipeline.pdata.normalize import load_conventions, normalize
from agent_sre.pipeline.pdata.otlp_arrow import protobuf_to_table
from agent_sre.processors.redaction.config import RedactionConfig
from agent_sre.processors.redaction.factory import factory
from bench.agent_spans import _kv, make_request

SETUPS = {
    "secrets": {"presets": ["secrets"]},
    "secrets, pii (default)": {},
    "secrets, pii, genai-content": {"presets": ["secrets", "pii", "genai-content"]},
    "secrets, pii, hash": {"action": "hash", "hash_key": "bench-hmac-key-0123456789"},
}


def bodies(n: int, dirty: float) -> list[bytes]:
    rnd = random.Random(1)
    out = []
    for seed in range(n):
        req = make_request(512, seed=seed)
        for span in req.resource_spans[0].scope_spans[0].spans:
            span.attributes.append(_kv("gen_ai.prompt", "Summarise ticket 4411 for the customer, in two lines"))
            if rnd.random() < dirty:
                span.attributes.extend([_kv("enduser.email", f"user{rnd.randint(0, 999)}@example.com"),
                                        _kv("http.request.header.authorization", "Bearer abcdefgh12345678"),
                                        _kv("note", "retry with sk-proj-ABCDEFGHIJKLMNOPQRSTUVWX012345")])
        out.append(req.SerializeToString())
    return out


def rate(fn, items: list) -> float:
    start = time.perf_counter()
    spans = sum(fn(item) for item in items)
    return spans / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--dirty", type=float, default=0.05)
    args = ap.parse_args()
    data = bodies(args.requests, args.dirty)
    conventions = load_conventions()
    tables = [protobuf_to_table(b).table for b in data]

    def plain(body: bytes) -> int:
        return normalize(protobuf_to_table(body).table, conventions).num_rows

    base = rate(plain, data)
    print(f"{'setup':<32}{'convert+normalise spans/s':>28}{'vs without':>12}{'processor alone spans/s':>26}")
    print(f"{'without redaction':<32}{base:>28,.0f}{'—':>12}{'—':>26}")
    for name, settings in SETUPS.items():
        proc = factory.create(Settings(ComponentID("redaction"), Kind.PROCESSOR, Telemetry()),
                              RedactionConfig.model_validate(settings))

        def redacted(body: bytes, proc=proc) -> int:
            return normalize(proc.process(protobuf_to_table(body).table), conventions).num_rows

        def alone(table: pa.Table, proc=proc) -> int:
            return proc.process(table).num_rows

        with_it = rate(redacted, data)
        print(f"{name:<32}{with_it:>28,.0f}{(with_it / base - 1) * 100:>+11.1f}%{rate(alone, tables):>26,.0f}")


if __name__ == "__main__":
    main()
