"""The console's only assets, served by the pipeline itself (no CDN, no build step)."""

from __future__ import annotations

CSS = """
:root{--fg:#1d2330;--muted:#6b7385;--bg:#f6f7f9;--card:#fff;--line:#dde1e8;--ok:#1f9d55;--warn:#d69e2e;
--crit:#e53e3e;--dead:#822727;--info:#3182ce}
*{box-sizing:border-box}body{margin:0;font:14px/1.4 system-ui,sans-serif;color:var(--fg);background:var(--bg)}
header{display:flex;gap:18px;align-items:center;padding:10px 20px;background:#1d2330;color:#fff}
header a{color:#cfd6e4;text-decoration:none}header a.on,header a:hover{color:#fff}
header b{margin-right:12px}main{padding:16px 20px}h1{font-size:20px;margin:4px 0 12px}h2{font-size:16px}
table{border-collapse:collapse;width:100%;background:var(--card)}th,td{padding:6px 8px;border-bottom:1px solid var(--line);
text-align:left;vertical-align:middle}th a{color:inherit}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.card{background:var(--card);border:1px solid var(--line);border-radius:6px;padding:12px;margin:0 0 14px}
.muted{color:var(--muted)}.note{background:#fffbea;border:1px solid #f6e05e;padding:10px;border-radius:6px}
.pill{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;color:#fff;background:var(--muted)}
.s-healthy,.a-allow{background:var(--ok)}.s-warning,.a-throttle,.a-freeze{background:var(--warn)}
.s-critical,.a-circuit_open{background:var(--crit)}.s-exhausted,.a-kill{background:var(--dead)}
.spark polyline{stroke:var(--info);stroke-width:15}.spark.err polyline{stroke:var(--crit)}
.bar .track{fill:#edf0f4}.bar .fill{fill:var(--ok)}.bar-throttle .fill{fill:var(--warn)}.bar-kill .fill{fill:var(--crit)}
.bar line{stroke-width:2}.mark-throttle{stroke:#b7791f}.mark-kill{stroke:#9b2c2c}
.burn rect.under{fill:#90cdf4}.burn rect.over{fill:var(--crit)}.burn line.threshold{stroke:#1d2330;stroke-dasharray:4 2}
.burnline polyline{stroke:var(--crit);stroke-width:15}.burnline line.threshold{stroke:#1d2330;stroke-width:8;stroke-dasharray:40 20}
.burn text,.days text{font-size:10px;fill:var(--muted)}.days rect{fill:#63b3ed}.days .anomaly{fill:var(--crit)}
form.filters{display:flex;flex-wrap:wrap;gap:8px;margin-bottom:12px}input,select,textarea{font:inherit;padding:4px 6px}
textarea{width:100%;font-family:ui-monospace,monospace}pre{background:#f0f2f5;padding:8px;overflow:auto;white-space:pre-wrap}
.wf{position:relative;height:16px;background:#f0f2f5;min-width:240px}.wf span{position:absolute;top:2px;height:12px;border-radius:2px}
.r-llm{background:#805ad5}.r-tool{background:#38a169}.r-agent_task{background:#3182ce}.r-delegation{background:#dd6b20}
.r-other{background:#a0aec0}
rect.r-llm{fill:#805ad5}rect.r-tool{fill:#38a169}rect.r-agent_task{fill:#3182ce}rect.r-delegation{fill:#dd6b20}
rect.r-other{fill:#a0aec0}.wf-bar rect.track{fill:#f0f2f5}.err-row rect{stroke:var(--crit)}.err-row td{background:#fff5f5}.indent{display:inline-block}
"""

# Typing in a table's filter box hides the rows that do not contain the text (server-side ?q= works too).
JS = """
document.addEventListener("input", function (e) {
  var box = e.target; if (!box.dataset || !box.dataset.filter) return;
  var rows = document.querySelectorAll("#" + box.dataset.filter + " tbody tr"), q = box.value.toLowerCase();
  for (var i = 0; i < rows.length; i++) rows[i].hidden = q && rows[i].textContent.toLowerCase().indexOf(q) < 0;
});
"""
