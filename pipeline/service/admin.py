"""admin: the query API over the running pipeline's span store.

    POST /v1/query   {"sql": "...", "max_rows": 1000, "timeout": "10s", "wait": "5s"}
                     -> columns, rows, truncated_by, pending_spans
    GET  /v1/status  components and store
    GET  /v1/slos    every SLO per agent, evaluated now (the slo processors)
    GET  /v1/decisions[/{agent_id}[?tool=&task=]]   per-agent decisions (cost budgets, breakers): allow,
                                      throttle, circuit_open, kill; from memory
    GET  /v1/costs   spend per day, agent and model with utilisation, and every budget (cost processor)
    GET  /v1/incidents[?all=true]        incidents (open ones, or all), newest first
    GET  /v1/incidents/{id}              one incident with its log
    POST /v1/incidents/{id}/{action}     ack | investigate | mitigate | resolve, body {"by": ..., "why": ...}
    GET  /v1/incidents/{id}/postmortem   the postmortem, Markdown
    GET  /v1/traces/{id}[?format=otlp][&links=false]   the span tree of a trace, its delegation chain across
                                      traces included (the replay extension); format=otlp: OTLP/JSON (the one
                                      trace; links=true: with the traces tied to it)
    POST /v1/diff         {"trace_a", "trace_b"} or {"baseline", "candidate", "task"}: what changed
    POST /v1/golden/check {"suite", "candidate" | "candidate_trace" | "replays"}: a golden suite's verdict
    POST /v1/what-if      {"since_ns", "reprice", "remove_tools", "slow_tools", "slo", "budgets"}: what would
                          have happened (the replay extension, processors/replay)
    GET  /v1/chaos/templates                     the chaos templates (the chaos processor)
    GET  /v1/chaos/experiments[?all=true]        running experiments (all: ended ones too); /{id}: one
    POST /v1/chaos/experiments                   {"template", "agents", "duration", "overrides", "by"}: start one
    POST /v1/chaos/experiments/{id}/stop         {"by", "why"}: stop it (injection ends at the agents' next refresh)
    GET  /v1/chaos/experiments/{id}/report       baseline / during / after, recovery, resilience score
    GET  /v1/rollouts[/{name}]                   rollouts, newest first; one with its last analysis and history
    POST /v1/rollouts                            {"document": "<Rollout YAML>", "by"}: start one (the delivery processor)
    POST /v1/rollouts/{name}/{action}            promote | pause | resume | abort, body {"by", "why", "full"}

SQL is read-only (SELECT/EXPLAIN), touches no file, and is limited in rows, answer bytes, time and
memory (pipeline/storage/sandbox.py); it runs in its own bounded pool (admin_guard.QueryAdmission).

With ``fleet_store: clickhouse://…`` set, ``{"sql": ..., "store": "fleet"}`` runs on the fleet's
ClickHouse instead (pipeline/storage/fleet.py: ``readonly = 1``, the same row, byte, time and memory
limits, the same pool); ``GET /v1/slos?store=fleet`` and ``GET /v1/costs?store=fleet`` answer every
pipeline's SLOs and spend with this pipeline's objectives and budgets (processors/slo/fleet.py,
processors/cost/fleet.py; ``skipped``: what the fleet store cannot answer, and why), and
``GET /v1/incidents?store=fleet`` lists every pipeline's incidents from the ``incident`` events there.  Without the setting ``store=fleet`` is 404; a tenant's key gets 403 (the
fleet store is not tenant-scoped).
Every route checks the Host header, and POSTs the Origin and Content-Type (admin_guard.RequestGuard).
A caller whose key carries a tenant sees that tenant's data only (admin_tenants.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web
from pydantic import ConfigDict, Field, SecretStr, field_validator, model_validator

from agent_sre.pipeline.component import Extension, Factory, Kind
from agent_sre.pipeline.component.auth import (
    SECRET_SAFE_ERRORS,
    AuthConfig,
    Authenticator,
    AuthFailure,
    Principal,
)
from agent_sre.pipeline.component.capabilities import (
    ChaosExperiments,
    CostReports,
    Incidents,
    Rollouts,
    SendingQueue,
    SloReports,
    SpanStore,
    TraceAnalysis,
)
from agent_sre.pipeline.component.config import ConfigModel, Duration, HostPort, parse_duration
from agent_sre.pipeline.component.errors import ConfigError, QuestionError, TransitionError
from agent_sre.pipeline.component.host import CapabilityError
from agent_sre.pipeline.component.httpserver import PATH_PARAM, PATH_PARAMS, BodyTooLarge, Handler, read_body
from agent_sre.pipeline.component.tls import TlsServerConfig
from agent_sre.pipeline.service.admin_guard import QueryAdmission, RequestGuard
from agent_sre.pipeline.service.admin_tenants import TenantAgents, tenant_costs
from agent_sre.pipeline.service.defaults import ADMIN_ENDPOINT
from agent_sre.pipeline.storage.fleet import (
    FleetStore,
    FleetStoreError,
    fleet_incidents,
    fleet_query,
    parse_store,
    redacted,
)
from agent_sre.pipeline.storage.sandbox import QUERY_WAIT_S, QueryError, QueryLimits


class AdminAuthConfig(AuthConfig):
    # false: a key is needed for the calls that change something (the incident lifecycle); true: for every call.
    reads: bool = False

    @model_validator(mode="after")
    def _tenants_need_reads(self) -> AdminAuthConfig:
        tenants = sorted({k.tenant for k in self.keys if k.tenant})
        if tenants and not self.reads:
            raise ValueError(f"keys with a tenant ({', '.join(tenants)}) need reads: true: without it, a caller "
                             "with no key reads every tenant's data")
        return self


_TRACE_ID = re.compile(r"[0-9a-f]{32}")  # as the store keeps trace ids (OTLP/JSON's hex)
PRINCIPAL = web.RequestKey("principal", Principal)  # who an authenticated request speaks for (its tenant)


class AdminConfig(ConfigModel):
    model_config = ConfigDict(**ConfigModel.model_config, **SECRET_SAFE_ERRORS)  # keys never in an error's text

    endpoint: HostPort = ADMIN_ENDPOINT
    auth: AdminAuthConfig | None = None
    tls: TlsServerConfig | None = None  # the whole endpoint (health check included) serves HTTPS
    # Which duckdb exporter's store to serve; empty: the only one configured.
    storage: str = ""
    max_rows: int = Field(default=10_000, gt=0)
    # The default is a duration's input form, parsed by validate_default; pydantic types only the output.
    query_timeout: Duration = Field(default="30s", gt=0)  # type: ignore[assignment]
    # How long a query waits for the spans acknowledged before it to be committed (a request's "wait" may
    # ask for less or more, up to its time limit); past it the answer is over what is committed, with
    # "pending_spans" saying how many were not.
    query_wait: Duration = Field(default=QUERY_WAIT_S, ge=0)
    # Ad hoc SQL's other limits (pipeline/storage/sandbox.py): the answer's size (Arrow bytes of its rows;
    # cut beyond it), the process's growth while a query runs (stopped beyond it), and its pool: queries
    # running at once and waiting; beyond both, 429 at once.
    max_result_bytes: int = Field(default=QueryLimits.max_result_bytes, gt=0)
    max_query_memory_mib: int = Field(default=QueryLimits.max_memory_bytes >> 20, gt=0)
    max_concurrent_queries: int = Field(default=2, gt=0)
    max_queued_queries: int = Field(default=4, ge=0)
    # Host names clients may use besides the listener's own ("*": any), and origins (scheme://host:port)
    # that may POST besides the API's own (admin_guard.py).
    allowed_hosts: list[str] = Field(default_factory=list)
    allowed_origins: list[str] = Field(default_factory=list)
    # The fleet's ClickHouse, clickhouse://[user[:password]@]host[:port]/db (a read-only user is best):
    # what ``store: fleet`` asks.  A secret: the password shows as ``***`` in messages and ``**********``
    # in the config's dump.
    fleet_store: SecretStr | None = None

    @field_validator("fleet_store")
    @classmethod
    def _fleet_store_is_clickhouse(cls, url: SecretStr | None) -> SecretStr | None:
        if url is not None:
            try:
                parse_store(url.get_secret_value())
            except FleetStoreError as exc:
                raise ValueError(str(exc)) from None
        return url

    @field_validator("allowed_origins")
    @classmethod
    def _origins_are_urls(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if not origin.startswith(("http://", "https://")) or origin.count("/") > 3:
                raise ValueError(f"an origin is scheme://host[:port], e.g. https://console.example.com (got {origin!r})")
        return origins


def _refusal(exc: Exception) -> web.Response:
    """A lifecycle change the caller may not make (its status), a body over the limit (413) or a bad
    request (400), as every mutating route answers them."""
    if isinstance(exc, TransitionError):
        return web.json_response({"error": str(exc)}, status=exc.status)
    if isinstance(exc, BodyTooLarge):
        return web.json_response({"error": str(exc)}, status=413)
    return web.json_response({"error": f"bad request: {exc}"}, status=400)


class AdminApi(Extension):
    config: AdminConfig
    ROUTES = ("/v1/query", "/v1/status", "/v1/slos", "/v1/decisions", "/v1/decisions/{agent_id}", "/v1/costs",
              "/v1/incidents", "/v1/incidents/{id}", "/v1/incidents/{id}/{action}", "/v1/incidents/{id}/postmortem",
              "/v1/traces/{id}", "/v1/diff", "/v1/golden/check", "/v1/what-if",
              "/v1/chaos/templates", "/v1/chaos/experiments", "/v1/chaos/experiments/{id}",
              "/v1/chaos/experiments/{id}/stop", "/v1/chaos/experiments/{id}/report",
              "/v1/rollouts", "/v1/rollouts/{name}", "/v1/rollouts/{name}/{action}")

    def _start(self, host) -> None:
        self._host = host
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="admin-work")
        self._queries = QueryAdmission(self.config.max_concurrent_queries, self.config.max_queued_queries)
        self._guard = RequestGuard(self.config.endpoint, self.config.allowed_hosts, self.config.allowed_origins)
        auth = self.config.auth
        self._auth = Authenticator(auth, str(self.id), self.logger) if auth is not None else None
        self._tenant_agents: TenantAgents | None = None
        self._route("POST", "/v1/query", self._query)
        self._route("GET", "/v1/status", self._status)
        self._route("GET", "/v1/slos", self._slos)
        self._route("GET", "/v1/decisions", self._decisions)
        self._route("GET", "/v1/decisions/{agent_id}", self._decisions)
        self._route("GET", "/v1/costs", self._costs)
        self._route("GET", "/v1/incidents", self._incidents)
        self._route("GET", "/v1/incidents/{id}", self._incidents)
        self._route("GET", "/v1/incidents/{id}/postmortem", self._postmortem)
        self._route("POST", "/v1/incidents/{id}/{action}", self._transition, mutating=True)
        self._route("GET", "/v1/traces/{id}", self._trace)
        self._route("POST", "/v1/diff", self._question("diff", tenants=True))
        self._route("POST", "/v1/golden/check", self._question("golden_check", tenants=True))
        self._route("POST", "/v1/what-if", self._question("what_if", tenants=False))
        self._route("GET", "/v1/chaos/templates", self._chaos_templates)
        self._route("GET", "/v1/chaos/experiments", self._chaos_experiments)
        self._route("POST", "/v1/chaos/experiments", self._chaos_start, mutating=True)
        self._route("GET", "/v1/chaos/experiments/{id}", self._chaos_experiments)
        self._route("POST", "/v1/chaos/experiments/{id}/stop", self._chaos_stop, mutating=True)
        self._route("GET", "/v1/chaos/experiments/{id}/report", self._chaos_report)
        self._route("GET", "/v1/rollouts", self._rollouts)
        self._route("GET", "/v1/rollouts/{name}", self._rollouts)
        self._route("POST", "/v1/rollouts", self._start_rollout, mutating=True)
        self._route("POST", "/v1/rollouts/{name}/{action}", self._rollout_action, mutating=True)

    def _route(self, method: str, path: str, handler: Handler, mutating: bool = False) -> None:
        """Serve ``handler``, behind the API key when the call changes something (or ``auth.reads``)."""
        auth = self.config.auth
        if auth is not None and (mutating or auth.reads):
            handler = self._authenticated(handler)
        handler = self._guarded(handler)  # first: a foreign Host or a cross-site POST learns nothing more
        self._host.http.add_route(self.config.endpoint, method, path, handler, tls=self.config.tls)

    def _authenticated(self, handler: Handler) -> Handler:
        assert self._auth is not None
        authenticator, failures = self._auth, self._host.telemetry.auth_failures

        async def authenticated(request: web.Request) -> web.StreamResponse:
            try:
                request[PRINCIPAL] = authenticator.authenticate(request.headers.get("Authorization"),
                                                                request.headers.get("X-Api-Key"))
            except AuthFailure as exc:
                authenticator.log_failure("http", exc, request.remote)
                failures.labels(str(self.id), "http", exc.reason).inc()
                return web.json_response({"error": str(exc)}, status=401,
                                         headers={"WWW-Authenticate": 'Bearer realm="agent-sre admin"'})
            return await handler(request)

        return authenticated

    def _guarded(self, handler: Handler) -> Handler:
        guard = self._guard

        async def guarded(request: web.Request) -> web.StreamResponse:
            refusal = guard.check(request)
            if refusal is not None:
                self._refused(request, refusal.reason, refusal.message)
                return web.json_response({"error": refusal.message}, status=refusal.status)
            return await handler(request)

        return guarded

    def _refused(self, request: web.Request, reason: str, message: str) -> None:
        """Count and log a refusal or a limit hit (this extension's logger names it)."""
        self._host.telemetry.admin_refused.labels(str(self.id), reason).inc()
        self.logger.warning("%s %s from %s refused (%s): %s", request.method, request.path, request.remote,
                            reason, message)

    def _store(self):
        try:
            return self._host.get(SpanStore, self.config.storage, str(self.id))
        except CapabilityError as exc:
            raise QueryError(f"no span store to query: {exc}", 503, "no_store") from exc

    def _fleet_url(self, request: web.Request, store: object) -> str | None:
        """None: answer from this pipeline; the fleet store's URL for ``store`` "fleet".  Refused with
        ``FleetStoreError``: an unknown store (400), no ``fleet_store`` configured (404), a tenant's key
        (403: the fleet store holds every tenant's rows, unscoped)."""
        if store in (None, "", "local"):
            return None
        if store != "fleet":
            raise FleetStoreError(f'bad request: store is "local" or "fleet" (got {store!r})', 400, "bad_store")
        if self.config.fleet_store is None:
            raise FleetStoreError("no fleet store configured: set fleet_store: clickhouse://[user[:password]@]"
                                  "host[:port]/db in the admin extension's config", 404, "no_fleet_store")
        if self._tenant(request) is not None:
            raise FleetStoreError("the fleet store is not tenant-scoped: store=fleet is not for a tenant's key",
                                  403, "tenant_scope")
        return self.config.fleet_store.get_secret_value()

    def _fleet_refusal(self, request: web.Request, exc: FleetStoreError) -> web.Response:
        """A store=fleet request refused or failed, counted and logged (the URL's password never is)."""
        self._refused(request, exc.reason, str(exc))
        return web.json_response({"error": str(exc)}, status=exc.status,
                                 headers={"Retry-After": "1"} if exc.status == 503 else None)

    def _fleet_store(self, url: str) -> FleetStore:
        """A connection to the fleet store within the ad-hoc SQL's time and memory limits."""
        return FleetStore(url, self.config.query_timeout, self.config.max_query_memory_mib << 20)

    @staticmethod
    def _tenant(request: web.Request) -> str | None:
        """The caller's tenant (its key's), or None: every tenant's data."""
        principal = request.get(PRINCIPAL)
        return principal.tenant if principal is not None else None

    async def _agents_of(self, tenant: str, agent: str | None = None) -> frozenset[str]:
        """The tenant's agents (``agent``: the one asked for): from memory when read lately, else read in a
        worker thread."""
        if self._tenant_agents is None:
            try:
                self._tenant_agents = TenantAgents(self._store().read)
            except QueryError:
                return frozenset()  # no store: nothing stored, no agent is anyone's
        found = self._tenant_agents.cached(tenant, agent)
        if found is None:
            found = await asyncio.get_running_loop().run_in_executor(self._pool, self._tenant_agents.of, tenant,
                                                                     agent)
        return found

    def _not_the_tenants(self, request: web.Request, tenant: str, what: str) -> web.Response:
        """404 for another tenant's (or nobody's) agent or incident: the same answer either way, counted."""
        message = f"{what} is not one of tenant {tenant!r}'s"
        self._refused(request, "tenant_scope", message)
        return web.json_response({"error": message}, status=404)

    def _limits(self, body: dict, tenant: str | None = None) -> QueryLimits:
        """The request's limits, within the configured ones; 400 naming what is wrong."""
        cfg = self.config
        max_rows = body.get("max_rows", cfg.max_rows)
        if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
            raise QueryError(f'"max_rows" must be a positive integer (at most {cfg.max_rows}; got {max_rows!r})')
        try:
            timeout = parse_duration(body.get("timeout", cfg.query_timeout))
        except ValueError as exc:
            raise QueryError(f'"timeout" {exc}') from None
        if timeout <= 0:
            raise QueryError(f'"timeout" must be positive (at most {cfg.query_timeout:g}s; got {timeout:g}s)')
        try:
            wait = parse_duration(body.get("wait", cfg.query_wait))
        except ValueError as exc:
            raise QueryError(f'"wait" {exc}') from None
        if wait < 0:
            raise QueryError(f'"wait" must not be negative (got {wait:g}s)')
        return QueryLimits(max_rows=min(max_rows, cfg.max_rows), timeout_s=min(timeout, cfg.query_timeout),
                           max_result_bytes=cfg.max_result_bytes, max_memory_bytes=cfg.max_query_memory_mib << 20,
                           tenant=tenant, wait_s=wait)

    async def _query(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()  # the time limit runs from here: the wait for a query slot counts
        try:
            body = json.loads(await read_body(request, 1 << 20) or b"{}")
            if not isinstance(body, dict) or not isinstance(body.get("sql"), str):
                raise QueryError('body must be a JSON object with "sql": "<statement>"')
            fleet = self._fleet_url(request, body.get("store"))
            limits = self._limits(body, None if fleet else self._tenant(request))
            deadline = arrived + limits.timeout_s
            encoded, truncated_by = await self._queries.run(deadline, self._answer, fleet or self._store(),
                                                            body["sql"], limits, deadline)
        except QueryError as exc:
            if exc.reason != "sql":
                self._refused(request, exc.reason, str(exc))
            retry = {"Retry-After": "1"} if exc.status in (429, 503) else None
            return web.json_response({"error": str(exc)}, status=exc.status, headers=retry)
        except BodyTooLarge as exc:
            return web.json_response({"error": str(exc)}, status=413)
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": f"bad request: {exc}"}, status=400)
        if truncated_by == "max_result_bytes":
            self._refused(request, "result_bytes", f"answer cut at max_result_bytes ({self.config.max_result_bytes})")
        return web.Response(body=encoded, content_type="application/json")

    @staticmethod
    def _answer(store: SpanStore | str, sql: str, limits: QueryLimits, deadline: float) -> tuple[bytes, str | None]:
        """In a query thread: the query (``store``: the span store, or the fleet store's URL) and its JSON
        body, within what is left of the time limit."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise QueryError(f"no query slot came free within the time limit of {limits.timeout_s:g}s; try again",
                             503, "query_queue_timeout")
        limits = dataclasses.replace(limits, timeout_s=left)
        result = fleet_query(store, sql, limits) if isinstance(store, str) else store.query(sql, limits=limits)
        encoded = result.to_json_bytes()
        if time.monotonic() > deadline:  # the time limit covers building the answer too
            raise QueryError(f"query exceeded the time limit of {limits.timeout_s:g}s", 408, "time")
        return encoded, result.truncated_by

    async def _slos(self, request: web.Request) -> web.Response:
        processors = self._host.all(SloReports)
        try:
            url = self._fleet_url(request, request.query.get("store"))
        except FleetStoreError as exc:
            return self._fleet_refusal(request, exc)
        if url is not None:
            return await self._from_fleet(request, url, [lambda s, p=p: p.fleet_report(s) for p in processors],
                                          {"slos": [], "configured": bool(processors)})
        loop = asyncio.get_running_loop()
        try:
            rows = [row for proc in processors for row in await loop.run_in_executor(self._pool, proc.report)]
            tenant = self._tenant(request)
            if tenant is not None:
                agents = await self._agents_of(tenant)
                rows = [row for row in rows if row.get("agent_id") in agents]
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
        tenant = self._tenant(request)
        agents = await self._agents_of(tenant, agent) if tenant is not None else None
        if agent is not None:
            if agents is not None and agent not in agents:
                return self._not_the_tenants(request, str(tenant), f"agent {agent!r}")
            started = time.perf_counter()
            answer = web.json_response(board.decide(agent, request.query.get("tool") or None,
                                                    request.query.get("task") or None))
            self._host.telemetry.decision_latency.observe(time.perf_counter() - started)
            return answer
        decisions = board.all()
        if agents is not None:
            decisions = [d for d in decisions if d["agent_id"] in agents]
        return web.json_response({"decisions": decisions})

    async def _from_fleet(self, request: web.Request, url: str, asks: list, answer: dict) -> web.Response:
        """``answer`` with what each of ``asks`` (``ask(store)``, in the admin's pool, on one connection to
        the fleet store) adds to its lists and to ``skipped``; 503 when the fleet store cannot answer."""
        def ask_all() -> list[dict]:
            with self._fleet_store(url) as store:
                return [ask(store) for ask in asks]

        try:
            parts = await asyncio.get_running_loop().run_in_executor(self._pool, ask_all)
        except FleetStoreError as exc:
            return self._fleet_refusal(request, exc)
        skipped: dict[str, str] = {}
        for part in parts:
            skipped.update(part.pop("skipped", {}))
            for key, rows in part.items():
                answer[key] = answer.get(key, []) + rows
        return web.json_response({**answer, "store": "fleet", "skipped": skipped})

    async def _costs(self, request: web.Request) -> web.Response:
        try:
            url = self._fleet_url(request, request.query.get("store"))
        except FleetStoreError as exc:
            return self._fleet_refusal(request, exc)
        costs = self._host.all(CostReports)
        if not costs:
            return web.json_response({"error": "no cost processor configured"}, status=404)
        try:
            days = int(request.query.get("days", "7"))
            if not 1 <= days <= 366:
                raise ValueError("days must be 1 to 366")
        except ValueError as exc:
            return web.json_response({"error": f"bad request: {exc}"}, status=400)
        if url is not None:
            return await self._from_fleet(request, url, [lambda s, c=c: c.fleet_costs(s, days) for c in costs],
                                          {"summary": [], "budgets": []})
        loop = asyncio.get_running_loop()
        answers = [await loop.run_in_executor(self._pool, c.costs, days) for c in costs]
        answer = {"summary": [r for a in answers for r in a["summary"]],
                  "budgets": [b for a in answers for b in a["budgets"]]}
        tenant = self._tenant(request)
        if tenant is not None:
            answer = tenant_costs(answer, tenant, await self._agents_of(tenant))
        return web.json_response(answer)

    def _incidents_processor(self):
        found = self._host.all(Incidents)
        return found[0] if found else None

    async def _incidents(self, request: web.Request) -> web.Response:
        if request.query.get("store", "local") not in ("", "local"):
            return await self._fleet_incidents(request)
        proc = self._incidents_processor()
        if proc is None:
            return web.json_response({"error": "no incidents processor configured"}, status=404)
        loop = asyncio.get_running_loop()
        params = request.get(PATH_PARAMS)
        if params:
            found = await loop.run_in_executor(self._pool, proc.show, params["id"])
            if found is None:
                return web.json_response({"error": f"no incident {params['id']!r}"}, status=404)
            return await self._outside_tenant(request, proc, params["id"]) or web.json_response(found)
        every = request.query.get("all", "false").lower() in ("1", "true", "yes")
        listed = await loop.run_in_executor(self._pool, proc.list, every)
        tenant = self._tenant(request)
        if tenant is not None:
            agents = await self._agents_of(tenant)
            listed = [row for row in listed if row.get("agent_id") in agents]
        return web.json_response({"incidents": listed})

    async def _fleet_incidents(self, request: web.Request) -> web.Response:
        """GET /v1/incidents?store=fleet[&all=true]: every pipeline's incidents from the fleet store's
        ``incident`` events (pipeline/storage/fleet.py says what those carry), newest first."""
        try:
            url = self._fleet_url(request, request.query.get("store"))
            assert url is not None  # store=local is answered by _incidents
            if request.get(PATH_PARAMS):
                raise FleetStoreError("one incident (its log, its postmortem) is read from the pipeline that opened "
                                      "it: the fleet store keeps incident events, not the log", 400, "bad_store")
            every = request.query.get("all", "false").lower() in ("1", "true", "yes")
            listed = await asyncio.get_running_loop().run_in_executor(
                self._pool, lambda: fleet_incidents(self._fleet_store(url), every))
        except FleetStoreError as exc:
            return self._fleet_refusal(request, exc)
        return web.json_response({"incidents": listed, "store": "fleet"})

    async def _outside_tenant(self, request: web.Request, proc, incident: str) -> web.Response | None:
        """404 when the caller has a tenant and the incident is not of one of its agents; else None."""
        tenant = self._tenant(request)
        if tenant is None:
            return None
        found = await asyncio.get_running_loop().run_in_executor(self._pool, proc.show, incident)
        if found is not None and found.get("agent_id") in await self._agents_of(tenant, found.get("agent_id")):
            return None
        return self._not_the_tenants(request, tenant, f"incident {incident!r}")

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
            outside = await self._outside_tenant(request, proc, params["id"])
            if outside is not None:
                return outside
            loop = asyncio.get_running_loop()
            found = await loop.run_in_executor(self._pool, proc.transition, params["id"], params["action"],
                                               body["by"], body.get("why", ""))
        except (TransitionError, BodyTooLarge, ValueError) as exc:
            return _refusal(exc)
        return web.json_response(found)

    async def _postmortem(self, request: web.Request) -> web.Response:
        proc = self._incidents_processor()
        if proc is None:
            return web.json_response({"error": "no incidents processor configured"}, status=404)
        incident = request[PATH_PARAMS]["id"]
        outside = await self._outside_tenant(request, proc, incident)
        if outside is not None:
            return outside
        loop = asyncio.get_running_loop()
        text = await loop.run_in_executor(self._pool, proc.postmortem, incident)
        if text is None:
            return web.json_response({"error": f"no incident {incident!r}"}, status=404)
        return web.Response(text=text, content_type="text/markdown", charset="utf-8")

    async def _trace(self, request: web.Request) -> web.Response:
        """One trace as a tree (its delegation chain across traces included unless ``links=false``), or as
        OTLP/JSON with ``format=otlp``; read in the admin's pool.  A tenant's caller sees the trace when
        all its agents are the tenant's (other traces of a chain are left out); any other is 404."""
        found = self._host.all(TraceAnalysis)
        if not found:
            return web.json_response({"error": "no replay extension configured (extensions: replay: {} and "
                                               "service::extensions)"}, status=404)
        trace_id = request[PATH_PARAM].lower()
        fmt = request.query.get("format", "tree")
        links = request.query.get("links", "true").lower() not in ("0", "false", "no")
        if not _TRACE_ID.fullmatch(trace_id):
            return web.json_response({"error": f"bad request: a trace id is 32 hex digits (got {trace_id!r})"},
                                     status=400)
        if fmt not in ("tree", "otlp"):
            return web.json_response({"error": f"bad request: format is tree or otlp (got {fmt!r})"}, status=400)
        tenant = self._tenant(request)
        agents = await self._agents_of(tenant) if tenant is not None else None
        loop = asyncio.get_running_loop()
        try:
            if fmt == "otlp":  # the one trace unless links=true is asked for
                follow = request.query.get("links", "false").lower() in ("1", "true", "yes")
                doc = await loop.run_in_executor(self._pool, found[0].export, trace_id, agents, follow)
            else:
                doc = await loop.run_in_executor(self._pool, found[0].trace, trace_id, links, agents)
        except CapabilityError as exc:
            return web.json_response({"error": f"no span store to read: {exc}"}, status=503)
        if doc is None:
            if tenant is not None:
                return self._not_the_tenants(request, tenant, f"trace {trace_id!r}")
            return web.json_response({"error": f"no trace {trace_id!r} in the store"}, status=404)
        return web.json_response(doc)

    def _question(self, method: str, tenants: bool) -> Handler:
        """A POST answered by the replay extension's ``method`` (a JSON body in, a JSON answer out), in the
        admin's pool; a tenant's caller gets its agents' traces only (``tenants``) or, where the answer
        spans the whole store (what-if), a 403."""

        async def handle(request: web.Request) -> web.Response:
            found = self._host.all(TraceAnalysis)
            if not found:
                return web.json_response({"error": "no replay extension configured (extensions: replay: {} and "
                                                   "service::extensions)"}, status=404)
            try:
                body = json.loads(await read_body(request, 16 << 20) or b"{}")
            except BodyTooLarge as exc:
                return web.json_response({"error": str(exc)}, status=413)
            except ValueError as exc:
                return web.json_response({"error": f"bad request: the body is not JSON: {exc}"}, status=400)
            tenant = self._tenant(request)
            if tenant is not None and not tenants:
                return web.json_response({"error": "what-if reads every agent's spans: not for a tenant's key"},
                                         status=403)
            args = [body] + ([await self._agents_of(tenant) if tenant is not None else None] if tenants else [])
            loop = asyncio.get_running_loop()
            try:
                answer = await loop.run_in_executor(self._pool, getattr(found[0], method), *args)
            except QuestionError as exc:
                return web.json_response({"error": str(exc)}, status=exc.status)
            except CapabilityError as exc:
                return web.json_response({"error": f"no span store to read: {exc}"}, status=503)
            return web.json_response(answer)

        return handle

    # --- chaos experiments (the chaos processor: ChaosExperiments) ----------------------------------

    def _chaos(self):
        found = self._host.all(ChaosExperiments)
        return found[0] if found else None

    async def _chaos_call(self, call, *args) -> web.Response:
        """``call(processor, *args)`` in the admin's pool: 404 without a chaos processor or for an unknown
        id, 400 for a request the processor finds invalid."""
        chaos = self._chaos()
        if chaos is None:
            return web.json_response({"error": "no chaos processor configured (add `chaos: {}` to a pipeline's "
                                               "processors)"}, status=404)
        try:
            found = await asyncio.get_running_loop().run_in_executor(self._pool, call, chaos, *args)
        except LookupError as exc:
            return web.json_response({"error": str(exc)}, status=404)
        except TransitionError as exc:  # e.g. 503: the fleet's shared state is unreachable
            return web.json_response({"error": str(exc)}, status=exc.status)
        except ValueError as exc:
            return web.json_response({"error": f"bad request: {exc}"}, status=400)
        if found is None:
            return web.json_response({"error": f"no chaos experiment {args[0]!r}"}, status=404)
        return web.json_response(found)

    async def _json_object(self, request: web.Request, limit: int = 64 << 10) -> tuple[dict | None, web.Response | None]:
        """The JSON object of a POST, or the error answer."""
        try:
            body = json.loads(await read_body(request, limit) or b"{}")
        except BodyTooLarge as exc:
            return None, web.json_response({"error": str(exc)}, status=413)
        except ValueError as exc:
            return None, web.json_response({"error": f"bad request: {exc}"}, status=400)
        if not isinstance(body, dict):
            return None, web.json_response({"error": "bad request: the body must be a JSON object"}, status=400)
        return body, None

    async def _chaos_outside_tenant(self, request: web.Request, agents) -> web.Response | None:
        """404 when the caller has a tenant and any of ``agents`` is not the tenant's; else None."""
        tenant = self._tenant(request)
        if tenant is None:
            return None
        mine = await self._agents_of(tenant)
        outside = sorted(set(agents) - set(mine))
        return self._not_the_tenants(request, tenant, f"agent {outside[0]!r}") if outside else None

    async def _chaos_templates(self, request: web.Request) -> web.Response:
        return await self._chaos_call(lambda c: {"templates": c.templates()})

    async def _chaos_experiments(self, request: web.Request) -> web.Response:
        params = request.get(PATH_PARAMS)
        if params:
            return await self._chaos_call(lambda c, i: c.experiment(i), params["id"])
        every = request.query.get("all", "false").lower() in ("1", "true", "yes")
        tenant = self._tenant(request)
        mine = await self._agents_of(tenant) if tenant is not None else None
        return await self._chaos_call(lambda c: {"experiments": [
            e for e in c.experiments(every) if mine is None or set(e["agents"]) <= set(mine)]})

    async def _chaos_start(self, request: web.Request) -> web.Response:
        body, error = await self._json_object(request)
        if body is None:
            assert error is not None
            return error
        agents = body.get("agents") or body.get("agent") or []
        agents = [agents] if isinstance(agents, str) else agents
        if not isinstance(body.get("template"), str) or not isinstance(agents, list):
            return web.json_response({"error": 'bad request: body must be {"template": "...", "agents": ["..."], '
                                               '"duration": "10m", "overrides": {...}, "by": "..."}'}, status=400)
        outside = await self._chaos_outside_tenant(request, agents)
        if outside is not None:
            return outside
        return await self._chaos_call(lambda c: c.start_experiment(body["template"], agents, body.get("duration"),
                                                                   body.get("overrides"), str(body.get("by") or "")))

    async def _chaos_stop(self, request: web.Request) -> web.Response:
        body, error = await self._json_object(request)
        if body is None:
            assert error is not None
            return error
        experiment = request[PATH_PARAMS]["id"]
        chaos = self._chaos()
        found = chaos.experiment(experiment) if chaos is not None else None
        outside = await self._chaos_outside_tenant(request, found["agents"]) if found else None
        if outside is not None:
            return outside
        return await self._chaos_call(lambda c, i: c.stop_experiment(i, str(body.get("by") or ""),
                                                                     str(body.get("why") or "")), experiment)

    async def _chaos_report(self, request: web.Request) -> web.Response:
        experiment = request[PATH_PARAMS]["id"]
        chaos = self._chaos()
        found = chaos.experiment(experiment) if chaos is not None else None
        outside = await self._chaos_outside_tenant(request, found["agents"]) if found else None
        if outside is not None:
            return outside
        return await self._chaos_call(lambda c, i: c.report(i), experiment)

    # --- rollouts (the delivery processor: Rollouts) -------------------------------------------------

    def _rollouts_processor(self):
        found = self._host.all(Rollouts)
        return found[0] if found else None

    async def _rollouts(self, request: web.Request) -> web.Response:
        """GET /v1/rollouts (newest first) and GET /v1/rollouts/{name} (with its last analysis and history);
        a tenant's caller sees its agents' rollouts only."""
        proc = self._rollouts_processor()
        if proc is None:
            return web.json_response({"error": "no delivery processor configured"}, status=404)
        loop = asyncio.get_running_loop()
        tenant = self._tenant(request)
        agents = await self._agents_of(tenant) if tenant is not None else None
        params = request.get(PATH_PARAMS)
        if params:
            found = await loop.run_in_executor(self._pool, proc.rollout, params["name"])
            if found is None or (agents is not None and found["agent_id"] not in agents):
                return web.json_response({"error": f"no rollout {params['name']!r}"}, status=404)
            return web.json_response(found)
        listed = await loop.run_in_executor(self._pool, proc.rollouts)
        if agents is not None:
            listed = [r for r in listed if r["agent_id"] in agents]
        return web.json_response({"rollouts": listed})

    async def _start_rollout(self, request: web.Request) -> web.Response:
        """POST /v1/rollouts {"document": "<Rollout YAML>", "by": "<who>"}."""
        proc = self._rollouts_processor()
        if proc is None:
            return web.json_response({"error": "no delivery processor configured"}, status=404)
        try:
            body = json.loads(await read_body(request, 1 << 20) or b"{}")
            if not isinstance(body, dict) or not isinstance(body.get("document"), str) \
                    or not isinstance(body.get("by", ""), str):
                raise ValueError('body must be a JSON object {"document": "<Rollout YAML>", "by": "<who>"}')
            tenant = self._tenant(request)
            agents = await self._agents_of(tenant) if tenant is not None else None
            loop = asyncio.get_running_loop()
            found = await loop.run_in_executor(self._pool, proc.start_rollout, body["document"],
                                               body.get("by", ""), agents)
        except ConfigError as exc:
            return web.json_response({"error": str(exc), "problems": [str(p) for p in exc.problems]}, status=400)
        except (TransitionError, BodyTooLarge, ValueError) as exc:
            return _refusal(exc)
        return web.json_response(found, status=201)

    async def _rollout_action(self, request: web.Request) -> web.Response:
        """POST /v1/rollouts/{name}/{action}: promote | pause | resume | abort, body {"by", "why", "full"}."""
        proc = self._rollouts_processor()
        if proc is None:
            return web.json_response({"error": "no delivery processor configured"}, status=404)
        params = request[PATH_PARAMS]
        try:
            body = json.loads(await read_body(request, 64 << 10) or b"{}")
            if not isinstance(body, dict) or not isinstance(body.get("by", ""), str) \
                    or not isinstance(body.get("why", ""), str) or not isinstance(body.get("full", False), bool):
                raise ValueError('body must be a JSON object {"by": "<who>", "why": "<reason>", "full": false}')
            if not body.get("by"):
                raise ValueError('say who: {"by": "<who>"}')
            loop = asyncio.get_running_loop()
            shown = await loop.run_in_executor(self._pool, proc.rollout, params["name"])
            tenant = self._tenant(request)
            if shown is not None and tenant is not None and shown["agent_id"] not in await self._agents_of(tenant):
                return self._not_the_tenants(request, tenant, f"rollout {params['name']!r}")
            found = await loop.run_in_executor(self._pool, lambda: proc.act(
                params["name"], params["action"], body["by"], body.get("why", ""), body.get("full", False)))
        except (TransitionError, BodyTooLarge, ValueError) as exc:
            return _refusal(exc)
        return web.json_response(found)

    async def _status(self, request: web.Request) -> web.Response:
        comps = {key: [str(line) for line in comp.describe()] for key, comp in self._host.components.items()}
        queues = {id_: q.queue_status() for id_, q in self._host.providers(SendingQueue).items()}
        return web.json_response({"ready": self._host.ready, "components": comps, "sending_queues": queues})

    def describe(self) -> list[str]:
        scheme = "https" if self.config.tls is not None else "http"
        lines = [f"admin/query API on {scheme}://{self.config.endpoint} (POST /v1/query, GET /v1/status, GET /v1/slos, "
                 "GET /v1/decisions, GET /v1/costs, /v1/incidents, GET /v1/traces/{id}, POST /v1/diff, "
                 "/v1/golden/check, /v1/what-if, /v1/chaos, /v1/rollouts)"]
        if self.config.fleet_store is not None:
            lines.append(f"store=fleet: {redacted(self.config.fleet_store.get_secret_value())}")
        return lines

    def _shutdown(self) -> None:
        self._host.http.remove_routes(self.config.endpoint, list(self.ROUTES))
        self._pool.shutdown(wait=False)
        self._queries.shutdown()


factory = Factory(type="admin", kind=Kind.EXTENSION, config_model=AdminConfig, create=AdminApi, signals=(),
                  description="Read-only, time- and row-limited SQL over the running span store.")
