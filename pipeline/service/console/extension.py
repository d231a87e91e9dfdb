"""The console extension: the pages' routes on the admin API's listener, behind the same guard and keys.
A key with a tenant sees that tenant's data only (scope.py)."""

from __future__ import annotations

import asyncio
import csv
import io
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web

from agent_sre.pipeline.component import Extension
from agent_sre.pipeline.component.auth import Authenticator, AuthFailure
from agent_sre.pipeline.component.capabilities import (
    CostReports,
    Incidents,
    SloReports,
    SpanStore,
    TraceAnalysis,
)
from agent_sre.pipeline.component.host import CapabilityError
from agent_sre.pipeline.component.httpserver import PATH_PARAMS, Handler
from agent_sre.pipeline.service.admin import PRINCIPAL
from agent_sre.pipeline.service.admin_guard import QueryAdmission, RequestGuard
from agent_sre.pipeline.service.admin_tenants import TenantAgents, tenant_costs
from agent_sre.pipeline.service.console import fleet, pages
from agent_sre.pipeline.service.console.config import ConsoleConfig
from agent_sre.pipeline.service.console.scope import EVERYONE, Viewer
from agent_sre.pipeline.service.console.search import SearchError, TraceSearch
from agent_sre.pipeline.service.console.static import CSS, JS
from agent_sre.pipeline.storage.sandbox import QUERY_WAIT_S, QueryError, QueryLimits

# Pages may load only what the pipeline serves: no inline script, no third-party origin.
HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                                      "frame-ancestors 'none'; form-action 'self'",
           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin", "Cache-Control": "no-store"}
TURN_ON = {"slo": "add the <code>slo</code> processor to the traces pipeline (objectives per agent)",
           "cost": "add the <code>cost</code> processor with budgets to the traces pipeline",
           "incidents": "add the <code>incidents</code> processor to the traces pipeline",
           "decisions": "add the <code>cost</code> processor with budgets or <code>incidents</code> with breakers",
           "store": "add the <code>duckdb</code> exporter to the traces pipeline",
           "replay": "add the <code>replay</code> extension (<code>extensions: replay: {}</code> and service::extensions)"}


class Console(Extension):
    config: ConsoleConfig
    ROUTES = ("/ui", "/ui/slo", "/ui/costs", "/ui/incidents", "/ui/incidents/{id}", "/ui/traces", "/ui/traces/{id}",
              "/ui/sql", "/ui/sql.csv", "/ui/static/console.css", "/ui/static/console.js")

    def _start(self, host) -> None:
        self._host = host
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="console")
        self._queries = QueryAdmission(1, 2)  # the SQL box: one query at a time, two waiting
        self._guard = RequestGuard(self.config.endpoint, self.config.allowed_hosts, [])
        auth = self.config.auth
        self._auth = Authenticator(auth, str(self.id), self.logger) if auth is not None and auth.reads else None
        self._tenant_agents: TenantAgents | None = None
        for path, handler in (("/ui", self._overview), ("/ui/slo", self._slo), ("/ui/costs", self._costs),
                              ("/ui/incidents", self._incidents), ("/ui/incidents/{id}", self._incident),
                              ("/ui/traces", self._traces), ("/ui/traces/{id}", self._trace), ("/ui/sql", self._sql),
                              ("/ui/sql.csv", self._sql_csv), ("/ui/static/console.css", self._asset(CSS, "text/css")),
                              ("/ui/static/console.js", self._asset(JS, "text/javascript"))):
            for method in ("GET", "HEAD"):
                self._host.http.add_route(self.config.endpoint, method, path, self._guarded(handler))

    def _guarded(self, handler: Handler) -> Handler:
        """The admin API's Host check, then its key when ``auth.reads`` (every page is a read)."""
        guard, authenticator = self._guard, self._auth

        async def guarded(request: web.Request) -> web.StreamResponse:
            refusal = guard.check(request)
            if refusal is not None:
                self._host.telemetry.admin_refused.labels(str(self.id), refusal.reason).inc()
                return web.Response(text=refusal.message, status=refusal.status, headers=HEADERS)
            if authenticator is not None:
                try:
                    request[PRINCIPAL] = authenticator.authenticate(request.headers.get("Authorization"),
                                                                    request.headers.get("X-Api-Key"))
                except AuthFailure as exc:
                    authenticator.log_failure("http", exc, request.remote)
                    self._host.telemetry.auth_failures.labels(str(self.id), "http", exc.reason).inc()
                    return web.Response(text=str(exc), status=401, headers={
                        **HEADERS, "WWW-Authenticate": 'Bearer realm="agent-sre admin"'})
            return await handler(request)

        return guarded

    @staticmethod
    def _asset(text: str, content_type: str) -> Handler:
        async def serve(request: web.Request) -> web.Response:
            return web.Response(text=text, content_type=content_type, headers={**HEADERS, "Cache-Control": "max-age=300"})
        return serve

    def _page(self, title: str, active: str, body: str, status: int = 200, refresh: float = 0.0) -> web.Response:
        return web.Response(text=pages.layout(title, active, body, refresh), status=status, content_type="text/html",
                            headers=HEADERS)

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _read(self):
        try:
            return self._host.get(SpanStore, self.config.storage, str(self.id)).read
        except CapabilityError:
            return None

    async def _viewer(self, request: web.Request, agent: str | None = None) -> Viewer:
        """Who asks: everyone's data without a tenant, else the tenant's agents (``agent``: the one asked
        for), from memory when read lately (admin_tenants.py), else read in the pool."""
        principal = request.get(PRINCIPAL)
        if principal is None or principal.tenant is None:
            return EVERYONE
        if self._tenant_agents is None:
            read = self._read()
            if read is None:
                return Viewer(principal.tenant, frozenset())  # nothing stored: no agent is anyone's
            self._tenant_agents = TenantAgents(read)
        found = self._tenant_agents.cached(principal.tenant, agent)
        if found is None:
            found = await self._run(self._tenant_agents.of, principal.tenant, agent)
        return Viewer(principal.tenant, found)

    def _not_the_tenants(self, viewer: Viewer, what: str) -> web.Response:
        """404 for another tenant's agent, incident or trace: the same answer as for none, counted."""
        self._host.telemetry.admin_refused.labels(str(self.id), "tenant_scope").inc()
        return self._page("Not found", "/ui", pages.note(pages.escape(viewer.refusal(what))), 404)

    # --- pages ---------------------------------------------------------------------------------

    def overview_rows(self, now_s: float | None = None) -> tuple[list[dict], list[str]]:
        """Every agent's row and what is not configured (in a worker thread: reads two rollup tables)."""
        now_s = time.time() if now_s is None else now_s
        host, notes = self._host, []
        slo_procs, cost_procs, inc_procs = host.all(SloReports), host.all(CostReports), host.all(Incidents)
        read = self._read()
        for missing, name in ((not slo_procs, "slo"), (not cost_procs, "cost"), (not inc_procs, "incidents"),
                              (read is None, "store")):
            if missing:
                notes.append(f"No {name} data: {TURN_ON[name]}.")
        # The accounts from memory where the cost processor offers them alone (costs() also sums the days).
        budgets = [b for c in cost_procs for b in c.budgets()]
        spend = fleet.spend_since(read, fleet.day_start_minute(cost_procs, now_s)) if cost_procs else {}
        rows = fleet.overview([r for p in slo_procs for r in p.last_report],
                              host.decisions.all() if host.decisions.configured else None, budgets, spend,
                              fleet.budget_marks(cost_procs), [i for p in inc_procs for i in p.list(False)],
                              fleet.agent_minutes(read, now_s), now_s)
        return rows, notes

    async def _overview(self, request: web.Request) -> web.Response:
        sort, text = request.query.get("sort", "status"), request.query.get("q", "")
        viewer = await self._viewer(request)
        rows, notes = await self._run(self.overview_rows)
        rows = viewer.mine(rows)
        try:
            rows = fleet.sort_and_filter(rows, sort, text)
        except ValueError as exc:
            return self._page("Fleet", "/ui", pages.note(str(exc)), status=400)
        # Rendered in the pool too: ~10 ms for 100 agents' sparklines would hold the admin API's event loop.
        body = await self._run(pages.overview, rows, notes, sort, text, self.config.refresh)
        return self._page("Fleet", "/ui", body, refresh=self.config.refresh)

    async def _slo(self, request: web.Request) -> web.Response:
        procs = self._host.all(SloReports)
        if not procs:
            return self._page("SLOs", "/ui/slo", pages.note(f"No SLOs: {TURN_ON['slo']}."))
        agent, slo = request.query.get("agent", ""), request.query.get("slo", "")
        viewer = await self._viewer(request, agent or None)
        if agent and not viewer.sees(agent):
            return self._not_the_tenants(viewer, f"agent {agent!r}")
        rows = viewer.mine([r for p in procs for r in p.last_report if not agent or r["agent_id"] == agent])
        if not slo:
            return self._page("SLOs" + (f" of {agent}" if agent else ""), "/ui/slo", pages.slo_list(rows))
        found = next((r for r in rows if r["slo"] == slo), None)
        if found is None:
            return self._page("SLOs", "/ui/slo", pages.note(f"no SLO {slo!r} evaluated for agent {agent!r}"), 404)
        read = self._read()
        history, series, hourly = await self._run(lambda: (
            fleet.slo_history(read, slo, agent), fleet.sli_per_day(read, found["sli"], agent),
            fleet.burn_per_hour(read, found["sli"], agent, found["target"])) if read else ([], [], []))
        return self._page(f"SLO {slo} · {agent}", "/ui/slo",
                          pages.slo_detail(found, fleet.thresholds(procs, slo), history, series, hourly))

    async def _costs(self, request: web.Request) -> web.Response:
        procs = self._host.all(CostReports)
        if not procs:
            return self._page("Costs", "/ui/costs", pages.note(f"No costs: {TURN_ON['cost']}."))
        try:
            days = int(request.query.get("days", "7"))
            if not 1 <= days <= 366:
                raise ValueError
        except ValueError:
            return self._page("Costs", "/ui/costs", pages.note("days is a whole number from 1 to 366"), 400)
        read = self._read()
        viewer = await self._viewer(request)

        def gather():
            answers = [p.costs(days) for p in procs]
            if viewer.tenant is not None:
                answers = [tenant_costs(a, viewer.tenant, viewer.agents or frozenset()) for a in answers]
            answer = {"summary": [r for a in answers for r in a["summary"]],
                      "budgets": fleet.marked([b for a in answers for b in a["budgets"]], fleet.budget_marks(procs))}
            extra = (fleet.anomaly_days(read, days, viewer.agents), fleet.top_tasks(read, days, agents=viewer.agents),
                     fleet.spend_per_tenant(read, days, viewer.tenant)) if read else (set(), [], [])
            return answer, *extra

        answer, anomalies, top, tenants = await self._run(gather)
        body = pages.costs(answer, fleet.spend_per_day(answer["summary"]), anomalies, top)
        body += "<h2>Spend per tenant</h2>" + pages.table("tenants", [("tenant", ""), ("cost", "num")], [
            f"<tr><td>{pages.escape(t or '(none)')}</td><td class=num>{pages.usd(c)}</td></tr>" for t, c in tenants])
        return self._page(f"Costs · last {days} days", "/ui/costs", body)

    async def _incidents(self, request: web.Request) -> web.Response:
        procs = self._host.all(Incidents)
        if not procs:
            return self._page("Incidents", "/ui/incidents", pages.note(f"No incidents: {TURN_ON['incidents']}."))
        every = request.query.get("all", "false").lower() in ("1", "true", "yes")
        agent = request.query.get("agent", "")
        viewer = await self._viewer(request)
        listed = viewer.mine([i for i in await self._run(procs[0].list, every) if not agent or i["agent_id"] == agent])
        return self._page("Incidents" if not every else "All incidents", "/ui/incidents", pages.incidents(listed))

    async def _incident(self, request: web.Request) -> web.Response:
        procs = self._host.all(Incidents)
        if not procs:
            return self._page("Incidents", "/ui/incidents", pages.note(f"No incidents: {TURN_ON['incidents']}."))
        ident = request[PATH_PARAMS]["id"]
        found = await self._run(procs[0].show, ident)
        viewer = await self._viewer(request, found.get("agent_id") if found else None)
        if viewer.tenant is not None and (found is None or not viewer.sees(found.get("agent_id"))):
            return self._not_the_tenants(viewer, f"incident {ident!r}")  # absent or another's: one answer
        postmortem = await self._run(procs[0].postmortem, ident) if found is not None else None
        if found is None:
            return self._page("Incidents", "/ui/incidents", pages.note(f"no incident {pages.escape(ident)}"), 404)
        return self._page(f"Incident {ident}", "/ui/incidents", pages.incident(found, postmortem or ""))

    async def _traces(self, request: web.Request) -> web.Response:
        read = self._read()
        if read is None:
            return self._page("Traces", "/ui/traces", pages.note(f"No span store: {TURN_ON['store']}."))
        form = dict(request.query)
        try:
            search = TraceSearch.parse(form)
        except SearchError as exc:
            return self._page("Traces", "/ui/traces", pages.note(pages.escape(str(exc))) + pages.trace_search(form, [], ""), 400)
        sql, params = search.sql((await self._viewer(request)).agents)
        found = await self._run(read, sql, params)
        return self._page("Traces", "/ui/traces", pages.trace_search(form, found, search.describe()))

    async def _trace(self, request: web.Request) -> web.Response:
        found = self._host.all(TraceAnalysis)
        if not found:
            return self._page("Trace", "/ui/traces", pages.note(f"Traces cannot be drawn: {TURN_ON['replay']}."))
        trace_id = request[PATH_PARAMS]["id"].lower()
        if len(trace_id) != 32 or any(c not in "0123456789abcdef" for c in trace_id):
            return self._page("Trace", "/ui/traces", pages.note("a trace id is 32 hex digits"), 400)
        analysis = found[0]
        viewer = await self._viewer(request)

        def gather():
            doc = analysis.trace(trace_id, True, viewer.agents)
            contents = analysis.contents(trace_id, viewer.agents) if doc else {}
            return doc, contents

        try:
            doc, contents = await self._run(gather)
        except CapabilityError:
            return self._page("Trace", "/ui/traces", pages.note(f"No span store: {TURN_ON['store']}."), 503)
        if doc is None and viewer.tenant is not None:
            return self._not_the_tenants(viewer, f"trace {trace_id!r}")
        if doc is None:
            return self._page("Trace", "/ui/traces", pages.note(f"no trace {trace_id} in the store"), 404)
        return self._page(f"Trace {trace_id}", "/ui/traces", pages.waterfall(doc, contents))

    # --- SQL -----------------------------------------------------------------------------------

    async def _answer(self, request: web.Request, sql: str):
        """The SQL box's answer, through the sandbox (a tenant's key: scoped to its rows, tenants.py)."""
        store = self._host.get(SpanStore, self.config.storage, str(self.id))
        principal = request.get(PRINCIPAL)
        limits = QueryLimits(max_rows=self.config.max_rows, timeout_s=self.config.query_timeout,
                             tenant=principal.tenant if principal is not None else None,
                             wait_s=min(QUERY_WAIT_S, self.config.query_timeout))
        return await self._queries.run(time.monotonic() + limits.timeout_s, store.query, sql, 0, 0.0, limits)

    async def _sql(self, request: web.Request) -> web.Response:
        text = request.query.get("q", "")
        if self._read() is None:
            return self._page("SQL", "/ui/sql", pages.note(f"No span store: {TURN_ON['store']}."))
        if not text.strip():
            return self._page("SQL", "/ui/sql", pages.sql("SELECT agent_id, count(*) AS spans FROM spans GROUP BY ALL "
                                                          "ORDER BY spans DESC", None, None))
        try:
            result = await self._answer(request, text)
        except QueryError as exc:
            return self._page("SQL", "/ui/sql", pages.sql(text, None, str(exc)), status=exc.status)
        return self._page("SQL", "/ui/sql", pages.sql(text, result, None))

    async def _sql_csv(self, request: web.Request) -> web.Response:
        text = request.query.get("q", "")
        try:
            if self._read() is None:
                raise QueryError("no span store configured", 503)
            result = await self._answer(request, text)
        except QueryError as exc:
            return web.Response(text=str(exc), status=exc.status, headers=HEADERS)
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(result.columns)
        writer.writerows(["" if v is None else v for v in row] for row in result.rows)
        return web.Response(text=out.getvalue(), content_type="text/csv", headers={
            **HEADERS, "Content-Disposition": 'attachment; filename="query.csv"'})

    def describe(self) -> list[str]:
        # The scheme is the listener's: the admin extension's TLS, when set, serves these routes too.
        return [f"console on {self.config.endpoint}/ui (fleet, SLOs, costs, incidents, traces, SQL)"]

    def _shutdown(self) -> None:
        self._host.http.remove_routes(self.config.endpoint, list(self.ROUTES))
        self._pool.shutdown(wait=False)
        self._queries.shutdown()
