"""langfuse: spans to Langfuse's OTLP endpoint, mapped so that LLM spans show as generations.

``POST {host}/api/public/otel/v1/traces`` (OTLP/HTTP protobuf) with ``Authorization: Basic
base64(public_key:secret_key)`` and ``x-langfuse-ingestion-version: 4``, as Langfuse documents
(langfuse.com/integrations/native/opentelemetry).  Before sending, each span gets the attributes
Langfuse reads (column-wise; a key the client already sent is left alone):

    langfuse.observation.type           generation (llm) | tool | agent (agent_task) | guardrail
                                        (policy_check) | retriever (retrieval) | span
    langfuse.observation.model.name     the canonical model
    langfuse.observation.usage_details  {"input": n, "output": n, "total": n[, "input_cached": n]}
    langfuse.observation.cost_details   {"total": cost_usd}     (the client's or the cost processor's)
    langfuse.observation.level          ERROR for spans with status error
    langfuse.session.id, langfuse.trace.name (task spans: the task name), langfuse.environment
"""

from __future__ import annotations

import base64

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import model_validator

from agent_sre.exporters.otlphttp.factory import OtlpHttpConfig, OtlpHttpExporter
from agent_sre.pipeline.component import ExportResult, Factory, Kind
from agent_sre.pipeline.pdata.arrow_otlp import with_attributes

OBSERVATION_TYPES = {"llm": "generation", "tool": "tool", "agent_task": "agent", "policy_check": "guardrail",
                     "retrieval": "retriever", "delegation": "agent", "other": "span"}


class LangfuseConfig(OtlpHttpConfig):
    host: str = "https://cloud.langfuse.com"  # or https://us.cloud.langfuse.com, or self-hosted (>= 3.22)
    public_key: str
    secret_key: str
    environment: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _langfuse(cls, data: dict) -> dict:
        if not isinstance(data, dict) or not data.get("public_key") or not data.get("secret_key"):
            return data  # the missing key is reported by the field itself
        data = dict(data)
        token = base64.b64encode(f"{data['public_key']}:{data['secret_key']}".encode()).decode()
        data.setdefault("endpoint", str(data.get("host", "https://cloud.langfuse.com")).rstrip("/") + "/api/public/otel")
        data["headers"] = {"Authorization": f"Basic {token}", "x-langfuse-ingestion-version": "4",
                           **data.get("headers", {})}
        return data


def _json_number(col: pa.Array) -> pa.Array:
    return pc.cast(pc.fill_null(col, 0), pa.string())


def langfuse_attributes(batch: pa.Table, environment: str | None = None) -> pa.Table:
    role = batch.column("span_role").combine_chunks()
    n = batch.num_rows
    types = pc.take(pa.array(list(OBSERVATION_TYPES.values())),
                    pc.fill_null(pc.index_in(role, pa.array(list(OBSERVATION_TYPES))), len(OBSERVATION_TYPES) - 1))
    llm = pc.fill_null(pc.equal(role, "llm"), False)
    inp, out, cached = (batch.column(c).combine_chunks() for c in ("input_tokens", "output_tokens", "cached_tokens"))
    total = pc.add(pc.fill_null(inp, 0), pc.fill_null(out, 0))
    cached_part = pc.if_else(pc.is_valid(cached), pc.binary_join_element_wise(',"input_cached":',
                                                                               _json_number(cached), ""), "")
    usage = pc.binary_join_element_wise('{"input":', _json_number(inp), ',"output":', _json_number(out),
                                        ',"total":', pc.cast(total, pa.string()), cached_part, "}", "")
    has_usage = pc.and_(llm, pc.or_(pc.is_valid(inp), pc.is_valid(out)))
    cost = batch.column("cost_usd").combine_chunks()
    task = pc.fill_null(pc.equal(role, "agent_task"), False)
    extra = {
        "langfuse.observation.type": types,
        "langfuse.observation.model.name": pc.if_else(llm, batch.column("model").combine_chunks(), None),
        "langfuse.observation.usage_details": pc.if_else(has_usage, usage, None),
        "langfuse.observation.cost_details": pc.if_else(
            pc.is_valid(cost), pc.binary_join_element_wise('{"total":', pc.cast(cost, pa.string()), "}", ""), None),
        "langfuse.observation.level": pc.if_else(pc.equal(batch.column("status_code").combine_chunks(), "error"),
                                                 "ERROR", None),
        "langfuse.session.id": batch.column("session_id").combine_chunks(),
        "langfuse.trace.name": pc.if_else(task, pc.coalesce(batch.column("task_name").combine_chunks(),
                                                            batch.column("name").combine_chunks()), None),
    }
    if environment:
        extra["langfuse.environment"] = pa.array([environment] * n, pa.string())
    return with_attributes(batch, extra)


class LangfuseExporter(OtlpHttpExporter):
    config: LangfuseConfig

    def send(self, batch: pa.Table) -> ExportResult:
        return super().send(langfuse_attributes(batch, self.config.environment))

    def describe(self) -> list[str]:
        return [f"{self.id}: Langfuse at {self.config.host} (OTLP/HTTP)"]


factory = Factory(type="langfuse", kind=Kind.EXPORTER, config_model=LangfuseConfig, create=LangfuseExporter,
                  description="Spans to Langfuse (OTLP, Basic auth), LLM spans as generations with model, usage, cost.")
