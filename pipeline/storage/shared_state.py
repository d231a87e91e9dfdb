"""Fleet state on Redis: budget spend and breaker failures shared by every pipeline of a fleet.

    pipeline A ─┐  contribute(own spend)   ┌─ {p}:budget:<budget>:<period>   spent:<subject>, calls:<subject>
    pipeline B ─┼──── one Lua script ─────▶┤  {p}:own:<budget>:<period>      spent:<subject>:<instance>, ...
    pipeline C ─┘  (atomic, idempotent)    └─ {p}:breaker:<agent>\\x1f<tool>  failures (sorted set), :state (hash)

What a pipeline sends is never "add x" but "my own spend on this account is now y" (its
*contribution*): the script adds ``y - (what Redis holds as mine)`` to the fleet total and records
``y``.  So a retry after a lost reply, a reconcile after an outage and a re-send of everything after
Redis lost its data (no persistence: ``{p}:epoch`` changes) all count each pipeline's spend exactly
once.  The same script can first check kill lines (``check``), so check-and-charge is atomic across
the fleet.

Each pipeline decides from memory (its ledger is the local cache); the fleet totals are read back every
``refresh`` interval, which bounds how stale a decision is (see ``SharedStateConfig``).  When a call
fails (``redis.RedisError``: refused, timed out, reset), the state is *unavailable*: callers keep
counting locally, and ``reconnect`` retries; ``status()`` and the ``agent_sre_shared_state_up`` gauge
say which view decides.

``instance`` names the pipeline in the fleet: it must be stable across restarts of the same pipeline
(its store rebuilds its contribution at start) and unique in the fleet (default: the host name).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar
from urllib.parse import urlparse

import numpy as np
from pydantic import AfterValidator

log = logging.getLogger("agent_sre.shared_state")
T = TypeVar("T")

# Items: KEYS[2i-1] the fleet hash, KEYS[2i] the contributions hash; ARGV from 4: subject, own spend,
# own calls, expire-at.  Checks: KEYS[2n+j]; ARGV after the items: subject, kill line in USD.
_CONTRIBUTE = """
local inst, n, m = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local a = 4 + 4 * n
for j = 1, m do
  local spent = tonumber(redis.call('HGET', KEYS[2 * n + j], 'spent:' .. ARGV[a]) or '0')
  if spent >= tonumber(ARGV[a + 1]) then return {0, ARGV[a]} end
  a = a + 2
end
local out = {1, ''}
for i = 1, n do
  local total, own, b = KEYS[2 * i - 1], KEYS[2 * i], 4 + 4 * (i - 1)
  local sf, cf = 'spent:' .. ARGV[b], 'calls:' .. ARGV[b]
  local of, oc = sf .. ':' .. inst, cf .. ':' .. inst
  local before = redis.call('HGET', total, sf) or '0'
  local after = before
  local d = tonumber(ARGV[b + 1]) - tonumber(redis.call('HGET', own, of) or '0')
  if d > 0 then
    after = redis.call('HINCRBYFLOAT', total, sf, d)
    redis.call('HSET', own, of, ARGV[b + 1])
  end
  local dc = tonumber(ARGV[b + 2]) - tonumber(redis.call('HGET', own, oc) or '0')
  if dc > 0 then
    redis.call('HINCRBY', total, cf, dc)
    redis.call('HSET', own, oc, ARGV[b + 2])
  end
  redis.call('EXPIREAT', total, ARGV[b + 3])
  redis.call('EXPIREAT', own, ARGV[b + 3])
  table.insert(out, before)
  table.insert(out, after)
  table.insert(out, redis.call('HGET', total, cf) or '0')
end
return out
"""

# KEYS[1] the failures set; ARGV[1] window (us), ARGV[2] ttl (ms), then (score us, member) pairs.
_FAILURES = """
local top = 0
for i = 3, #ARGV, 2 do
  redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1])
end
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (tonumber(last[2]) - tonumber(ARGV[1])))
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""


def _state_url_or_none(url: str) -> str:
    return parse_state_url(url) if url else url


# A config's ``state:`` setting: "" (no shared state) or a Redis URL, checked when the config is read.
StateUrl = Annotated[str, AfterValidator(_state_url_or_none)]


def parse_state_url(url: str) -> str:
    """``url`` if it is a Redis URL this module can use, else ValueError saying what is wrong."""
    parsed = urlparse(url)
    if parsed.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"state must be a redis:// (or rediss://, unix://) URL such as redis://127.0.0.1:6379/0; "
                         f"got {url!r}")
    if parsed.scheme != "unix" and not parsed.hostname:
        raise ValueError(f"state URL {url!r} has no host")
    try:
        _ = parsed.port
    except ValueError as exc:
        raise ValueError(f"state URL {url!r}: {exc}") from exc
    path = parsed.path.strip("/")
    if parsed.scheme != "unix" and path and not path.isdigit():
        raise ValueError(f"state URL {url!r}: the database must be a number (redis://host:port/0)")
    return url


@dataclass(frozen=True)
class Contribution:
    """This pipeline's whole spend on one budget account in one period (not a delta)."""

    budget: str
    period: str  # the period label; "task" for a task budget
    subject: str
    spent: float
    calls: int
    expire_at: float  # Unix time after which Redis may forget the account


@dataclass(frozen=True)
class FleetTotal:
    before: float  # the fleet's spend before this contribution was added
    after: float
    calls: int


def _gauges(registry) -> Any:
    """The ``agent_sre_shared_state_up`` gauge of a service's registry (created once per registry)."""
    from prometheus_client import Gauge

    found = _GAUGES.get(id(registry))
    if found is None or found[0] is not registry:
        gauge = Gauge("agent_sre_shared_state_up", "1 while the fleet's shared state (Redis) decides, 0 while "
                      "this pipeline falls back to its local view.", ["component"], registry=registry)
        found = _GAUGES[id(registry)] = (registry, gauge)
    return found[1]


_GAUGES: dict[int, tuple[Any, Any]] = {}
INSTANCE_TTL_S = 15  # a pipeline's claim on its instance name outlives a few missed refreshes, not a restart


class SharedState:
    """One Redis connection pool, the fleet's scripts, and whether Redis is reachable now."""

    def __init__(self, url: str, instance: str = "", prefix: str = "agent_sre", timeout_s: float = 0.25,
                 component: str = ""):
        try:
            import redis  # only pipelines with `state:` need it
        except ImportError as exc:
            raise ImportError("`state: redis://…` needs the Redis client: pip install 'agent-sre[fleet]' (redis>=5)") from exc

        self.url = parse_state_url(url)
        self.instance = instance or socket.gethostname()
        self.prefix = prefix
        self.component = component
        self._redis = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                           health_check_interval=0, retry_on_timeout=False)
        self._errors = (redis.RedisError, OSError)
        self._contribute = self._redis.register_script(_CONTRIBUTE)
        self._failures = self._redis.register_script(_FAILURES)
        self.available = False
        self.down_since: float | None = time.time()  # not yet reached
        self.last_error = "not connected yet"
        self.epoch: str | None = None
        self.outages = 0
        self.name_clash = False
        self._token = uuid.uuid4().hex
        self._warned = False
        self._gauge: Any = None
        self._lock = threading.Lock()

    def bind_metrics(self, registry) -> None:
        self._gauge = _gauges(registry).labels(self.component or "shared_state")
        self._gauge.set(1 if self.available else 0)

    def close(self) -> None:
        self._redis.close()

    # --- availability ------------------------------------------------------------------

    def run(self, call: Callable[[Any], T]) -> T | None:
        """``call(redis)``, or None (and unavailable) if Redis did not answer."""
        try:
            result = call(self._redis)
        except self._errors as exc:
            self._down(exc)
            return None
        self._up()
        return result

    def _down(self, exc: BaseException) -> None:
        with self._lock:
            self.last_error = f"{type(exc).__name__}: {exc}"
            if self.available or not self._warned:  # a new outage (or Redis unreachable from the start)
                self._warned = True
                self.outages += 1
                self.down_since = time.time()
                log.warning("shared state %s unreachable (%s): deciding from this pipeline's local view",
                            self.url, self.last_error)
            self.available = False
        if self._gauge is not None:
            self._gauge.set(0)

    def _up(self) -> None:
        if self.available:
            return
        with self._lock:
            if self.outages:
                log.warning("shared state %s reachable again after %.1fs", self.url,
                            time.time() - (self.down_since or time.time()))
            self.available, self.down_since, self._warned = True, None, True
        if self._gauge is not None:
            self._gauge.set(1)

    def check_epoch(self) -> bool | None:
        """Whether Redis holds other data than when last asked (it restarted empty, or this is the first
        call): then every contribution must be sent again.  None when unreachable."""
        def epoch(r) -> str:
            key, mine = f"{self.prefix}:epoch", f"{self.prefix}:instance:{self.instance}"
            pipe = r.pipeline(transaction=False)
            pipe.set(key, uuid.uuid4().hex, nx=True)
            pipe.get(key)
            # Contributions are per instance: two live pipelines with one name would overwrite each
            # other's spend.  Each claims its name for INSTANCE_TTL_S and renews it at every refresh.
            pipe.set(mine, self._token, nx=True, ex=INSTANCE_TTL_S)
            pipe.get(mine)
            _, now, _, owner = pipe.execute()
            if owner is not None and owner.decode() == self._token:
                r.expire(mine, INSTANCE_TTL_S)
                self.name_clash = False
            elif not self.name_clash:
                self.name_clash = True
                log.error("shared state %s: another live pipeline is named %r (state_instance): their spend "
                          "overwrites each other's until one is renamed", self.url, self.instance)
            return now.decode()

        now = self.run(epoch)
        if now is None:
            return None
        changed, self.epoch = now != self.epoch, now
        return changed

    def status(self) -> dict:
        return {"url": self.url, "instance": self.instance, "available": self.available,
                "view": "fleet" if self.available else "local", "down_since": self.down_since,
                "last_error": None if self.available else self.last_error, "outages": self.outages,
                "instance_name_clash": self.name_clash}

    # --- budgets -----------------------------------------------------------------------

    def _hash(self, kind: str, budget: str, period: str, subject: str) -> str:
        # a task account has its own key (it expires after the task's idle time); periods share one
        tail = f":{subject}" if period == "task" else ""
        return f"{self.prefix}:{kind}:{budget}:{period}{tail}"

    def contribute(self, items: list[Contribution],
                   checks: Sequence[tuple[str, str, str, float]] = ()) -> tuple[bool, list[FleetTotal]] | None:
        """Set this pipeline's contributions, atomically, after checking that no ``checks`` account
        (budget, period, subject, kill line in USD) has reached its line: (accepted, the fleet totals
        of ``items`` in order), or None when Redis is unreachable."""
        keys: list[str] = []
        args: list[Any] = [self.instance, len(items), len(checks)]
        for c in items:
            keys += [self._hash("budget", c.budget, c.period, c.subject), self._hash("own", c.budget, c.period, c.subject)]
            args += [c.subject, repr(float(c.spent)), int(c.calls), int(c.expire_at)]
        for budget, period, subject, line in checks:
            keys.append(self._hash("budget", budget, period, subject))
            args += [subject, repr(float(line))]
        reply = self.run(lambda r: self._contribute(keys=keys, args=args))
        if reply is None:
            return None
        if int(reply[0]) == 0:
            return False, []
        vals = reply[2:]
        return True, [FleetTotal(float(vals[i]), float(vals[i + 1]), int(vals[i + 2])) for i in range(0, len(vals), 3)]

    def totals(self, accounts: list[tuple[str, str, list[str]]]) -> dict[tuple[str, str, str], tuple[float, int]] | None:
        """The fleet's (spent, calls) of each (budget, period, subjects): a period's whole hash, or, for
        a task budget, the listed tasks.  None when Redis is unreachable."""
        def read(r) -> list:
            pipe = r.pipeline(transaction=False)
            for budget, period, subjects in accounts:
                if period == "task":
                    for subject in subjects:
                        pipe.hmget(self._hash("budget", budget, period, subject), [f"spent:{subject}", f"calls:{subject}"])
                else:
                    pipe.hgetall(self._hash("budget", budget, period, ""))
            return pipe.execute()

        replies = self.run(read)
        if replies is None:
            return None
        out: dict[tuple[str, str, str], tuple[float, int]] = {}
        it = iter(replies)
        for budget, period, subjects in accounts:
            if period == "task":
                for subject in subjects:
                    spent, calls = next(it)
                    if spent is not None:
                        out[(budget, period, subject)] = (float(spent), int(calls or 0))
                continue
            fields = {k.decode(): v for k, v in next(it).items()}
            for name, value in fields.items():
                if name.startswith("spent:"):
                    subject = name[6:]
                    out[(budget, period, subject)] = (float(value), int(fields.get(f"calls:{subject}", 0)))
        return out

    # --- breakers ----------------------------------------------------------------------

    def breaker(self, agent: str, tool: str = "") -> SharedBreaker:
        return SharedBreaker(self, f"{self.prefix}:breaker:{agent}\x1f{tool}")

    def breakers_not_closed(self) -> dict[tuple[str, str], dict] | None:
        """(agent, tool) -> last transition of every breaker of the fleet that is open or half-open, so a
        pipeline that saw none of an agent's calls still answers ``circuit_open`` (None: unreachable).
        A SCAN over the state keys, which expire an hour after the breaker's last transition."""
        def read(r) -> dict[tuple[str, str], dict]:
            keys = list(r.scan_iter(match=f"{self.prefix}:breaker:*:state", count=1000))
            pipe = r.pipeline(transaction=False)
            for key in keys:
                pipe.hgetall(key)
            out = {}
            start = len(self.prefix) + len(":breaker:")
            for key, raw in zip(keys, pipe.execute(), strict=True):
                f = {k.decode(): v.decode() for k, v in raw.items()}
                if f and f.get("state") != "closed":
                    agent, _, tool = key.decode()[start:-len(":state")].partition("\x1f")
                    out[(agent, tool)] = f
            return out

        return self.run(read)


class SharedBreaker:
    """One breaker's fleet-wide failures (a sorted set trimmed to the window) and last transition."""

    def __init__(self, state: SharedState, key: str):
        self.state, self.key = state, key

    def failures(self, end_ns: np.ndarray, window_s: float) -> np.ndarray | None:
        """Add these failures (end times, ns) and return every failure of the fleet within the window of
        the newest one, sorted; None when Redis is unreachable."""
        args: list[Any] = [int(window_s * 1e6), int(window_s * 2000) + 1000]
        inst = self.state.instance
        for k, t in enumerate(end_ns.tolist()):
            args += [t // 1000, f"{t}:{inst}:{k}"]  # scores in us (exact in a double); the member keeps ns
        reply = self.state.run(lambda r: self.state._failures(keys=[self.key + ":failures"], args=args))
        if reply is None:
            return None
        return np.sort(np.array([int(m.split(b":", 1)[0]) for m in reply], dtype=np.int64))

    def clear_failures(self) -> None:
        self.state.run(lambda r: r.delete(self.key + ":failures"))

    def publish(self, state: str, since: float, open_until: float | None, ttl_s: float, reason: str = "") -> None:
        fields = {"state": state, "since": repr(since), "open_until": "" if open_until is None else repr(open_until),
                  "by": self.state.instance, "reason": reason}

        def write(r) -> None:
            pipe = r.pipeline(transaction=True)
            pipe.hset(self.key + ":state", mapping=fields)
            pipe.expire(self.key + ":state", max(int(ttl_s), 1))
            pipe.execute()

        self.state.run(write)

    def read(self) -> dict | None:
        """The fleet's last transition of this breaker (state, since, open_until, by), or None."""
        raw = self.state.run(lambda r: r.hgetall(self.key + ":state"))
        if not raw:
            return None
        f = {k.decode(): v.decode() for k, v in raw.items()}
        return {"state": f["state"], "since": float(f["since"]),
                "open_until": float(f["open_until"]) if f.get("open_until") else None, "by": f.get("by", ""),
                "reason": f.get("reason", "")}
