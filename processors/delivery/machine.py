"""A rollout's state and its transitions: clock-free (times are passed in), so tests drive hours of
rollout in milliseconds.

    progressing ──(step over, analysis passes)──▶ next step ... ──▶ promoted     (canary: weight 100)
         │  ▲                                                  └──▶ passed       (shadow)
         │  └─ resume / promote ─┐
         ├──(manual gate, frozen, pause)──▶ paused ──(freeze lifted)──▶ next step
         ├──(rollback condition, or the analysis fails)──▶ rolled_back (canary) / failed (shadow)
         └──(abort)──▶ aborted

Every transition is a ``Change`` (the decision: start, advance, pause, resume, promote, rollback,
pass, fail, abort, with its reason), which the component stores, counts and announces.  An
exhausted error budget (the board's ``freeze``) holds a rollout where it is: an advance is refused
with the reason (the rollout waits, paused, and goes on by itself when the freeze lifts), a manual
promote is refused; rolling back is never refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent_sre.pipeline.component.errors import TransitionError
from agent_sre.processors.delivery.analysis import Verdict
from agent_sre.processors.delivery.rollout import Rollout, Step

ACTIVE = ("progressing", "paused")
FINAL = ("promoted", "passed", "rolled_back", "failed", "aborted")
STATES = ACTIVE + FINAL
ACTIONS = ("promote", "pause", "resume", "abort")  # what a person may ask (the API, the CLI)


@dataclass(frozen=True)
class Change:
    decision: str  # start | advance | pause | resume | promote | pass | rollback | fail | abort
    reason: str
    who: str = ""


@dataclass
class RolloutRun:
    rollout: Rollout
    started_ns: int
    state: str = "progressing"
    step: int = 0
    step_started_ns: int = 0
    paused_by: str | None = None  # gate | freeze | user
    reason: str = ""
    updated_ns: int = 0
    analysis: dict | None = None  # the last analysis (analysis.py), with its verdict

    @property
    def name(self) -> str:
        return self.rollout.name

    @property
    def spec(self):
        return self.rollout.spec

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def current(self) -> Step:
        return self.spec.steps[self.step]

    @property
    def weight(self) -> float:
        """% of sessions the router sends to the candidate now."""
        if self.state == "promoted":
            return 100.0
        if not self.active:
            return 0.0
        return self.current.weight

    def step_over(self, now_ns: int) -> bool:
        return now_ns >= self.step_started_ns + int(self.current.duration * 1e9)

    def route(self) -> dict:
        """What the decisions board shows agents (``details.rollout``; agent_sre.delivery reads it)."""
        spec = self.spec
        shadowing = spec.strategy == "shadow" and self.active
        return {"name": self.name, "strategy": spec.strategy, "baseline": spec.baseline,
                "candidate": spec.candidate, "weight": self.weight, "state": self.state, "step": self.step,
                "steps": len(spec.steps), "shadow_share": spec.shadow.share if shadowing else 0.0,
                "reason": self.reason}

    def summary(self) -> dict:
        spec = self.spec
        return {"name": self.name, "agent_id": spec.agent, "strategy": spec.strategy, "baseline": spec.baseline,
                "candidate": spec.candidate, "state": self.state, "step": self.step, "steps": len(spec.steps),
                "step_name": self.current.name, "weight": self.weight, "paused_by": self.paused_by,
                "reason": self.reason, "started_ns": self.started_ns, "step_started_ns": self.step_started_ns,
                "updated_ns": self.updated_ns}


def begin(rollout: Rollout, now_ns: int, who: str = "") -> tuple[RolloutRun, Change]:
    run = RolloutRun(rollout, started_ns=now_ns, step_started_ns=now_ns, updated_ns=now_ns)
    first = run.current
    run.reason = f"step {first.name or 0}: {first.weight:g}% to {rollout.spec.candidate}"
    if rollout.spec.strategy == "shadow":
        run.reason = f"step {first.name or 0}: shadowing {rollout.spec.shadow.share:g}% of inputs"
    return run, Change("start", run.reason, who)


def on_analysis(run: RolloutRun, verdict: Verdict, now_ns: int, frozen: str | None) -> Change | None:
    """What an analysis decides (None: nothing changes).  ``frozen``: why releases of the agent are
    frozen (the board's freeze reason), or None."""
    if not run.active:
        return None
    if verdict.outcome == "rollback":
        return _end(run, "rolled_back" if run.spec.strategy == "canary" else "failed", now_ns,
                    "; ".join(verdict.reasons))
    if run.state == "paused":
        if run.paused_by == "freeze" and frozen is None:  # the step had passed: go on
            return _advance(run, now_ns, "the freeze on releases is lifted")
        return None
    if verdict.outcome in ("running", "wait"):
        run.reason = "; ".join(verdict.reasons) if verdict.outcome == "wait" else run.reason
        return None
    if verdict.outcome == "fail":
        return _end(run, "rolled_back" if run.spec.strategy == "canary" else "failed", now_ns,
                    "analysis failed: " + "; ".join(verdict.reasons))
    passed = "analysis passed: " + "; ".join(verdict.reasons)
    if run.current.manual_gate:
        return _pause(run, "gate", now_ns, f"{passed}; waiting at the manual gate (promote to go on)")
    if frozen is not None:
        return _pause(run, "freeze", now_ns, f"{passed}; advance refused: {frozen}")
    return _advance(run, now_ns, passed)


def act(run: RolloutRun, action: str, now_ns: int, frozen: str | None, who: str, why: str = "",
        full: bool = False) -> Change:
    """A person's request; ``TransitionError`` (400 unknown, 409 not now) when it cannot be done."""
    if action not in ACTIONS:
        raise TransitionError(f"unknown action {action!r} (valid values: [{', '.join(ACTIONS)}])", 400)
    if not run.active:
        raise TransitionError(f"rollout {run.name} is {run.state}; nothing to {action}", 409)
    note = f" ({why})" if why else ""
    if action == "abort":
        change = _end(run, "aborted", now_ns, f"aborted by {who or 'someone'}{note}")
    elif action == "pause":
        if run.state == "paused":
            raise TransitionError(f"rollout {run.name} is already paused ({run.reason})", 409)
        change = _pause(run, "user", now_ns, f"paused by {who or 'someone'}{note}")
    elif action == "resume":
        if run.state != "paused" or run.paused_by != "user":
            raise TransitionError(f"rollout {run.name} is not paused by a person "
                                  f"({run.state}: {run.reason}); promote goes on past a gate", 409)
        run.state, run.paused_by, run.updated_ns = "progressing", None, now_ns
        run.reason = f"resumed by {who or 'someone'}{note}"
        change = Change("resume", run.reason)
    else:
        if frozen is not None:
            raise TransitionError(f"promote of rollout {run.name} refused: {frozen}", 409)
        why_text = f"promoted by {who or 'someone'}{note}"
        change = _end(run, "promoted", now_ns, why_text) if full and run.spec.strategy == "canary" \
            else _advance(run, now_ns, why_text)
    return Change(change.decision, change.reason, who)


def _advance(run: RolloutRun, now_ns: int, reason: str) -> Change:
    steps = run.spec.steps
    nxt = run.step + 1
    if nxt >= len(steps) or steps[nxt].weight >= 100:
        final = "promoted" if run.spec.strategy == "canary" else "passed"
        run.step = min(nxt, len(steps) - 1)
        return _end(run, final, now_ns, reason)
    run.step, run.step_started_ns, run.updated_ns = nxt, now_ns, now_ns
    run.state, run.paused_by = "progressing", None
    step = run.current
    run.reason = f"{reason}; step {step.name or nxt}: {step.weight:g}% to {run.spec.candidate}"
    return Change("advance", run.reason)


def _pause(run: RolloutRun, by: str, now_ns: int, reason: str) -> Change:
    run.state, run.paused_by, run.reason, run.updated_ns = "paused", by, reason, now_ns
    return Change("pause", reason)


def _end(run: RolloutRun, state: str, now_ns: int, reason: str) -> Change:
    run.state, run.paused_by, run.reason, run.updated_ns = state, None, reason, now_ns
    decision = {"rolled_back": "rollback", "failed": "fail", "aborted": "abort", "promoted": "promote",
                "passed": "pass"}[state]
    return Change(decision, reason)
