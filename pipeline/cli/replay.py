"""``agent-sre replay TRACE_ID --serve HOST:PORT [--passthrough URL] [-- CMD ...]``: re-run an agent
against its recorded trace.

Serves the trace's recorded LLM answers and tool results (``processors/replay/server.py``) and prints
the environment the agent needs (``OPENAI_BASE_URL``, ``ANTHROPIC_BASE_URL``, ``AGENT_SRE_REPLAY_URL``,
and ``OTEL_RESOURCE_ATTRIBUTES=agent_sre.replay.of=<trace id>`` so the re-run's spans come back
marked).  Without a command it serves until interrupted.  With ``-- CMD`` it runs the command in that
environment, waits for it, waits for the re-run's spans to be queryable (a new trace carrying
``agent_sre.replay.of``), and prints the diff between the original and the re-run, whether the
re-run reproduced it (tool sequence, answers, tool results) and the first divergence.

Exit status: 0 when the re-run made every recorded call without diverging (and the command
succeeded), 1 on a divergence, else the command's own non-zero status.

The store is read through the running pipeline's ``POST /v1/query`` (the only way to read a store
a pipeline holds open; parameters are inlined as SQL literals), or, when none answers or with
``--db``, from the file read-only; the re-run's spans can only be collected by a running pipeline.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from agent_sre.pipeline.cli.admin_client import AdminClient, AdminError, AdminUnreachable
from agent_sre.pipeline.cli.common import CliError, admin_client, note, open_store, reader, targets

REPLAY_OF = "agent_sre.replay.of"
EXIT_DIVERGED = 1
_POLL_S = 0.5

_OPTIONS: tuple[tuple[str, dict], ...] = (
    ("--serve", {"default": "127.0.0.1:8900", "metavar": "HOST:PORT", "help": "where to serve (default 127.0.0.1:8900)"}),
    ("--passthrough", {"metavar": "URL", "help": "forward unrecorded LLM calls to this endpoint (e.g. "
                                                 "https://api.openai.com); unrecorded tool calls run the real tool"}),
    ("--wait", {"type": float, "default": 30.0, "metavar": "SECONDS",
                "help": "how long to wait for the re-run's spans after the command (default 30)"}),
    ("--config", {"help": "pipeline YAML (default: the embedded default)"}),
    ("--endpoint", {"help": "admin API of a running pipeline (default: from the config)"}),
    ("--db", {"help": "a DuckDB store to read when no pipeline runs"}),
    ("--format", {"choices": ["table", "json"], "default": "table"}),
)


def register(sub) -> None:
    r = sub.add_parser("replay", help="serve a trace's recorded LLM and tool answers so the agent re-runs offline",
                       description="agent-sre replay TRACE_ID --serve 127.0.0.1:8900 [--passthrough URL] [-- CMD ...]")
    r.add_argument("trace_id")
    for flag, kw in _OPTIONS:
        r.add_argument(flag, **kw)
    # Options may follow the trace id and the command follows "--": argparse cannot mix a
    # positional, options and a command line, so what follows the trace id is parsed in cmd_replay.
    r.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    r.set_defaults(fn=cmd_replay)


def _split(args: argparse.Namespace) -> list[str]:
    """The options after the trace id into ``args``; the command after ``--`` returned."""
    rest = list(args.rest)
    if "--" in rest:
        i = rest.index("--")
        options, command = rest[:i], rest[i + 1:]
    elif rest and not rest[0].startswith("-"):  # argparse dropped a "--" right after the trace id
        options, command = [], rest
    else:
        options, command = rest, []
    p = argparse.ArgumentParser(prog="agent-sre replay", add_help=False)
    for flag, kw in _OPTIONS:
        p.add_argument(flag, **{k: v for k, v in kw.items() if k != "default"}, default=argparse.SUPPRESS)
    try:
        p.parse_args(options, namespace=args)
    except SystemExit:
        raise CliError(f"replay: cannot read the options {' '.join(options)}", 2) from None
    return command


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise CliError(f"--serve must be HOST:PORT (got {text!r})", 2)
    return host.strip("[]"), int(port)


# --- reading the store ----------------------------------------------------------------------

def _literal(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    return "'" + str(value).replace("'", "''") + "'"


def inline(sql: str, params: list) -> str:
    """``sql`` with each ``?`` outside quotes replaced by its parameter as a SQL literal."""
    out, values, quote = [], iter(params or []), None
    for ch in sql:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "?":
            out.append(_literal(next(values)))
            continue
        out.append(ch)
    return "".join(out)


def _maps(value: object) -> object:
    """The admin API's JSON of a MAP (a list of [key, value] pairs) as a dict, inside lists and structs too."""
    if isinstance(value, list):
        if value and all(isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) for v in value):
            return {k: v for k, v in value}
        return [_maps(v) for v in value]
    if isinstance(value, dict):
        return {k: _maps(v) for k, v in value.items()}
    return value


def admin_reader(client: AdminClient, max_rows: int = 100_000):
    """``read(sql, params) -> rows`` through the running pipeline's ``POST /v1/query``."""
    def read(sql: str, params: list) -> list[tuple]:
        try:
            body = client.post_json("/v1/query", {"sql": inline(sql, params), "max_rows": max_rows})
        except AdminUnreachable:
            raise
        except AdminError as exc:
            raise RuntimeError(f"the pipeline's query API refused: {exc}") from None
        if body.get("truncated_by"):
            raise CliError(f"the pipeline's query API cut the answer at its {body['truncated_by']} limit: the trace "
                           "is larger than one /v1/query answer (raise the admin extension's limits)")
        return [tuple(_maps(v) for v in row) for row in body["rows"]]
    return read


def _store_reader(args: argparse.Namespace):
    """(read, close, running): through the running pipeline, else its file read-only."""
    cfg = targets(args.config)
    client = admin_client(args, cfg)
    if client is not None:
        read = admin_reader(client)
        try:
            read("SELECT 1", [])
            return read, lambda: None, True
        except AdminUnreachable:
            pass
    con = open_store(cfg, args.db)
    return reader(con), con.close, False


# --- the command ------------------------------------------------------------------------------

def agent_environment(url: str, trace_id: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """What the re-running agent needs: the three endpoints and the replay mark on its spans."""
    existing = (base if base is not None else os.environ).get("OTEL_RESOURCE_ATTRIBUTES", "").strip(", ")
    marks = [kv for kv in existing.split(",") if kv and not kv.strip().startswith(REPLAY_OF + "=")]
    return {"OPENAI_BASE_URL": f"{url}/v1", "ANTHROPIC_BASE_URL": url, "AGENT_SRE_REPLAY_URL": url,
            "OTEL_RESOURCE_ATTRIBUTES": ",".join([*marks, f"{REPLAY_OF}={trace_id}"])}


def cmd_replay(args: argparse.Namespace) -> int:
    from agent_sre.processors.replay.contents import ContentsError, load_recording
    from agent_sre.processors.replay.server import ReplayServer, ReplaySession

    command = _split(args)
    host, port = _host_port(args.serve)
    read, close, running = _store_reader(args)
    try:
        try:
            rec = load_recording(read, args.trace_id)
        except ContentsError as exc:
            raise CliError(str(exc)) from None
        session = ReplaySession(rec, args.passthrough)
        try:
            server = ReplayServer(session, host, port).start()
        except OSError as exc:
            raise CliError(str(exc)) from None
        try:
            env = agent_environment(server.url, args.trace_id)
            _announce(rec, server.url, env, args.format)
            if not command:
                return _serve_until_interrupted(session, args.format)
            return _run(command, env, session, read, running, args)
        finally:
            server.stop()
    finally:
        close()


def _announce(rec: dict, url: str, env: dict[str, str], fmt: str) -> None:
    tools = ", ".join(dict.fromkeys(str(t["name"]) for t in rec["tool_calls"])) or "none"
    sources = ", ".join(sorted({c["source"] for c in rec["llm_calls"]})) or "-"
    out = sys.stderr if fmt == "json" else sys.stdout  # standard output holds the JSON answer only
    print(f"replaying trace {rec['trace_id']}: {len(rec['llm_calls'])} LLM calls (recorded as {sources}), "
          f"{len(rec['tool_calls'])} tool calls ({tools})", file=out)
    print(f"serving on {url}; the agent's environment:", file=out)
    for k, v in env.items():
        print(f"  export {k}={v}", file=out)
    out.flush()


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _serve_until_interrupted(session, fmt: str) -> int:
    """Serve until Ctrl-C or SIGTERM, then print what was served and the first divergence."""
    import signal

    signal.signal(signal.SIGTERM, _interrupted)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    report = session.report()
    if fmt == "json":
        print(json.dumps({"report": report}, indent=2, default=str))
    else:
        print(render_report(report))
    return EXIT_DIVERGED if report["first_divergence"] else 0


def _replay_traces(read, trace_id: str) -> dict[str, tuple[int, int]]:
    """{trace id: (spans, latest end)} of the traces marked as replays of ``trace_id``."""
    rows = read("SELECT trace_id, count(*), max(end_ns) FROM spans "
                f"WHERE map_extract_value(resource_attributes, '{REPLAY_OF}') = ? "
                f"OR map_extract_value(attributes, '{REPLAY_OF}') = ? GROUP BY trace_id", [trace_id, trace_id])
    return {r[0]: (int(r[1]), int(r[2] or 0)) for r in rows}


def _wait_for_rerun(read, trace_id: str, before: set[str], started_ns: int, wait_s: float) -> str | None:
    """The new replay trace once its span count has stopped changing (the SDK exports as spans end)."""
    deadline = time.monotonic() + wait_s
    last: tuple | None = None
    while time.monotonic() < deadline:
        new = {t: v for t, v in _replay_traces(read, trace_id).items() if t not in before}
        if new:
            best = max(new, key=lambda t: (new[t][1] >= started_ns, new[t][0]))
            if last == (best, new[best][0]):
                return best
            last = (best, new[best][0])
        time.sleep(_POLL_S)
    return last[0] if last else None


def _run(command: list[str], env: dict[str, str], session, read, running: bool, args) -> int:
    from agent_sre.processors.replay.contents import read_recording, reproduction

    before = set(_replay_traces(read, args.trace_id)) if running else set()
    started_ns = time.time_ns()
    child_env = {**os.environ, **env}
    try:
        code = subprocess.run(command, env=child_env, check=False).returncode
    except OSError as exc:
        raise CliError(f"cannot run {command[0]}: {exc}") from None
    report = session.report()
    result: dict = {"trace_id": args.trace_id, "command": {"argv": command, "exit_code": code},
                    "report": report, "replay_trace_id": None, "reproduction": None, "diff": None}
    if running:
        rerun = _wait_for_rerun(read, args.trace_id, before, started_ns, args.wait)
        result["replay_trace_id"] = rerun
        if rerun is not None:
            result["reproduction"] = reproduction(session.recording, read_recording(read, rerun))
            result["diff"] = _diff(read, args.trace_id, rerun)
    else:
        note("no running pipeline: the re-run's spans are not collected, so there is no diff "
             "(run the pipeline and point the agent's OTLP exporter at it)")
    if args.format == "json":
        print(json.dumps(result, indent=2, default=str))
    else:
        print(render_result(result, color=sys.stdout.isatty()))
    if report["first_divergence"]:
        return EXIT_DIVERGED
    return code if code else 0


def _diff(read, a: str, b: str) -> dict | None:
    try:
        from agent_sre.processors.replay.diff import diff_traces
    except ImportError:
        return None
    return diff_traces(read, a, b)


# --- text ---------------------------------------------------------------------------------------

def _short(value: object, width: int = 100) -> str:
    if value is None or value == "":
        return "(nothing)"
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= width else text[:width - 1] + "…"


def render_report(report: dict) -> str:
    llm, tools = report["llm"], report["tools"]
    lines = [f"served {llm['served']} of {llm['recorded']} recorded LLM calls and {tools['served']} of "
             f"{tools['recorded']} tool calls"]
    first = report["first_divergence"]
    if first is None:
        lines.append("no divergence")
        return "\n".join(lines)
    what = "LLM call" if first["kind"] == "llm" else "tool call"
    lines.append(f"DIVERGED at {what} {first['step']}: {first['why']}"
                 + (" (passed through)" if first.get("passed_through") else ""))
    diff = first.get("first_difference")
    if diff:
        lines.append(f"  expected: {_short(diff['expected'])}")
        lines.append(f"  got:      {_short(diff['got'])}")
    elif first["kind"] == "tool" and (first.get("expected") or first.get("got")):
        lines.append(f"  expected: {_short(first.get('expected'))}")
        lines.append(f"  got:      {_short(first.get('got'))}")
    if len(report["divergences"]) > 1:
        lines.append(f"  ({len(report['divergences']) - 1} more divergence(s) after it)")
    return "\n".join(lines)


def render_reproduction(rep: dict) -> str:
    seq = rep["tool_sequence"]
    names = " -> ".join(c[0] for c in seq["original"]) or "(none)"
    lines = [f"tool sequence: {'same' if seq['same'] else 'CHANGED'} ({names})"]
    if not seq["same"]:
        lines.append(f"  re-run: {' -> '.join(c[0] for c in seq['rerun']) or '(none)'}")
    for label, rows in (("LLM answers", rep["llm_outputs"]), ("tool results", rep["tool_results"])):
        same = sum(1 for r in rows if r["same"])
        lines.append(f"{label}: {same} of {len(rows)} identical")
        for r in rows:
            if not r["same"]:
                lines.append(f"  step {r['step']}: {_short(r['original'], 60)} -> {_short(r['rerun'], 60)}")
    return "\n".join(lines)


def render_result(result: dict, color: bool = False) -> str:
    lines = [f"command exited {result['command']['exit_code']}", render_report(result["report"])]
    if result["replay_trace_id"]:
        lines.append(f"re-run trace: {result['replay_trace_id']} ({REPLAY_OF}={result['trace_id']})")
        lines.append(render_reproduction(result["reproduction"]))
        if result["diff"] is not None:
            from agent_sre.processors.replay.diff import render_diff

            lines += ["", render_diff(result["diff"], color)]
    elif result["command"] is not None:
        lines.append("re-run trace: not found (no running pipeline, or its spans did not arrive in time)")
    return "\n".join(lines)
