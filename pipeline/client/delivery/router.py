"""The rollout router inside an agent: which version serves this session, as the pipeline decides.

The delivery processor puts the agent's rollout on its decision (``GET /v1/decisions/{agent}``:
``rollout: {name, baseline, candidate, weight, state, shadow_share, ...}``); the router asks through a
``DecisionClient`` (one request per ``refresh`` seconds at most, whatever the call rate) and picks the
version by a hash of the session (or request) id:

    bucket = first 8 bytes of BLAKE2b(rollout name + 0x1f + session id), as an integer, mod 10 000
    candidate  if bucket < round(weight * 100)        (weight in %, so 0.01 % steps)

so one session always gets the same version while the weight holds, a session sent to the candidate
at 5 % is still sent to it at 25 % (the buckets below the threshold only grow), and two rollouts
split sessions independently (the rollout's name is in the hash).  The share of n distinct sessions
sent to the candidate is binomial: it stays within ``share_tolerance(weight, n)`` =
4.5 * sqrt(w (1 - w) / n) + 1/10 000 of w = weight / 100, except with probability below 1e-5.

A rollback (weight 0) or a promotion (weight 100) takes effect at the next refresh.  When the
pipeline cannot be asked, the last answer stays in force (routing does not flap with the pipeline's
availability); before any answer, ``default``.  Shadow rollouts send every session to the
baseline; ``mirror`` names the candidate for the sessions (``shadow_share`` % of them) the agent
should also run on it, with the same input id on both tasks (the ``agent_sre.input.id`` attribute).
"""

from __future__ import annotations

import hashlib
import math

from agent_sre.pipeline.client.decisions import DecisionClient

BUCKETS = 10_000


def bucket(salt: str, session_id: str) -> int:
    digest = hashlib.blake2b(f"{salt}\x1f{session_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def to_candidate(weight: float, salt: str, session_id: str) -> bool:
    """Whether the session goes to the candidate at ``weight`` % (the module docstring's rule)."""
    return bucket(salt, session_id) < round(weight * BUCKETS / 100)


def share_tolerance(weight: float, sessions: int) -> float:
    """How far the candidate's share of ``sessions`` distinct ids may be from weight / 100."""
    w = weight / 100
    return 4.5 * math.sqrt(w * (1 - w) / sessions) + 1 / BUCKETS


class Router:
    def __init__(self, agent_id: str, endpoint: str = "http://127.0.0.1:13133", *, refresh: float = 1.0,
                 timeout: float = 0.25, default: str | None = None, client: DecisionClient | None = None):
        """``refresh``: seconds an answer is kept; ``default``: the version before any answer (None: the
        caller's own); ``client``: a DecisionClient to share (its ``cache_ttl`` is then the refresh)."""
        self.agent_id = agent_id
        self.default = default
        self.client = client if client is not None else DecisionClient(endpoint, cache_ttl=refresh, timeout=timeout)
        self._last: dict | None = None

    def rollout(self) -> dict | None:
        """The agent's rollout as last answered (None: the pipeline knows none)."""
        answer = self.client.decision(self.agent_id)
        if answer is not None:  # answered: its rollout, or none, is the truth now
            self._last = answer.get("rollout")
        return self._last

    def route(self, session_id: str) -> str | None:
        """The version that serves this session: the rollout's candidate or baseline (``default`` when no
        rollout is known)."""
        found = self.rollout()
        if found is None:
            return self.default
        return found["candidate"] if to_candidate(float(found["weight"]), found["name"], str(session_id)) \
            else found["baseline"]

    def mirror(self, session_id: str) -> str | None:
        """During a shadow rollout, the candidate this session's input should also be run on; else None."""
        found = self.rollout()
        share = float(found.get("shadow_share") or 0) if found is not None else 0.0
        if found is None or not share or not to_candidate(share, found["name"] + "/shadow", str(session_id)):
            return None
        return found["candidate"]
