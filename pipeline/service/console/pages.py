"""HTML of each console page, from the data ``fleet.py`` gathers: plain functions, values escaped here.

Pages are server-rendered (no JavaScript needed to read them); charts are inline SVG (``svg.py``)."""

from __future__ import annotations

import datetime as dt
import urllib.parse
from html import escape

from agent_sre.pipeline.service.console import svg

NAV = (("/ui", "Fleet"), ("/ui/slo", "SLOs"), ("/ui/costs", "Costs"), ("/ui/incidents", "Incidents"),
       ("/ui/traces", "Traces"), ("/ui/sql", "SQL"))


def layout(title: str, active: str, body: str, refresh_s: float = 0.0) -> str:
    links = "".join(f'<a href="{href}"{" class=on" if href == active else ""}>{name}</a>' for href, name in NAV)
    meta = f'<meta http-equiv="refresh" content="{refresh_s:g}">' if refresh_s > 0 else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">{meta}<title>{escape(title)} · agent-sre'
            '</title><link rel="stylesheet" href="/ui/static/console.css"><link rel="icon" href="data:,">'
            f'<script src="/ui/static/console.js" defer></script></head><body><header><b>agent-sre</b>{links}'
            f'</header><main><h1>{escape(title)}</h1>{body}</main></body></html>')


def note(text: str) -> str:
    return f'<p class="note">{text}</p>'


def q(**params: object) -> str:
    return urllib.parse.urlencode({k: v for k, v in params.items() if v not in (None, "")})


def when(ns: int | None) -> str:
    if not ns:
        return ""
    return dt.datetime.fromtimestamp(ns / 1e9, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def ms(ns: int | None) -> str:
    return "" if ns is None else f"{ns / 1e6:,.0f} ms" if ns < 10_000_000_000 else f"{ns / 1e9:,.1f} s"


def usd(value: float | None) -> str:
    return "" if value is None else f"${value:,.4f}" if value < 1 else f"${value:,.2f}"


def pill(value: str, prefix: str) -> str:
    return f'<span class="pill {prefix}-{escape(value)}">{escape(value)}</span>' if value else ""


def table(table_id: str, headers: list[tuple[str, str]], rows: list[str], sort_link=None) -> str:
    """``headers``: (label, css); ``sort_link(label)`` -> href makes a header a sort link."""
    ths = "".join(f'<th class="{css}">' + (f'<a href="{escape(sort_link(label))}">{escape(label)}</a>'
                                           if sort_link and sort_link(label) else escape(label)) + "</th>"
                  for label, css in headers)
    return f'<table id="{table_id}"><thead><tr>{ths}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


# --- fleet overview -----------------------------------------------------------------------------

SORTS = {"agent": "agent", "SLO status": "status", "spend": "spend", "errors (1h)": "errors",
         "incidents": "incidents", "spans/s": "rate"}


def overview(agents: list[dict], notes: list[str], sort: str, text: str, refresh_s: float) -> str:
    def sort_link(label: str) -> str | None:
        key = SORTS.get(label)
        return f"/ui?{q(sort=key, q=text)}" if key else None

    rows = []
    for a in agents:
        agent = escape(a["agent_id"])
        bars = "".join(f'<div>{svg.budget_bar(b["utilisation"], b.get("throttle_at"), b.get("kill_at"), label=b["budget"])}'
                       f' <span class="muted">{escape(b["budget"])} {b["utilisation"]:.0%}</span></div>'
                       for b in a["budgets"])
        inc = (f'<a href="/ui/incidents?{q(agent=a["agent_id"])}">{a["open_incidents"]}</a>'
               if a["open_incidents"] else "0")
        rows.append(
            f'<tr data-agent="{agent}"><td><a class="agent" href="/ui/traces?{q(agent=a["agent_id"])}">{agent}</a></td>'
            f'<td>{pill(a["status"], "s")} <a href="/ui/slo?{q(agent=a["agent_id"])}" class="muted">'
            f'{a["slos"]} SLO{"s" if a["slos"] != 1 else ""}</a></td>'
            f'<td class="num">{_pct1(a["budget_remaining"])}</td>'
            f'<td>{bars}</td><td class="num spend">{usd(a["spend_usd"])}</td><td>{escape(a["breaker"])}</td>'
            f'<td class="decision">{pill(a["decision"], "a")}</td><td class="num incidents">{inc}</td>'
            f'<td class="num rate">{a["spans_per_s"]:.2f}</td>'
            f'<td><a href="/ui/traces?{q(agent=a["agent_id"], since="1h")}">'
            f'{svg.sparkline(a["spans_series"], label="spans per minute, last hour")}</a></td>'
            f'<td class="num errors">{a["error_rate"]:.1%}</td>'
            f'<td><a href="/ui/traces?{q(agent=a["agent_id"], since="1h", status="error")}">'
            f'{svg.sparkline(a["error_series"], label="error rate per minute, last hour", css="spark err")}</a></td></tr>')
    filters = (f'<form class="filters" method="get" action="/ui"><input name="q" value="{escape(text)}" '
               f'placeholder="filter agents" data-filter="fleet"><input type="hidden" name="sort" value="{escape(sort)}">'
               f'<button>Filter</button><span class="muted">{len(agents)} agents · refreshes every '
               f'{refresh_s:g}s (polling) · sparklines: last 60 minutes</span></form>')
    headers = [("agent", ""), ("SLO status", ""), ("budget left", "num"), ("cost budgets", ""), ("spend", "num"),
               ("breaker", ""), ("decision", ""), ("incidents", "num"), ("spans/s", "num"), ("spans/min", ""),
               ("errors (1h)", "num"), ("error rate/min", "")]
    return "".join(note(n) for n in notes) + filters + table("fleet", headers, rows, sort_link)


# --- SLOs --------------------------------------------------------------------------------------

def slo_list(rows: list[dict]) -> str:
    out = []
    for r in rows:
        link = f'/ui/slo?{q(agent=r["agent_id"], slo=r["slo"])}'
        out.append(f'<tr><td><a href="{escape(link)}">{escape(r["slo"])}</a></td><td>{escape(r["agent_id"])}</td>'
                   f'<td>{pill(r["status"], "s")}</td><td class="num">{r["target"]:.3%}</td>'
                   f'<td class="num">{_pct(r["sli_value"])}</td><td class="num">{r["budget_remaining"]:.1%}</td>'
                   f'<td class="num">{r["events"]:,}</td><td class="num">{r["bad_events"]:,}</td>'
                   f'<td>{escape(", ".join(r["firing"]))}</td></tr>')
    headers = [("SLO", ""), ("agent", ""), ("status", ""), ("target", "num"), ("SLI", "num"),
               ("budget left", "num"), ("events", "num"), ("bad", "num"), ("firing", "")]
    return '<input placeholder="filter" data-filter="slos">' + table("slos", headers, out)


def _pct1(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.3%}"


def slo_detail(row: dict, thresholds: dict[str, float], history: list[tuple], series: list[tuple],
               hourly: list[float]) -> str:
    head = (f'<div class="card"><p>{pill(row["status"], "s")} agent <b>{escape(row["agent_id"])}</b>, SLI '
            f'<code>{escape(row["sli"])}</code>, target {row["target"]:.3%} over {escape(row["window"])}</p>'
            f'<p>SLI <b class="sli">{_pct(row["sli_value"])}</b> · error budget remaining '
            f'<b class="budget">{row["budget_remaining"]:.1%}</b> · {row["events"]:,} events, {row["bad_events"]:,} bad</p>'
            f'{svg.budget_bar(1 - row["budget_remaining"], None, 1.0, width=360, label="error budget spent")}'
            '<span class="muted"> error budget spent</span></div>')
    burn = (f'<div class="card"><h2>Burn rate per window</h2>{svg.burn_rates(row["burn_rates"], thresholds)}'
            '<p class="muted">Bars: burn rate over each alert window (1x spends the budget exactly over the SLO '
            'window); dashed: the alert threshold for that window; red: at or over it.</p></div>')
    page = thresholds.get("1h", max(thresholds.values(), default=1.0))
    traces = f'/ui/traces?{q(agent=row["agent_id"], status="error", since="24h")}'
    line = (f'<div class="card"><h2>Burn rate per hour, last 24 hours</h2><a href="{escape(traces)}">'
            f'{svg.burn_line(hourly, page, label="burn rate per hour")}</a><p class="muted">dashed: {page:g}x, the 1h '
            'page threshold; the chart opens the failed traces behind it</p></div>')
    daily = [(d, good / total if total else 1.0) for d, good, total in series]
    sli_chart = (f'<div class="card"><h2>SLI per day</h2>{svg.daily_bars(daily, fmt=lambda v: f"{v:.3%}", top=1.0)}'
                 f'<p class="muted">the good share of events each day of the last 30 (sli_minutes)</p></div>')
    rows = [f'<tr><td>{when(t)}</td><td>{escape(state)}</td><td>{escape(sev or "")}</td><td>{escape(name or "")}</td>'
            f'<td>{escape(summary or "")}</td></tr>' for t, state, sev, name, summary in history]
    hist = '<h2>Firing history</h2>' + (table("history", [("time (UTC)", ""), ("state", ""), ("severity", ""),
                                                           ("rule", ""), ("summary", "")], rows)
                                         if rows else '<p class="muted">no alert has fired</p>')
    return head + burn + line + sli_chart + hist


# --- costs -------------------------------------------------------------------------------------

def costs(answer: dict, days: list[tuple[str, float]], anomalies: set[str], top: list[tuple]) -> str:
    chart = (f'<div class="card"><h2>Spend per day</h2>{svg.daily_bars(days, anomalies, href="/ui/traces?day=")}'
             '<p class="muted">a red dot marks a day with a cost anomaly; a bar opens that day\'s traces</p></div>')
    summary = [f'<tr><td>{escape(r["day"])}</td><td>{escape(r["agent_id"])}</td><td>{escape(r["model"])}</td>'
               f'<td class="num">{usd(r["cost_usd"])}</td><td class="num">{r["llm_spans"]:,}</td></tr>'
               for r in answer["summary"]]
    budgets = [f'<tr><td>{escape(b["budget"])}</td><td>{escape(b["scope"])}</td><td>{escape(b["subject"])}</td>'
               f'<td>{escape(b["period"])}</td><td class="num">{usd(b["spent_usd"])}</td>'
               f'<td class="num">{usd(b["limit_usd"])}</td><td>{svg.budget_bar(b["utilisation"], b.get("throttle_at"), b.get("kill_at"), label=b["budget"])} '
               f'{b["utilisation"]:.0%}</td></tr>' for b in answer["budgets"]]
    tops = [f'<tr><td><a href="/ui/traces/{escape(t)}">{escape(t[:12])}…</a></td><td>{escape(a or "")}</td>'
            f'<td>{escape(task or "")}</td><td class="num">{usd(c)}</td></tr>' for t, a, task, c in top]
    return (chart + "<h2>Budgets</h2>" + table("budgets", [("budget", ""), ("scope", ""), ("subject", ""), ("period", ""),
                                                             ("spent", "num"), ("limit", "num"), ("used", "")], budgets)
            + "<h2>Top tasks by cost</h2>" + table("top", [("trace", ""), ("agent", ""), ("task", ""), ("cost", "num")], tops)
            + "<h2>Spend per day, agent and model</h2>"
            + table("spend", [("day", ""), ("agent", ""), ("model", ""), ("cost", "num"), ("LLM calls", "num")], summary))


# --- incidents ---------------------------------------------------------------------------------

def incidents(listed: list[dict]) -> str:
    rows = [f'<tr><td><a href="/ui/incidents/{escape(i["id"])}">{escape(i["id"])}</a></td><td>{escape(i["priority"])}</td>'
            f'<td>{escape(i["state"])}</td><td>{escape(i["agent_id"] or "")}</td><td>{escape(i["title"])}</td>'
            f'<td>{when(i["opened_ns"])}</td><td class="num">{i["signals"]}</td></tr>' for i in listed]
    return ('<p><a href="/ui/incidents?all=true">all incidents</a> · <a href="/ui/incidents">open ones</a></p>'
            + table("incidents", [("id", ""), ("priority", ""), ("state", ""), ("agent", ""), ("title", ""),
                                  ("opened (UTC)", ""), ("signals", "num")], rows))


def incident(found: dict, postmortem: str) -> str:
    ident = escape(found["id"])
    cmds = "\n".join(f"agent-sre incidents {a} {ident} --why '...'" for a in ("ack", "investigate", "mitigate", "resolve"))
    log = [f'<tr><td>{when(e["time_ns"])}</td><td>{escape(e["entry"])}</td><td>{escape(e["kind"] or "")}</td>'
           f'<td>{escape(e["name"] or "")}</td><td>{escape(e["summary"] or e["why"] or "")}</td></tr>' for e in found["log"]]
    return (f'<div class="card"><p><b>{escape(found["title"])}</b></p><p>{escape(found["priority"])} · '
            f'<span class="state">{escape(found["state"])}</span> · agent {escape(found["agent_id"] or "")} · opened '
            f'{when(found["opened_ns"])} UTC</p><p class="muted">The console is read-only: move the incident on '
            f'with the CLI (or POST /v1/incidents/{ident}/ACTION):</p><pre class="cli">{cmds}</pre></div>'
            '<h2>Timeline</h2>' + table("timeline", [("time (UTC)", ""), ("entry", ""), ("kind", ""), ("name", ""),
                                                   ("what", "")], log)
            + f'<h2>Postmortem</h2><div class="card postmortem">{markdown(postmortem)}</div>')


def markdown(text: str) -> str:
    """The postmortem's Markdown (headings, lists, tables, code) as HTML; anything else as paragraphs."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), len(lines))
            out.append(f"<pre>{escape(chr(10).join(lines[i + 1:end]))}</pre>")
            i = end + 1
            continue
        if line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append([c.strip() for c in lines[i].strip("|").split("|")])
                i += 1
            body = [r for r in block[1:] if not all(set(c) <= set("-: ") for c in r)]
            out.append("<table><thead><tr>" + "".join(f"<th>{escape(c)}</th>" for c in block[0]) + "</tr></thead><tbody>"
                       + "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>" for r in body)
                       + "</tbody></table>")
            continue
        level = len(line) - len(line.lstrip("#"))
        if 0 < level <= 6 and line[level:level + 1] == " ":
            out.append(f"<h{level + 1}>{escape(line[level + 1:])}</h{level + 1}>")
        elif line.lstrip().startswith(("- ", "* ")):
            out.append(f"<li>{escape(line.lstrip()[2:])}</li>")
        elif line.strip():
            out.append(f"<p>{escape(line)}</p>")
        i += 1
    return "".join(out)


# --- traces ------------------------------------------------------------------------------------

def trace_search(form: dict[str, str], found: list[tuple], window: str) -> str:
    def field(name: str, placeholder: str) -> str:
        return f'<input name="{name}" value="{escape(form.get(name, ""))}" placeholder="{placeholder}">'

    status = "".join(f'<option{" selected" if form.get("status", "") == s else ""}>{s}</option>' for s in ("", "ok", "error"))
    search = (f'<form class="filters" method="get" action="/ui/traces">{field("agent", "agent")}{field("task", "task")}'
              f'<select name="status">{status}</select>{field("since", "since (1h, 2d, or YYYY-MM-DD)")}'
              f'{field("min_cost", "min cost $")}{field("min_ms", "min duration ms")}{field("text", "text in attributes")}'
              f'<button>Search</button><span class="muted">{escape(window)}</span></form>')
    rows = [f'<tr{" class=err-row" if errors else ""}><td><a class="trace" href="/ui/traces/{escape(t)}">{escape(t)}</a></td>'
            f'<td>{escape(agent or "")}</td><td>{escape(task or "")}</td><td>{escape(name or "")}</td><td>{when(start)}</td>'
            f'<td class="num">{ms(dur)}</td><td class="num">{spans}</td><td class="num">{errors}</td>'
            f'<td class="num">{usd(cost)}</td></tr>' for t, agent, task, name, start, dur, spans, errors, cost in found]
    return search + table("traces", [("trace", ""), ("agent", ""), ("task", ""), ("root span", ""), ("start (UTC)", ""),
                                     ("duration", "num"), ("spans", "num"), ("errors", "num"), ("cost", "num")], rows)


def waterfall(doc: dict, contents: dict[str, dict]) -> str:
    totals = doc["totals"]
    start = totals["start_ns"] or 0
    nodes = list(_flatten(doc["roots"], 0))
    end = max([start + totals["latency_ns"], *((n["start_ns"] or 0) + (n["duration_ns"] or 0) for n, _ in nodes)])
    width = max(end - start, 1)
    rows = []
    for n, depth in nodes:
        left = ((n["start_ns"] or start) - start) / width * 300
        bar = max((n["duration_ns"] or 0) / width * 300, 1.5)
        tokens = f'{n["input_tokens"] or 0:,} → {n["output_tokens"] or 0:,}' if n["tokens"] else ""
        what = n["model"] or n["tool"] or (f'→ {n["delegate_to"]}' if n["delegate_to"] else "")
        how = "span link" if n["linked"] and n["linked"].get("via") == "link" else "agent.delegation"
        linked = (f' <span class="muted linked">⇢ trace {escape(n["trace_id"][:8])}… ({how})</span>'
                  if n["linked"] else "")
        detail = _contents(contents.get(n["span_id"]))
        rows.append(f'<tr class="{"err-row" if n["error"] else ""}" data-span="{escape(n["span_id"])}"><td>{"&nbsp;" * (3 * depth)}'
                    f'{escape(n["name"])}{linked}{detail}</td><td>{pill(n["role"], "r")}</td><td>{escape(n["agent"] or "")}</td>'
                    f'<td>{escape(what)}</td><td class="num">{tokens}</td><td class="num">{usd(n["cost_usd"])}</td>'
                    f'<td class="error">{escape(n["error"] or "")}</td><td class="num">{ms(n["duration_ns"])}</td>'
                    f'<td><svg width="300" height="12" class="wf-bar"><rect class="track" width="300" height="12" fill="#f0f2f5"/>'
                    f'<rect class="r-{escape(n["role"])}" x="{left:.1f}" width="{bar:.1f}" height="12"/></svg></td></tr>')
    summary = (f'<div class="card"><p>{totals["spans"]} spans · {totals["errors"]} errors · {usd(totals["cost_usd"])} · '
               f'{totals["tokens"] or 0:,} tokens · {ms(totals["latency_ns"])} · agents {escape(", ".join(totals["agents"]))}'
               f' · traces {len(doc["traces"])}</p><p class="muted">started {when(start)} UTC · '
               f'<a href="/v1/traces/{escape(doc["trace_id"])}?format=otlp">OTLP/JSON</a></p></div>')
    return summary + table("waterfall", [("span", ""), ("role", ""), ("agent", ""), ("model / tool", ""),
                                         ("tokens in → out", "num"), ("cost", "num"), ("error", ""), ("duration", "num"),
                                         ("timeline", "")], rows)


def _flatten(nodes: list[dict], depth: int):
    for n in nodes:
        yield n, depth
        yield from _flatten(n["children"], depth + 1)


def _contents(found: dict | None) -> str:
    if not found:
        return ""
    parts = [f'<b>{escape(m.get("role") or "")}</b>: {escape(str(m.get("content") or ""))}' for m in found.get("input", [])]
    if found.get("output"):
        parts.append(f'<b>output</b>: {escape(str(found["output"]))}')
    return f'<details class="contents"><summary>contents</summary><pre>{"<br>".join(parts)}</pre></details>'


# --- SQL ---------------------------------------------------------------------------------------

def sql(text: str, result, error: str | None) -> str:
    form = (f'<form method="get" action="/ui/sql"><textarea name="q" rows="6">{escape(text)}</textarea>'
            '<p><button>Run</button> <span class="muted">read-only: the sandbox of POST /v1/query (SELECT and '
            'EXPLAIN of a SELECT; no files; row, byte, time and memory limits)</span></p></form>')
    if error:
        return form + f'<p class="note error">{escape(error)}</p>'
    if result is None:
        return form
    rows = ["<tr>" + "".join(f"<td>{escape('' if v is None else str(v))}</td>" for v in row) + "</tr>" for row in result.rows]
    cut = f" (cut at {escape(result.truncated_by)})" if result.truncated_by else ""
    if result.pending_spans:
        cut += f"; {result.pending_spans} acknowledged spans were not in the store yet"
    return (form + f'<p class="muted">{len(result.rows)} rows{cut} in {result.elapsed_ms:.1f} ms · '
            f'<a href="/ui/sql.csv?{q(q=text)}" download="query.csv">download CSV</a></p>'
            + table("result", [(c, "") for c in result.columns], rows))
