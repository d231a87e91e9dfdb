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
(its store rebuilds its contribution at start) and unique in the fleet (default: the host name).  A
pipeline claims its name in Redis with a token kept in its store (``kept_claim_token``): the token names
the pipeline's data, not its process, so a pipeline restarted after kill -9 takes over its own claim, while
a second live pipeline with the name (its own store: DuckDB lets one process open a store) is told it clashes.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, TypeVar
from urllib.parse import urlparse

import numpy as np
from pydantic import AfterValidator

if TYPE_CHECKING:
    from agent_sre.pipeline.component.capabilities import SpanStore

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


# Shared records (chaos experiments, rollouts): KEYS[1] the records hash (v:<id> version, d:<id> JSON
# document, f:<id> 1 when final), KEYS[2] its change counter, KEYS[3] final ids by when they became final.
# ARGV: mode, id, version, document, final (0/1), retention (s; from Redis's own clock).  mode "cas": write version
# ARGV[3] + 1 only if the stored version is ARGV[3] (-1: absent).  mode "merge" (a reconcile): write
# ARGV[3] as it is if the id is absent, or the stored record is not final and this one is final or newer
# (a final one then gets the next version, so every pipeline adopts it).  Returns {written, version,
# document, final} of what Redis holds afterwards.
_RECORD = """
local id, v, final = ARGV[2], tonumber(ARGV[3]), ARGV[5]
local cur = tonumber(redis.call('HGET', KEYS[1], 'v:' .. id) or '-1')
local stored_final = redis.call('HGET', KEYS[1], 'f:' .. id) == '1'
local new
if ARGV[1] == 'cas' then
  if cur == v then new = v + 1 end
elseif cur < 0 then
  new = v
elseif not stored_final and (final == '1' or v > cur) then
  new = math.max(v, cur + 1)
end
if not new then
  return {0, cur, redis.call('HGET', KEYS[1], 'd:' .. id) or '', stored_final and 1 or 0}
end
redis.call('HSET', KEYS[1], 'v:' .. id, new, 'd:' .. id, ARGV[4], 'f:' .. id, final)
local now = tonumber(redis.call('TIME')[1])
if final == '1' then redis.call('ZADD', KEYS[3], now, id) else redis.call('ZREM', KEYS[3], id) end
local old = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[6]))
for _, o in ipairs(old) do
  redis.call('HDEL', KEYS[1], 'v:' .. o, 'd:' .. o, 'f:' .. o)
  redis.call('ZREM', KEYS[3], o)
end
redis.call('INCR', KEYS[2])
return {1, new, ARGV[4], tonumber(final)}
"""

# KEYS[1] the last number given, KEYS[2] the records hash; ARGV[1] a floor (the caller's own highest
# number: Redis may have restarted empty), ARGV[2] the id format.  The next number whose id is not taken.
_NEXT_ID = """
local n = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), tonumber(ARGV[1]))
repeat n = n + 1 until redis.call('HEXISTS', KEYS[2], 'v:' .. string.format(ARGV[2], n)) == 0
redis.call('SET', KEYS[1], n)
return n
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


# Claims on priced spans (KEYS: one per span; ARGV: instance, TTL in seconds): a span's spend is this
# pipeline's to charge if it claims the span first, or claimed it before (a restart, a spool replay);
# returns the 1-based positions of the spans another pipeline claimed first.
_CLAIM = """
local lost = {}
for i, key in ipairs(KEYS) do
  if not redis.call('SET', key, ARGV[1], 'NX', 'EX', ARGV[2]) then
    if redis.call('GET', key) ~= ARGV[1] then lost[#lost + 1] = i end
  end
end
return lost
"""


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
_CLAIMS_PER_CALL = 4096  # spans per script call: a long script blocks Redis for the others
INSTANCE_TTL_S = 15  # a pipeline's claim on its instance name outlives a few missed refreshes, not a restart

# One claim token per component, in the component's store: written once (the first start), read at every start.
_CLAIMS_DDL = "CREATE TABLE IF NOT EXISTS shared_state_claims (component VARCHAR PRIMARY KEY, token VARCHAR NOT NULL)"


def kept_claim_token(store: SpanStore, component: str) -> str:
    """The token with which ``component`` claims its instance name, kept in ``store`` so that it
    outlives the process: a pipeline restarted within INSTANCE_TTL_S of its kill (kill -9, OOM) finds its
    own claim, not another pipeline's.  Written atomically once (one transaction, on the store's write
    lock), reused by every restart.  Two live pipelines cannot share a store (DuckDB locks the file), so
    theirs differ; two components of one pipeline have a token each (they would overwrite each other's
    contributions too).  A store that cannot be written gives "" (a token per process, as without a
    store), with a warning."""
    import duckdb  # the store's own library: its errors are what a failed write raises

    try:
        store.write([(_CLAIMS_DDL, []), ("INSERT INTO shared_state_claims VALUES (?, ?) ON CONFLICT DO NOTHING",
                                         [component, uuid.uuid4().hex])])
        return store.read("SELECT token FROM shared_state_claims WHERE component = ?", [component])[0][0]
    except (duckdb.Error, OSError) as exc:
        log.warning("shared state: %s cannot keep its instance claim in its store (%s): a restart within %d s "
                    "of a kill is told that another live pipeline has its name until the old claim expires",
                    component, exc, INSTANCE_TTL_S)
        return ""


class SharedState:
    """One Redis connection pool, the fleet's scripts, and whether Redis is reachable now."""

    def __init__(self, url: str, instance: str = "", prefix: str = "agent_sre", timeout_s: float = 0.25,
                 component: str = "", claim_token: str = ""):
        """``claim_token``: what this pipeline claims its instance name with, from ``kept_claim_token``
        (its data's); "" makes one per process, so a restart within INSTANCE_TTL_S of a kill is told it
        clashes with its dead self until that claim expires."""
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
        self._record = self._redis.register_script(_RECORD)
        self._next_id = self._redis.register_script(_NEXT_ID)
        self._claim = self._redis.register_script(_CLAIM)
        self.available = False
        self.down_since: float | None = time.time()  # not yet reached
        self.last_error = "not connected yet"
        self.epoch: str | None = None
        self.outages = 0
        self.name_clash = False
        self._token = claim_token or uuid.uuid4().hex
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

    def check_epoch(self, claim_instance: bool = True) -> bool | None:
        """Whether Redis holds other data than when last asked (it restarted empty, or this is the first
        call): then every contribution must be sent again.  None when unreachable.  ``claim_instance``:
        also claim (renew) this pipeline's instance name, which only per-instance data (contributions)
        needs; shared records (``records``) are not per instance, so their users do not claim it (two
        components of one pipeline claiming one name would be told they clash)."""
        def epoch(r) -> str:
            key, mine = f"{self.prefix}:epoch", f"{self.prefix}:instance:{self.instance}"
            if not claim_instance:
                return (r.set(key, uuid.uuid4().hex, nx=True, get=True) or r.get(key)).decode()
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

    def describe_line(self, what: str, refresh_s: float, when_down: str) -> str:
        """The component's /v1/status line: ``what`` (e.g. "shared budgets") is decided from the fleet's view,
        refreshed every ``refresh_s``, or, Redis unreachable, as ``when_down`` says."""
        st = self.status()
        if not st["available"]:
            return (f"{what} {st['url']} as {st['instance']}: UNREACHABLE since {st['down_since']:.0f} "
                    f"({st['last_error']}): {when_down}; reconciled when Redis returns")
        return (f"{what} {st['url']} as {st['instance']}: fleet view (refreshed every {refresh_s:g}s)"
                + (" — ANOTHER LIVE PIPELINE HAS THIS NAME: set state_instance" if st["instance_name_clash"] else ""))

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

    def claim_spans(self, keys: np.ndarray, ttl_s: float) -> np.ndarray | None:
        """Claim priced spans for this pipeline's spend (64-bit span keys, ``dedup.span_keys``): a mask of
        those another pipeline of the fleet claimed first (a client re-sent them there), or None when Redis
        is unreachable.  A claim lasts ``ttl_s``; claiming again what this instance holds is won."""
        if len(keys) == 0:
            return np.zeros(0, dtype=bool)
        names = [f"{self.prefix}:claim:{int(k):016x}" for k in keys.tolist()]
        ttl = max(1, int(ttl_s))
        lost = np.zeros(len(keys), dtype=bool)
        for start in range(0, len(names), _CLAIMS_PER_CALL):
            part = names[start:start + _CLAIMS_PER_CALL]

            def call(r: Any, part: list[str] = part) -> list[int]:
                return self._claim(keys=part, args=[self.instance, ttl])

            reply = self.run(call)
            if reply is None:
                return None
            if reply:
                lost[start + np.asarray(reply, dtype=np.int64) - 1] = True
        return lost

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

    # --- records (chaos experiments, rollouts) -------------------------------------------

    def records(self, kind: str, retention_s: float = 86400.0) -> SharedRecords:
        return SharedRecords(self, kind, retention_s)

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


@dataclass(frozen=True)
class SharedRecord:
    """One record as the fleet holds it: a version bumped by every change, and the document."""

    version: int
    final: bool  # no change after this one (an ended experiment, a finished rollout)
    doc: dict


class SharedRecords:
    """Records of one kind every pipeline of the fleet changes (chaos experiments, rollouts), each
    changed by compare-and-set on its version, so a change computed from version v is applied once and
    only if nobody changed the record since (``put``).

    Each pipeline keeps its records in memory (what it decides from) and calls ``sync`` every refresh:
    one GET of the change counter, and the whole hash only when it moved, so the staleness of a
    pipeline's view is its refresh interval.  While Redis is unreachable a pipeline may make *final*
    changes only (end an experiment, roll back, abort: changes that stop something); ``sync`` merges
    them when Redis is back (a final record wins over a running one; between two final ones the first
    in Redis stays), and, after Redis restarted empty, writes every local record back.  Final records
    are forgotten ``retention_s`` after they became final.
    """

    def __init__(self, state: SharedState, kind: str, retention_s: float = 86400.0):
        self.state, self.kind, self.retention_s = state, kind, retention_s
        base = f"{state.prefix}:{kind}"
        self._keys = [base, f"{base}:changes", f"{base}:finals"]
        self._seen: int | None = None  # the change counter at the last read
        self._synced = False  # whether the last sync reached Redis (else the next one reconciles)

    def _call(self, mode: str, record_id: str, version: int, doc: dict, final: bool) -> tuple[bool, SharedRecord] | None:
        args: list[str | int] = [mode, record_id, version, json.dumps(doc, sort_keys=True), int(final), repr(self.retention_s)]
        reply = self.state.run(lambda r: self.state._record(keys=self._keys, args=args))
        if reply is None:
            return None
        written, now_version, text, now_final = reply
        held = SharedRecord(int(now_version), bool(int(now_final)), json.loads(text) if text else {})
        return bool(int(written)), held

    def put(self, record_id: str, expected: int, doc: dict, final: bool = False) -> tuple[bool, SharedRecord] | None:
        """Write ``doc`` as version ``expected + 1`` if the record is still at ``expected`` (-1: absent):
        (written, what Redis holds now: this version, or the other pipeline's), None when unreachable."""
        return self._call("cas", record_id, expected, doc, final)

    def merge(self, record_id: str, version: int, doc: dict, final: bool) -> tuple[bool, SharedRecord] | None:
        """A reconcile: write a local record Redis lacks, or a final one over a running one."""
        return self._call("merge", record_id, version, doc, final)

    def next_number(self, floor: int, id_format: str) -> int | None:
        """A number no other pipeline gets, above ``floor``, whose ``id_format % n`` is not a record."""
        keys = [f"{self._keys[0]}:next", self._keys[0]]
        reply = self.state.run(lambda r: self.state._next_id(keys=keys, args=[int(floor), id_format]))
        return None if reply is None else int(reply)

    def all(self) -> dict[str, SharedRecord] | None:
        def read(r) -> tuple[Any, dict]:
            pipe = r.pipeline(transaction=True)  # the counter and the hash as of one moment
            pipe.get(self._keys[1])
            pipe.hgetall(self._keys[0])
            return tuple(pipe.execute())

        reply = self.state.run(read)
        if reply is None:
            return None
        counter, raw = reply
        self._seen = int(counter or 0)
        fields = {k.decode(): v for k, v in raw.items()}
        return {k[2:]: SharedRecord(int(fields[k]), fields.get(f"f:{k[2:]}") == b"1", json.loads(fields[f"d:{k[2:]}"]))
                for k in fields if k.startswith("v:") and f"d:{k[2:]}" in fields}

    def sync(self, local: dict[str, SharedRecord], final_at: Callable[[SharedRecord], float],
             now: float) -> dict[str, SharedRecord] | None:
        """Every refresh: reconcile if Redis came back (or restarted empty) by merging ``local`` (this
        pipeline's records), then the records of the fleet that differ from ``local`` (to adopt); {}
        when nothing changed, None when Redis is unreachable.  ``final_at``: when a final record
        became final on the caller's clock, ``now`` (a final record older than the retention is not
        written back)."""
        changed = self.state.check_epoch(claim_instance=False)
        if changed is None:
            self._synced = False
            return None
        if changed or not self._synced:
            for record_id, rec in local.items():
                if rec.final and final_at(rec) < now - self.retention_s:
                    continue
                if self.merge(record_id, rec.version, rec.doc, rec.final) is None:
                    return None
            self._seen = None  # read everything: what the merges kept may be another pipeline's
        counter = self.state.run(lambda r: r.get(self._keys[1]))
        if counter is None and not self.state.available:
            self._synced = False
            return None
        self._synced = True
        if self._seen is not None and int(counter or 0) == self._seen:
            return {}
        fleet = self.all()
        if fleet is None:
            self._synced = False
            return None
        # the document too: two pipelines that ended one record while Redis was away hold one version
        return {k: v for k, v in fleet.items() if k not in local or (local[k].version, local[k].doc) != (v.version, v.doc)}
