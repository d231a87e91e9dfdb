"""``agent-sre mcp``: the SRE state as MCP tools, for agents and IDE assistants (docs/mcp.md).

    agent-sre mcp [--transport stdio|http] [--listen 127.0.0.1:8765] [--config FILE] [--endpoint HOST:PORT] [--db FILE]

    sre_slo_status     every SLO per agent                         agent-sre slo status
    sre_budgets        every budget account, task budgets summed   agent-sre cost summary (its budgets)
    sre_decisions      allow | freeze | throttle | circuit_open | kill per agent (and tool, task)
    sre_cost_summary   spend per day, agent and model              agent-sre cost summary
    sre_incidents      incidents, newest first                     agent-sre incidents list
    sre_incident       one incident with its log                   agent-sre incidents show
    sre_trace          one trace as a tree with its totals         agent-sre trace show
    sre_query          read-only SQL over the span store           agent-sre query

Each tool answers as its command does, from the same places: the running pipeline's admin API (the
routes the commands call), else, when no pipeline answers (or with ``--db``), the store file opened
read-only and the same functions the commands run over it (``processors.slo.factory.evaluate``,
``processors.cost.summary``, ``processors.incidents.factory``, ``processors.replay.traces``, the
SQL sandbox).  Every answer says which in ``source``.  Decisions live in the running pipeline's
memory: from a file the tool gives the last decisions the pipeline announced (its ``events``).

The server is the maintained MCP SDK's ``MCPServer``, over stdio (a client spawns the command) or
streamable HTTP (``/mcp``; on a loopback address unless ``AGENT_SRE_MCP_TOKEN`` is set, which every
request must then carry as ``Authorization: Bearer``).  Every tool only reads.
"""

# No `from __future__ import annotations`: the SDK reads the tools' parameter types from their annotations,
# which name types local to build_server.
import argparse
import ipaddress
import json
import os
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from agent_sre.pipeline.cli.admin_client import AdminClient, AdminError, AdminUnreachable
from agent_sre.pipeline.cli.common import (
    EXIT_CONFIG,
    CliError,
    StoreMissing,
    admin_client,
    budget_specs,
    load,
    note,
    open_store,
    processor_settings,
)

DEFAULT_LISTEN = "127.0.0.1:8765"
TOKEN_ENV = "AGENT_SRE_MCP_TOKEN"
MAX_SQL_ROWS = 1000  # an answer an assistant reads: the CLI's default cap, not the API's bytes
INSTRUCTIONS = ("SRE state of AI agents from agent-sre: SLOs and error budgets, cost budgets and spend, the "
                "decision for an agent (allow, freeze, throttle, circuit_open, kill), incidents, traces, and "
                "read-only SQL over the span store (table `spans`: one row per span with agent_id, span_role, "
                "model, tokens, cost_usd, status_code, ...). Every tool only reads.")


def register(sub) -> None:
    """``mcp`` on the ``agent-sre`` subparsers."""
    m = sub.add_parser("mcp", help="serve the SRE state to agents and IDE assistants over MCP (stdio or HTTP)")
    m.add_argument("--transport", choices=("stdio", "http"), default="stdio",
                   help="stdio (default: an MCP client spawns this command) or streamable HTTP")
    m.add_argument("--listen", default=DEFAULT_LISTEN, help=f"host:port for --transport http (default {DEFAULT_LISTEN})")
    m.add_argument("--allowed-host", action="append", default=[], metavar="HOST",
                   help="a Host header HTTP callers may use besides the listen address (repeatable)")
    m.add_argument("--config", help="pipeline YAML (default: the embedded default)")
    m.add_argument("--endpoint", help="admin API of a running pipeline (default: from the config)")
    m.add_argument("--db", help="read this DuckDB store (no pipeline is asked)")
    m.set_defaults(fn=cmd_mcp)


# --- the answers: the running pipeline, else its file -------------------------------------------

class NoStore(Exception):
    """The store the config names does not exist yet: no pipeline ran with it."""


class SreState:
    """What the tools answer from: the running pipeline's admin API, else the store file, read-only."""

    def __init__(self, cfg, endpoint: str | None = None, db: str | None = None):
        self.cfg = cfg
        self.endpoint = endpoint
        self.db = db

    def client(self) -> AdminClient | None:
        return admin_client(argparse.Namespace(endpoint=self.endpoint, db=self.db), self.cfg)

    def answer(self, running: Callable[[AdminClient], dict] | None, stopped: Callable[[Callable], dict],
               empty: Callable[[str], dict]) -> dict:
        """``running(client)`` from the pipeline, else ``stopped(read)`` over the file, else (no store
        yet) ``empty(why)``; with ``source`` added."""
        client = self.client()
        if client is not None and running is not None:
            try:
                return {**running(client), "source": f"the running pipeline at {client.endpoint}"}
            except AdminUnreachable:
                pass  # no pipeline running: read its file
        try:
            return {**self.read_file(stopped), "source": f"the store file {self._path()} (read-only)"}
        except NoStore as exc:
            return {**empty(str(exc)), "source": "nothing: no store yet"}

    def read_file(self, work: Callable[[Callable], dict]) -> dict:
        try:
            con = open_store(self.cfg, self.db)
        except StoreMissing as exc:
            raise NoStore(f"{exc} (no pipeline has run with this config)") from None
        try:
            return work(lambda sql, params: con.execute(sql, params).fetchall())
        finally:
            con.close()

    def _path(self) -> str:
        from agent_sre.pipeline.cli.common import store_path

        return self.db or store_path(self.cfg) or "?"

    # --- one method per tool ------------------------------------------------------------------

    def slo_status(self, agent_id: str | None) -> dict:
        def running(client: AdminClient) -> dict:
            body = client.get_json("/v1/slos")
            if not body.get("configured", True):
                raise CliError(f"the pipeline at {client.endpoint} has no slo processor", EXIT_CONFIG)
            return {"slos": body["slos"]}

        def stopped(read) -> dict:
            from agent_sre.processors.slo.factory import evaluate, window_end

            objectives = [o for s in processor_settings(self.cfg, "slo") for o in s.objectives]
            if not objectives:
                raise CliError("the config has no slo processor with objectives", EXIT_CONFIG)
            return {"slos": evaluate(read, objectives, window_end(time.time()))}

        body = self.answer(running, stopped, lambda why: {"slos": [], "note": f"no SLO data yet: {why}"})
        return _only(body, "slos", agent_id)

    def costs(self, days: int) -> dict:
        """What ``agent-sre cost summary --format json`` prints: summary, budgets, task_budgets."""
        from agent_sre.pipeline.cli.cost import task_budgets

        if not 1 <= days <= 366:
            raise CliError("days must be 1 to 366", EXIT_CONFIG)
        specs = budget_specs(self.cfg)

        def running(client: AdminClient) -> dict:
            return client.get_json("/v1/costs", {"days": days})

        def stopped(read) -> dict:
            from agent_sre.processors.cost.summary import budget_accounts, cost_summary

            if not self.db and not processor_settings(self.cfg, "cost"):
                raise CliError("the config has no cost processor", EXIT_CONFIG)
            now = time.time()
            return {"summary": cost_summary(read, specs, now, days), "budgets": budget_accounts(read, specs, now)}

        body = self.answer(running, stopped, lambda why: {"summary": [], "budgets": [], "note": f"no spend yet: {why}"})
        accounts = body.pop("budgets")
        return {**body, "budgets": [a for a in accounts if a["scope"] != "task"],
                "task_budgets": task_budgets(accounts, specs)}

    def decisions(self, agent_id: str | None, tool: str | None, task: str | None) -> dict:
        def running(client: AdminClient) -> dict:
            if agent_id is None:
                return client.get_json("/v1/decisions")
            decision = client.get_json(f"/v1/decisions/{_quoted(agent_id)}", {"tool": tool, "task": task})
            return {"decisions": [decision]}

        def stopped(read) -> dict:
            return {"decisions": announced_decisions(read, agent_id, tool, task),
                    "note": "no pipeline answers: these are the last decisions it announced (budgets and "
                            "breakers are evaluated only while it runs); an agent not listed was allowed"}

        return self.answer(running, stopped, lambda why: {"decisions": [], "note": f"no decisions yet: {why}"})

    def incidents(self, include_resolved: bool) -> dict:
        def running(client: AdminClient) -> dict:
            return client.get_json("/v1/incidents", {"all": str(include_resolved).lower()})

        def stopped(read) -> dict:
            from agent_sre.processors.incidents.factory import incident_list

            return {"incidents": _incidents_table(lambda: incident_list(read, include_resolved))}

        return self.answer(running, stopped, lambda why: {"incidents": [], "note": f"no incidents yet: {why}"})

    def incident(self, incident_id: str) -> dict:
        def running(client: AdminClient) -> dict:
            return client.get_json(f"/v1/incidents/{_quoted(incident_id)}")

        def stopped(read) -> dict:
            from agent_sre.processors.incidents.factory import incident_detail

            found = _incidents_table(lambda: incident_detail(read, incident_id))
            if found is None:
                raise CliError(f"no incident {incident_id!r}")
            return found

        def empty(why: str) -> dict:
            raise CliError(f"no incident {incident_id!r} ({why})")

        return self.answer(running, stopped, empty)

    def trace(self, trace_id: str, follow_links: bool) -> dict:
        from agent_sre.processors.replay.traces import load_trace, valid_trace_id

        trace_id = trace_id.strip().lower()
        if not valid_trace_id(trace_id):
            raise CliError(f"a trace id is 32 hex digits (got {trace_id!r})", EXIT_CONFIG)

        def running(client: AdminClient) -> dict:
            return client.get_json(f"/v1/traces/{trace_id}", {"links": None if follow_links else "false"})

        def stopped(read) -> dict:
            found = load_trace(read, trace_id, follow_links)
            if found is None:
                raise CliError(f"no trace {trace_id} in {self._path()}")
            return found

        def empty(why: str) -> dict:
            raise CliError(f"no trace {trace_id}: {why}")

        return self.answer(running, stopped, empty)

    def query(self, sql: str, max_rows: int) -> dict:
        """``sql`` as ``agent-sre query`` runs it: POST /v1/query, else the sandbox over the file."""
        max_rows = max(1, min(max_rows, MAX_SQL_ROWS))
        client = self.client()
        if client is not None:
            try:
                body = client.post_json("/v1/query", {"sql": sql, "max_rows": max_rows})
                return {**body, "source": f"the running pipeline at {client.endpoint}"}
            except AdminUnreachable:
                pass  # no pipeline running: the sandbox over its file (it needs the connection, not read)
        from agent_sre.pipeline.storage.sandbox import QueryError, file_query_limits, run_query

        try:
            con = open_store(self.cfg, self.db)
        except StoreMissing as exc:
            raise CliError(f"no data to query yet: {exc}") from None
        try:
            result = run_query(con, sql, file_query_limits(max_rows))  # the CLI's limits
        except QueryError as exc:
            raise CliError(f"query failed: {exc}") from None
        finally:
            con.close()
        body = json.loads(json.dumps(result.to_json(), default=str))
        return {**body, "source": f"the store file {self._path()} (read-only)"}


def announced_decisions(read: Callable, agent_id: str | None, tool: str | None, task: str | None) -> list[dict]:
    """The last ``decision`` event of every agent (and tool, task) in ``events``: what the decisions
    board announced and restores at start (``DecisionBoard.restore``), with the action in force."""
    where, params = ["kind = 'decision'"], []
    for key, value in (("agent_id", agent_id), ("tool", tool), ("task", task)):
        if value is not None:
            where.append(f"labels['{key}'] = ?")
            params.append(value)
    rows = read("SELECT labels['agent_id'], labels['tool'], labels['task'], arg_max(name, time_ns), "
                "arg_max(state, time_ns), arg_max(labels['reason'], time_ns), arg_max(summary, time_ns), "
                f"max(time_ns) FROM events WHERE {' AND '.join(where)} GROUP BY 1, 2, 3 ORDER BY 1, 2, 3", params)
    return [{"agent_id": agent, "tool": tool_ or None, "task": task_ or None,
             "action": action if state == "firing" else "allow", "reason": reason if state == "firing" else "",
             "summary": summary, "announced_ns": at} for agent, tool_, task_, action, state, reason, summary, at in rows]


def _incidents_table(work: Callable[[], Any]) -> Any:
    import duckdb

    try:
        return work()
    except duckdb.CatalogException:
        raise CliError("the store has no incidents (no incidents processor has run on it)") from None


def _only(body: dict, key: str, agent_id: str | None) -> dict:
    if agent_id is not None:
        body[key] = [r for r in body[key] if r.get("agent_id") == agent_id]
    return body


def _quoted(text: str) -> str:
    return urllib.parse.quote(text, safe="")


# --- the MCP server -----------------------------------------------------------------------------

def build_server(state: SreState):
    """The ``MCPServer`` with the SRE tools over ``state``."""
    from typing import Annotated

    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError
    from mcp_types import ToolAnnotations
    from pydantic import Field

    server = MCPServer("agent-sre", instructions=INSTRUCTIONS, version=_version(), log_level="WARNING")
    read_only = ToolAnnotations(read_only_hint=True, open_world_hint=False)

    def tool(fn: Callable[..., dict]) -> Callable[..., dict]:
        """Registered read-only, a ``CliError`` answered as the tool's error (what the command prints)."""
        import functools

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> dict:
            try:
                return fn(*args, **kwargs)
            except CliError as exc:
                raise ToolError(str(exc)) from None
            except AdminError as exc:
                raise ToolError(f"the pipeline answered {exc.status}: {exc}") from None

        server.add_tool(call, annotations=read_only)
        return call

    Agent = Annotated[str | None, Field(description="only this agent (its agent_id); all agents when omitted")]

    @tool
    def sre_slo_status(agent_id: Agent = None) -> dict[str, Any]:
        """Every SLO per agent, evaluated now: SLI value against the target, error budget remaining (1.0 = untouched,
        0 = exhausted), burn rates per window, firing burn-rate alerts, and a status (ok, warning, critical, exhausted)."""
        return state.slo_status(agent_id)

    @tool
    def sre_budgets() -> dict[str, Any]:
        """Every cost budget account: spent and limit in USD and utilisation for the agent-day, org-month, model or
        tenant budgets; task budgets summed per budget (tasks, largest task spend, how many throttled or killed)."""
        body = state.costs(1)
        return {k: v for k, v in body.items() if k != "summary"}

    @tool
    def sre_decisions(agent_id: Agent = None,
                      tool: Annotated[str | None, Field(description="the tool about to be called (per-tool breakers)")] = None,
                      task: Annotated[str | None, Field(description="the task (trace id) it belongs to (task budgets)")] = None,
                      ) -> dict[str, Any]:
        """Whether an agent should proceed: allow, freeze (an SLO's error budget is exhausted: no releases), throttle
        (with a suggested rate), circuit_open (a breaker is open, with until) or kill (a budget is spent), with every
        source's reason.  Without agent_id: every agent the budgets and breakers know."""
        return state.decisions(agent_id, tool, task)

    @tool
    def sre_cost_summary(days: Annotated[int, Field(ge=1, le=366, description="how many days back")] = 7) -> dict[str, Any]:
        """LLM spend per day, agent and model with the agent's daily budget utilisation, plus every budget account
        (as agent-sre cost summary)."""
        return state.costs(days)

    @tool
    def sre_incidents(include_resolved: Annotated[bool, Field(description="resolved incidents too")] = False
                      ) -> dict[str, Any]:
        """Incidents, newest first: id, agent, priority (P1 highest), state (open, acknowledged, investigating,
        mitigated, resolved), when opened, how many signals, and a title."""
        return state.incidents(include_resolved)

    @tool
    def sre_incident(incident_id: Annotated[str, Field(description="e.g. INC-00001")]) -> dict[str, Any]:
        """One incident with its log: every signal (SLO alerts, budgets, decisions, breakers, anomalies, policy
        violations) and every state change, with who and why."""
        return state.incident(incident_id)

    @tool
    def sre_trace(trace_id: Annotated[str, Field(description="32 hex digits")],
                  follow_links: Annotated[bool, Field(description="include the traces it delegated to or was delegated from")] = True,
                  ) -> dict[str, Any]:
        """One trace as a span tree (agents, LLM calls, tools, delegations) with totals: spans, errors, tokens,
        cost, duration, per trace and overall."""
        return state.trace(trace_id, follow_links)

    @tool
    def sre_query(sql: Annotated[str, Field(description="one SELECT (or EXPLAIN SELECT) in DuckDB SQL")],
                  max_rows: Annotated[int, Field(ge=1, le=MAX_SQL_ROWS)] = 200) -> dict[str, Any]:
        """Read-only SQL over the span store: SELECT only, no files, limited in rows, time and memory.  Tables:
        spans (trace_id, span_id, parent_span_id, name, start_ns, end_ns, duration_ns, status_code, service_name,
        agent_id, agent_version, session_id, task_name, task_success, span_role, tool_name, model, provider,
        input_tokens, output_tokens, cost_usd, delegation_from, delegation_to, error_type, attributes MAP, ...),
        events (alerts, budgets, decisions, incidents), incidents, sli_minutes, cost_minutes."""
        return state.query(sql, max_rows)

    return server


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("agent-sre")
    except PackageNotFoundError:
        return ""


def cmd_mcp(args: argparse.Namespace) -> int:
    """Serve the tools over stdio until the client closes it, or over HTTP until interrupted."""
    try:
        import mcp.server.mcpserver  # noqa: F401
    except ImportError:
        raise CliError("agent-sre mcp needs the MCP SDK: pip install 'mcp>=2.3'", EXIT_CONFIG) from None
    state = SreState(load(args.config), args.endpoint, args.db)
    server = build_server(state)
    if args.transport == "stdio":
        server.run("stdio")
        return 0
    return _serve_http(server, args.listen, args.allowed_host)


def _serve_http(server, listen: str, allowed_hosts: list[str]) -> int:
    import uvicorn
    from mcp.server.transport_security import TransportSecuritySettings

    host, port = _host_port(listen)
    token = os.environ.get(TOKEN_ENV, "").strip() or None
    loopback = _is_loopback(host)
    if not loopback and token is None:
        raise CliError(f"--listen {listen} is not a loopback address: set {TOKEN_ENV} to a secret every caller "
                       "sends as Authorization: Bearer (the tools read the span store)", EXIT_CONFIG)
    security = None  # on a loopback address the SDK allows localhost names only (DNS rebinding)
    if not loopback or allowed_hosts:
        names = [host, "localhost", "127.0.0.1", *allowed_hosts]
        security = TransportSecuritySettings(allowed_hosts=[f"{h}:*" for h in names] + names,
                                             allowed_origins=[f"{s}://{h}:*" for h in names for s in ("http", "https")])
    app = server.streamable_http_app(host=host, transport_security=security)
    if token is not None:
        app = _bearer_only(app, token)
    note(f"MCP server (streamable HTTP) on http://{listen}/mcp" + (" (bearer token required)" if token else ""))
    uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning")).run()
    return 0


def _bearer_only(app, token: str):
    """``app`` behind ``Authorization: Bearer <token>`` (compared in constant time)."""
    import hmac  # here: it loads OpenSSL's hashes (~10 ms of every command's start-up otherwise)

    expected = f"Bearer {token}".encode()

    async def guarded(scope, receive, send) -> None:
        if scope["type"] == "http":
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, expected):
                await send({"type": "http.response.start", "status": 401, "headers": [
                    (b"content-type", b"application/json"), (b"www-authenticate", b'Bearer realm="agent-sre mcp"')]})
                await send({"type": "http.response.body", "body": b'{"error": "missing or wrong bearer token"}'})
                return
        await app(scope, receive, send)

    return guarded


def _host_port(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise CliError(f"--listen must be host:port (got {listen!r})", EXIT_CONFIG)
    return host.strip("[]"), int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
