"""replay: the questions asked of stored traces, served by the running pipeline (``TraceAnalysis``).

An extension: it reads the span store of a duckdb exporter (``storage``: its id; empty: the only one),
found through the host's ``SpanStore`` capability when a question comes (extensions start before
exporters), and answers with the engine of this package, the same functions the CLI runs on a
stopped pipeline's file.  The admin API serves it at ``GET /v1/traces/{id}``, ``POST /v1/diff``,
``POST /v1/golden/check`` and ``POST /v1/what-if``; what-if recomputes with the running slo, cost and
incidents processors' configs (found through their typed capabilities) and the SLIs stored with the spans.

    extensions:
      replay: {}            # or {storage: duckdb/main} with several stores
"""

from __future__ import annotations

import time

from agent_sre.pipeline.component import Extension, Factory, Kind
from agent_sre.pipeline.component.capabilities import (
    CostReports,
    Incidents,
    SloReports,
    SpanStore,
    TraceAnalysis,
)
from agent_sre.pipeline.component.config import ConfigModel
from agent_sre.pipeline.component.errors import QuestionError

_SYNC_TIMEOUT_S = 5.0  # how long a question waits for spooled spans to be in DuckDB (read your writes)
_BEHIND_LOG_EVERY_S = 60.0  # "the store is behind" said at most this often (every lookup under max-rate ingest)


class ReplayConfig(ConfigModel):
    storage: str = ""  # which duckdb exporter's store; empty: the only one


class Replay(Extension):
    config: ReplayConfig

    def _start(self, host) -> None:
        self._host = host
        self._behind_said, self._behind_since_said = float("-inf"), 0  # when last said; lookups since
        host.provide(TraceAnalysis, self.id, self)

    def _shutdown(self) -> None:
        self._host.withdraw(TraceAnalysis, self.id)

    def _read(self):
        """The store's ``read``, after its loader has inserted what was acknowledged (a trace just sent
        is shown whole); a store that is behind — or that could not catch up within the wait at the rate
        it inserts (max-rate ingest) — is read at once as it is."""
        store = self._host.get(SpanStore, self.config.storage, str(self.id))
        pending = store.catch_up(_SYNC_TIMEOUT_S)
        if pending:
            self._behind_since_said += 1
            now = time.monotonic()
            if now - self._behind_said >= _BEHIND_LOG_EVERY_S:
                self.logger.warning("span store is %d spans behind: answering from what it has inserted (lookups "
                                    "answered so since this was last said: %d; said at most every %gs)", pending,
                                    self._behind_since_said, _BEHIND_LOG_EVERY_S)
                self._behind_said, self._behind_since_said = now, 0
        return store.read

    def trace(self, trace_id: str, follow_links: bool = True, agents: frozenset[str] | None = None) -> dict | None:
        from agent_sre.processors.replay.traces import load_trace

        return load_trace(self._read(), trace_id, follow_links, agents)

    def export(self, trace_id: str, agents: frozenset[str] | None = None, follow_links: bool = False) -> dict | None:
        from agent_sre.processors.replay.otlp_io import export_trace

        return export_trace(self._read(), trace_id, follow_links=follow_links, agents=agents)

    def contents(self, trace_id: str, agents: frozenset[str] | None = None) -> dict[str, dict]:
        """What each LLM and tool span of the trace (its delegation chain included) was asked and answered,
        where recorded (processors/replay/contents.py): {span_id: {"input": [messages], "output": text}}."""
        from agent_sre.processors.replay.contents import llm_contents, span_output, tool_contents
        from agent_sre.processors.replay.traces import owned_by, trace_spans

        spans = trace_spans(self._read(), trace_id, follow_links=True)
        if agents is not None:
            spans = owned_by(spans, agents)
        found: dict[str, dict] = {}
        for span in spans:
            attributes, events = span.get("attributes") or {}, span.get("events") or []
            llm = llm_contents(attributes, events)
            tool = tool_contents(attributes) if llm is None else None
            asked = list(llm[1]) if llm else [{"role": "tool", "content": tool[1]}] if tool and tool[1] is not None else []
            answered = span_output(attributes, events)
            if asked or answered is not None:
                found[span["span_id"]] = {"input": asked, "output": answered}
        return found

    def diff(self, body: dict, agents: frozenset[str] | None = None) -> dict:
        from agent_sre.processors.replay.diff import DiffError, NotForTenants, TraceNotFound, diff_request

        try:
            return diff_request(self._read(), body, agents)
        except TraceNotFound as exc:
            raise QuestionError(str(exc), 404) from exc
        except NotForTenants as exc:
            raise QuestionError(str(exc), 403) from exc
        except DiffError as exc:
            raise QuestionError(str(exc)) from exc

    def golden_check(self, body: dict, agents: frozenset[str] | None = None) -> dict:
        from agent_sre.processors.replay.golden import GoldenError, check_request

        try:
            return check_request(self._read(), body, agents)
        except GoldenError as exc:
            raise QuestionError(str(exc)) from exc

    def what_if(self, body: dict) -> dict:
        import dataclasses

        from agent_sre.pipeline.storage.rollups import SliRollup
        from agent_sre.processors.replay.whatif import (
            RangeTooLarge,
            config_from_settings,
            parse_request,
            what_if,
        )

        read = self._read()
        try:
            since, until, changes = parse_request(body, time.time_ns())
            config = config_from_settings(slo=[p.config for p in self._host.all(SloReports)],
                                          cost=[p.config for p in self._host.all(CostReports)],
                                          incidents=[p.config for p in self._host.all(Incidents)])
            # The SLIs the store rolls up (the sli processor's, stored with the spans they were taken under).
            slis = tuple(SliRollup(*r) for r in read(
                "SELECT name, total, good, coalesce(scope, 'span') FROM sli_rollups ORDER BY position", []))
            return what_if(read, since, until, changes, dataclasses.replace(config, slis=slis))
        except RangeTooLarge as exc:
            raise QuestionError(str(exc), 503) from exc
        except ValueError as exc:
            raise QuestionError(str(exc)) from exc

    def describe(self) -> list[str]:
        return [f"replay: trace trees, OTLP/JSON, diff, golden checks and what-if over the "
                f"{self.config.storage or 'duckdb'} store (admin API: /v1/traces/{{id}}, /v1/diff, /v1/golden/check, "
                "/v1/what-if)"]


factory = Factory(type="replay", kind=Kind.EXTENSION, config_model=ReplayConfig, create=Replay, signals=(),
                  description="Stored traces as trees (cross-agent delegation chains) and as OTLP/JSON, for "
                              "the admin API's /v1/traces/{id}.")
