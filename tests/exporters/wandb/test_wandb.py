"""wandb in offline mode (no account needed): a run per agent and version for the period, the
interval's metrics logged one step per flush; read back from the run file W&B wrote (its LevelDB-
style record log of wandb_internal_pb2.Record messages) once wandb-core has closed it."""

from __future__ import annotations

import json
import struct
import time

import wandb
from wandb.proto import wandb_internal_pb2 as pb

from agent_sre.pipeline.service import Service
from agent_sre.pipeline.service.config import parse_config
from tests.conftest import Ports, pipeline_yaml
from tests.otlp_builders import request


def records(path) -> list:
    """The Records of a .wandb file: a 7-byte W&B header, then 32 KiB blocks of LevelDB log records."""
    data, pos, block, pending, out = path.read_bytes(), 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += block - pos % block
            continue
        payload, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            out.append(pending + payload)
            pending = b""
        else:
            pending += payload
    parsed = []
    for raw in out:
        r = pb.Record()
        r.ParseFromString(raw)
        parsed.append(r)
    return parsed


def test_offline_runs_get_the_interval_metrics_per_agent(tmp_path):
    wandb_dir = tmp_path / "wandb"
    extra = f"  wandb:\n    dir: {wandb_dir}\n    project: agents\n    interval: 1h\n    sending_queue: {{num_consumers: 1}}\n"
    text = pipeline_yaml(Ports.allocate(), tmp_path, processors="memory_limiter, agent_semconv, cost, batch",
                         exporters="duckdb, wandb", extra=extra)
    service = Service(parse_config(text.replace("  batch:\n", "  cost: {}\n  batch:\n", 1), "test"))
    service.start()
    (exporter,) = [e for e in service.exporters.values() if e.id.type == "wandb"]
    now = time.time()
    exporter.clock = lambda: now  # both flushes in one period (one run) even across UTC midnight
    try:
        llm = {"agent.did": "writer", "agent.version": "2.0", "gen_ai.operation.name": "chat",
               "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 500, "gen_ai.usage.output_tokens": 50}
        ingest = service.receivers[0].ingest
        ingest.export(request(4, attrs=llm, start_ns=time.time_ns()), "test")
        assert exporter.flush() > 0
        ingest.export(request(1, attrs=llm, start_ns=time.time_ns()), "test")
        assert exporter.flush() > 0
    finally:
        service.shutdown()  # drains the queue and finishes the runs
        # run.finish() only *tells* wandb-core the run is over (a ServerInformFinishRequest published,
        # not awaited); wandb-core closes the run's .wandb file afterwards, and its writer holds the
        # current 32 KiB block in memory until then: read now, the file may still be its 7-byte
        # header. teardown() waits for wandb-core to close every run's file and exit.
        wandb.teardown()
    (run_file,) = wandb_dir.glob("wandb/offline-run-*/run-*.wandb")
    recs = records(run_file)
    (run,) = [r.run for r in recs if r.WhichOneof("record_type") == "run"]
    assert run.project == "agents" and run.display_name.startswith("writer@2.0 ")
    history = [{"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
               for r in recs if r.WhichOneof("record_type") == "history"]
    assert [(h["_step"], h["spans"], h["llm_calls"], h["input_tokens"]) for h in history] == [
        (1, 4, 4, 2000), (2, 1, 1, 500)]
    assert history[0]["cost_usd"] > 0
