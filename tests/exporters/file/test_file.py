"""file: OTLP/JSON lines that decode back to the spans, rotated by size with a bounded number of backups."""

from __future__ import annotations

import time

from agent_sre.pipeline.pdata.otlp_arrow import request_to_table
from agent_sre.pipeline.pdata.otlp_json import decode_trace_request
from agent_sre.pipeline.service import Service
from agent_sre.pipeline.service.config import parse_config
from tests.conftest import Ports, pipeline_yaml
from tests.otlp_builders import request


def test_lines_decode_to_the_spans_and_the_file_rotates(tmp_path):
    path = tmp_path / "out" / "traces.jsonl"
    extra = (f"  file:\n    path: {path}\n    rotation: {{max_megabytes: 0.01, max_backups: 2}}\n"
             "    sending_queue: {num_consumers: 1}\n")
    service = Service(parse_config(pipeline_yaml(Ports.allocate(), tmp_path, exporters="duckdb, file", extra=extra),
                                   "test"))
    service.start()
    sent = []
    try:
        for _ in range(12):
            req = request(20, attrs={"agent.did": "a1", "gen_ai.usage.input_tokens": 7}, start_ns=time.time_ns())
            sent += [sp.span_id.hex() for sp in req.resource_spans[0].scope_spans[0].spans]
            service.receivers[0].ingest.export(req, "test")
    finally:
        service.shutdown()  # drains the queue into the file
    files = sorted(path.parent.glob("traces*.jsonl"))
    assert len(files) == 3  # the current file and two backups: older ones deleted
    assert all(f.stat().st_size <= 0.01 * 2**20 for f in files)
    lines = [line for f in files for line in f.read_bytes().splitlines()]
    rows = [r for line in lines for r in request_to_table(decode_trace_request(line)).table.to_pylist()]
    assert {r["span_id"] for r in rows} <= set(sent) and len(rows) == len({r["span_id"] for r in rows})
    assert rows[-1]["span_id"] == sent[-1]  # the newest span is in the current file
    assert dict(rows[0]["attributes"])["gen_ai.usage.input_tokens"] == "7"
