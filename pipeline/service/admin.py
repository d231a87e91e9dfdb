"""admin: the query API over the running pipeline's span store.

    POST /v1/query   {"sql": "...", "max_rows": 1000, "timeout": "10s"}  -> columns, rows, truncated
    GET  /v1/status  components and store
    GET  /v1/slos    every SLO per agent, evaluated now (the slo processors)
    GET  /v1/decisions[/{agent_id}[?tool=&task=]]   per-agent decisions (cost budgets, breakers): allow,
                                      throttle, circuit_open, kill; from memory
    GET  /v1/costs   spend per day, agent and model with utilisation, and every budget (cost processor)
    GET  /v1/incidents[?all=true]        incidents (open ones, or all), newest first
    GET  /v1/incidents/{id}              one incident with its log
    POST /v1/incidents/{id}/{action}     ack | investigate | mitigate | resolve, body {"by": ..., "why": ...}
    GET  /v1/incidents/{id}/postmortem   the postmortem, Markdown

SQL is read-only (SELECT/EXPLAIN), row- and time-limited, and the database has
no access to files outside the store (see pipeline/storage/store.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web
from pydantic import Field

from agent_sre.pipeline.component import Extension, Factory, Kind
from agent_sre.pipeline.component.capabilities import CostReports, Incidents, SloReports, SpanStore
from agent_sre.pipeline.component.config import ConfigModel, Duration, HostPort, parse_duration
from agent_sre.pipeline.component.errors import TransitionError
from agent_sre.pipeline.component.host import CapabilityError
from agent_sre.pipeline.component.httpserver import PATH_PARAM, PATH_PARAMS, BodyTooLarge, read_body
from agent_sre.pipeline.storage.sandbox import QueryError


class AdminConfig(ConfigModel):
    endpoint: HostPort = "127.0.0.1:13133"
    # Which duckdb exporter's store to serve; empty: the only one configured.
    storage: str = ""
    max_rows: int = Field(default=10_000, gt=0)
    # The default is a duration's input form, parsed by validate_default; pydantic types only the output.
    query_timeout: Duration = Field(default="30s", gt=0)  # type: ignore[assignment]


def _json_default(value: object) -> object:
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


class AdminApi(Extension):
    config: AdminConfig
    ROUTES = ("/v1/query", "/v1/status", "/v1/slos", "/v1/decisions", "/v1/decisions/{agent_id}", "/v1/costs",
              "/v1/incidents", "/v1/incidents/{id}", "/v1/incidents/{id}/{action}", "/v1/incidents/{id}/postmortem")

    def _start(self, host) -> None:
        self._host = host
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="admin-query")
        host.http.add_route(self.config.endpoint, "POST", "/v1/query", self._query)
        host.http.add_route(self.config.endpoint, "GET", "/v1/status", self._status)
        host.http.add_route(self.config.endpoint, "GET", "/v1/slos", self._slos)
        host.http.add_route(self.config.endpoint, "GET", "/v1/decisions", self._decisions)
        host.http.add_route(self.config.endpoint, "GET", "/v1/decisions/{agent_id}", self._decisions)
        host.http.add_route(self.config.endpoint, "GET", "/v1/costs", self._costs)
        host.http.add_route(self.config.endpoint, "GET", "/v1/incidents", self._incidents)
        host.http.add_route(self.config.endpoint, "GET", "/v1/incidents/{id}", self._incidents)
        host.http.add_route(self.config.endpoint, "GET", "/v1/incidents/{id}/postmortem", self._postmortem)
        host.http.add_route(self.config.endpoint, "POST", "/v1/incidents/{id}/{action}", self._transition)

    def _store(self):
        try:
            return self._host.get(SpanStore, self.config.storage, str(self.id))
        except CapabilityError as exc:
            raise QueryError(f"no span store to query: {exc}", 503) from exc

    async def _query(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await read_body(request, 1 << 20) or b"{}")
            if not isinstance(body, dict) or not isinstance(body.get("sql"), str):
                raise QueryError('body must be a JSON object with "sql": "<statement>"')
            max_rows = min(int(body.get("max_rows", self.config.max_rows)), self.config.max_rows)
            timeout = min(parse_duration(body.get("timeout", self.config.query_timeout)), self.config.query_timeout)
            store = self._store()
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(self._pool, store.query, body["sql"], max_rows, timeout)
        except QueryError as exc:
            return web.json_response({"error": str(exc)}, status=exc.status)
        except BodyTooLarge as exc:
            return web.json_response({"error": str(exc)}, status=413)
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": f"bad request: {exc}"}, status=400)
        return web.json_response(result.to_json(), dumps=lambda o: json.dumps(o, default=_json_default))

    async def _slos(self, request: web.Request) -> web.Response:
        processors = self._host.all(SloReports)
        loop = asyncio.get_running_loop()
        try:
            rows = [row for proc in processors for row in await loop.run_in_executor(self._pool, proc.report)]
        except Exception as exc:  # noqa: BLE001 - e.g. the store did not catch up in time
            return web.json_response({"error": f"SLO evaluation failed: {exc}"}, status=503)
        return web.json_response({"slos": rows, "configured": bool(processors)})

    async def _decisions(self, request: web.Request) -> web.Response:
        """From memory, on the event loop: no I/O, well under a millisecond."""
        board = self._host.decisions
        if not board.configured:
            return web.json_response({"error": "no decision sources configured (cost budgets or incidents "
                                               "breakers)"}, status=404)
        agent = request.get(PATH_PARAM)
        if agent is not None:
            started = time.perf_counter()
            answer = web.json_response(board.decide(agent, request.query.get("tool") or None,
                                                    request.query.get("task") or None))
            self._host.telemetry.decision_latency.observe(time.perf_counter() - started)
            return answer
        return web.json_response({"decisions": board.all()})

    async def _costs(self, request: web.Request) -> web.Response:
        costs = self._host.all(CostReports)
        if not costs:
            return web.json_response({"error": "no cost processor configured"}, status=404)
        try:
            days = int(request.query.get("days", "7"))
            if not 1 <= days <= 366:
                raise ValueError("days must be 1 to 366")
        except ValueError as exc:
            return web.json_response({"error": f"bad request: {exc}"}, status=400)
        loop = asyncio.get_running_loop()
        answers = [await loop.run_in_executor(self._pool, c.costs, days) for c in costs]
        return web.json_response({"summary": [r for a in answers for r in a["summary"]],
                                  "budgets": [b for a in answers for b in a["budgets"]]})

    def _incidents_processor(self):
        found = self._host.all(Incidents)
        return found[0] if found else None

    async def _incidents(self, request: web.Request) -> web.Response:
        proc = self._incidents_processor()
        if proc is None:
            return web.json_response({"error": "no incidents processor configured"}, status=404)
        loop = asyncio.get_running_loop()
        params = request.get(PATH_PARAMS)
        if params:
            found = await loop.run_in_executor(self._pool, proc.show, params["id"])
            if found is None:
                return web.json_response({"error": f"no incident {params['id']!r}"}, status=404)
            return web.json_response(found)
        every = request.query.get("all", "false").lower() in ("1", "true", "yes")
        return web.json_response({"incidents": await loop.run_in_executor(self._pool, proc.list, every)})

    async def _transition(self, request: web.Request) -> web.Response:
        proc = self._incidents_processor()
        if proc is None:
            return web.json_response({"error": "no incidents processor configured"}, status=404)
        params = request[PATH_PARAMS]
        if params["action"] == "postmortem":
            return web.json_response({"error": "the postmortem is read with GET"}, status=405,
                                     headers={"Allow": "GET"})
        try:
            body = json.loads(await read_body(request, 64 << 10) or b"{}")
            if not isinstance(body, dict) or not isinstance(body.get("by", ""), str) \
                    or not isinstance(body.get("why", ""), str):
                raise ValueError('body must be a JSON object {"by": "<who>", "why": "<reason>"}')
            if not body.get("by"):
                raise ValueError('say who: {"by": "<who>"}')
            loop = asyncio.get_running_loop()
            found = await loop.run_in_executor(self._pool, proc.transition, params["id"], params["action"],
                                               body["by"], body.get("why", ""))
        except TransitionError as exc:
            return web.json_response({"error": str(exc)}, status=exc.status)
        except BodyTooLarge as exc:
            return web.json_response({"error": str(exc)}, status=413)
        except ValueError as exc:
            return web.json_response({"error": f"bad request: {exc}"}, status=400)
        return web.json_response(found)

    async def _postmortem(self, request: web.Request) -> web.Response:
        proc = self._incidents_processor()
        if proc is None:
            return web.json_response({"error": "no incidents processor configured"}, status=404)
        incident = request[PATH_PARAMS]["id"]
        loop = asyncio.get_running_loop()
        text = await loop.run_in_executor(self._pool, proc.postmortem, incident)
        if text is None:
            return web.json_response({"error": f"no incident {incident!r}"}, status=404)
        return web.Response(text=text, content_type="text/markdown", charset="utf-8")

    async def _status(self, request: web.Request) -> web.Response:
        comps = {key: [str(line) for line in comp.describe()] for key, comp in self._host.components.items()}
        return web.json_response({"ready": self._host.ready, "components": comps})

    def describe(self) -> list[str]:
        return [f"admin/query API on http://{self.config.endpoint} (POST /v1/query, GET /v1/status, GET /v1/slos, "
                "GET /v1/decisions, GET /v1/costs, /v1/incidents)"]

    def _shutdown(self) -> None:
        self._host.http.remove_routes(self.config.endpoint, list(self.ROUTES))
        self._pool.shutdown(wait=False)


factory = Factory(type="admin", kind=Kind.EXTENSION, config_model=AdminConfig, create=AdminApi, signals=(),
                  description="Read-only, time- and row-limited SQL over the running span store.")
