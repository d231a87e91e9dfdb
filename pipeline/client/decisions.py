"""Ask the pipeline before a call: the decisions client an agent or a gateway embeds.

    from agent_sre.pipeline.client import DecisionClient

    decisions = DecisionClient("http://127.0.0.1:13133", fail_open=True)
    if decisions.should_proceed("research-agent", tool="web_search"):
        ...  # make the call

``should_proceed`` asks ``GET /v1/decisions/{agent_id}`` (standard library only, so it costs the
agent no dependency) and keeps the answer for ``cache_ttl`` seconds, so a busy agent asks the
pipeline a few times a second, not once per call:

    allow          yes
    freeze         yes: an SLO's error budget is exhausted, which stops releases (rollouts), not calls
    throttle       yes, at most ``suggested_rate_per_min`` calls a minute (a local token bucket;
                   without a suggested rate, ``throttle_fraction`` of calls)
    circuit_open   no; while the breaker is half-open, yes for as many calls as it has probes left
    kill           no

When the pipeline cannot be asked (down, slow, an error answer), the answer is ``fail_open``
(default True: an observability outage must not stop the agent; set False where a runaway
agent costs more than a stopped one).  ``decision()`` returns the pipeline's whole answer.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable

__all__ = ["DecisionClient", "should_proceed"]
_Key = tuple[str, "str | None", "str | None"]  # (agent, tool, task)
_MAX_ENTRIES = 4096  # agents, tools, tasks and breakers a client remembers


class DecisionClient:
    def __init__(self, endpoint: str = "http://127.0.0.1:13133", *, fail_open: bool = True, cache_ttl: float = 1.0,
                 timeout: float = 0.25, throttle_fraction: float = 0.5, clock: Callable[[], float] = time.monotonic):
        if cache_ttl < 0 or timeout <= 0 or not 0 <= throttle_fraction <= 1:
            raise ValueError("need cache_ttl >= 0, timeout > 0 and 0 <= throttle_fraction <= 1")
        self.endpoint = endpoint.rstrip("/") if "://" in endpoint else f"http://{endpoint.rstrip('/')}"
        self.fail_open = fail_open
        self.cache_ttl = cache_ttl
        self.timeout = timeout
        self.throttle_fraction = throttle_fraction
        self.clock = clock
        self._cache: dict[_Key, tuple[float, dict | None]] = {}
        self._budget: dict[str, list[float]] = {}  # agent -> [tokens, last refill]: one rate per agent
        self._probes: dict[tuple, list[int]] = {}  # (agent, tool, half-open since) -> [allowed, let through]
        self._calls = 0
        self._lock = threading.Lock()

    def decision(self, agent_id: str, tool: str | None = None, task: str | None = None) -> dict | None:
        """The pipeline's answer (cached), or None when it could not be asked.  ``task``: the trace id
        the call belongs to (for task budgets); ``tool``: the tool about to be called (per-tool breakers)."""
        key = (agent_id, tool, task)
        now = self.clock()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and now - cached[0] < self.cache_ttl:
                return cached[1]
        answer = self._ask(agent_id, tool, task)
        with self._lock:
            if len(self._cache) >= _MAX_ENTRIES:  # bounded: drop what has expired, else everything
                self._cache = {k: v for k, v in self._cache.items() if now - v[0] < self.cache_ttl}
                if len(self._cache) >= _MAX_ENTRIES:
                    self._cache.clear()
            self._cache[key] = (now, answer)
        return answer

    def _ask(self, agent_id: str, tool: str | None, task: str | None) -> dict | None:
        url = f"{self.endpoint}/v1/decisions/{urllib.parse.quote(agent_id, safe='')}"
        query = {k: v for k, v in (("tool", tool), ("task", task)) if v}
        if query:
            url += "?" + urllib.parse.urlencode(query)
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except (urllib.error.URLError, OSError, ValueError):
            return None  # unreachable, or an error answer (404: no decision sources configured)

    def should_proceed(self, agent_id: str, tool: str | None = None, task: str | None = None) -> bool:
        d = self.decision(agent_id, tool, task)
        if d is None:
            return self.fail_open
        action = d.get("action")
        if action in ("allow", "freeze"):  # freeze stops releases, not calls
            half = [c for c in d.get("circuits", []) if c.get("state") == "half_open"]
            return all(self._take_probe((agent_id, c.get("tool"), c.get("since")), c["probes_left"]) for c in half)
        if action == "throttle":
            return self._take_token(agent_id, d.get("suggested_rate_per_min"))
        if action in ("kill", "circuit_open"):
            return False
        return self.fail_open  # an action this client does not know

    def _take_probe(self, breaker: tuple, left: int) -> bool:
        """One of the probe calls of this half-open period of this breaker: as many as the first answer
        of the period allowed, however often the answer is refreshed or the tool and task change."""
        with self._lock:
            if len(self._probes) >= _MAX_ENTRIES:
                self._probes.clear()
            count = self._probes.setdefault(breaker, [left, 0])
            if count[1] >= count[0]:
                return False
            count[1] += 1
            return True

    def _take_token(self, key: str, per_min: float | None) -> bool:
        with self._lock:
            if per_min is None:  # no rate to keep: let a fraction through, evenly
                self._calls += 1
                return (self._calls * self.throttle_fraction) % 1 < self.throttle_fraction
            now = self.clock()
            if len(self._budget) >= _MAX_ENTRIES:
                self._budget.clear()
            bucket = self._budget.setdefault(key, [1.0, now])
            bucket[0] = min(1.0, bucket[0] + (now - bucket[1]) * per_min / 60.0)  # a burst of at most one call
            bucket[1] = now
            if bucket[0] >= 1.0 - 1e-9:  # a float sum of refills: one whole interval is one call
                bucket[0] = max(bucket[0] - 1.0, 0.0)
                return True
            return False


_default: DecisionClient | None = None


def should_proceed(agent_id: str, tool: str | None = None, task: str | None = None, *,
                   endpoint: str = "http://127.0.0.1:13133", fail_open: bool = True) -> bool:
    """``DecisionClient(endpoint, fail_open=...).should_proceed`` with one client kept per process."""
    global _default
    if _default is None or _default.endpoint != DecisionClient(endpoint).endpoint or _default.fail_open != fail_open:
        _default = DecisionClient(endpoint, fail_open=fail_open)
    return _default.should_proceed(agent_id, tool, task)
