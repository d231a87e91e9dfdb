"""``agent_sre.delivery``: progressive delivery inside an agent (standard library only at import).

    from agent_sre import delivery

    delivery.configure("support-bot", endpoint="http://127.0.0.1:13133", refresh=1.0, default="1.4.0")
    version = delivery.route(session_id)     # "1.4.0" or "1.5.0", as the rollout's weight says
    other = delivery.mirror(session_id)      # shadow rollouts: the candidate to run this input on too

``route`` is deterministic per session (a hash of its id) and follows the weight the pipeline's
delivery processor publishes on ``GET /v1/decisions/{agent}`` (router.py says how, and within what
tolerance); a rollback takes effect at the next refresh.  ``Router`` is the same for more than one
agent per process.
"""

from __future__ import annotations

from agent_sre.pipeline.client.delivery.router import BUCKETS, Router, bucket, share_tolerance, to_candidate

__all__ = ["BUCKETS", "Router", "bucket", "configure", "mirror", "route", "share_tolerance", "to_candidate"]

_router: Router | None = None


def configure(agent_id: str, endpoint: str = "http://127.0.0.1:13133", *, refresh: float = 1.0,
              timeout: float = 0.25, default: str | None = None) -> Router:
    """Set the process's router (``route`` and ``mirror`` use it); returns it."""
    global _router
    _router = Router(agent_id, endpoint, refresh=refresh, timeout=timeout, default=default)
    return _router


def _configured() -> Router:
    if _router is None:
        raise RuntimeError("agent_sre.delivery.configure(agent_id, endpoint=...) must be called first")
    return _router


def route(session_id: str) -> str | None:
    """The version that serves this session (see ``Router.route``)."""
    return _configured().route(session_id)


def mirror(session_id: str) -> str | None:
    """The candidate to also run this session's input on during a shadow rollout, else None."""
    return _configured().mirror(session_id)
