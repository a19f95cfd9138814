"""Folding per-node outcomes into a GadgetInstance's ``status``, as a pure function.

The status says what is really running: counts for every node, an entry for each node worth a look
(every node that is not running first, capped so the object stays small at any fleet size), a phase,
and Ready / Progressing / Degraded conditions. ``compute_status`` is deterministic for its inputs, so
an unchanged world renders an identical status and nothing is written.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gadget_operator.conditions import Condition, clip, format_time, merge_conditions


class NodeState(enum.StrEnum):
    RUNNING = "Running"
    PENDING = "Pending"
    FAILED = "Failed"
    UNREACHABLE = "Unreachable"
    REMOVING = "Removing"


class Phase(enum.StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    DEGRADED = "Degraded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"
    TERMINATING = "Terminating"


_NOT_WORKING = (NodeState.FAILED, NodeState.UNREACHABLE)
# Entries are listed worst first, so the cap drops running nodes before anything that needs a look.
_LISTING_ORDER = {
    NodeState.FAILED: 0,
    NodeState.UNREACHABLE: 1,
    NodeState.PENDING: 2,
    NodeState.REMOVING: 3,
    NodeState.RUNNING: 4,
}
_MESSAGES_IN_CONDITION = 3
_NODES_NAMED = 3
# The CRD caps status strings (a node message at 4096, the summary at 32768): a longer daemon error
# would get every status write refused, so it is clipped here.
MAX_NODE_MESSAGE = 1024
MAX_MESSAGE = 8192


@dataclass(frozen=True, slots=True)
class NodeOutcome:
    """How one resource's instance stands on one node."""

    node: str
    state: NodeState
    instance_id: str = ""
    message: str = ""
    since: datetime | None = None


@dataclass(frozen=True, slots=True)
class Progress:
    """A rolling update as the status shows it (``rollout``)."""

    max_surge: int
    updated: int
    updating: int
    waiting: int
    halted: bool
    strategy: str = "RollingUpdate"
    paused: bool = False
    """No further node is admitted until the rollout is resumed."""
    awaiting_step: bool = False
    """Manual: every batch asked for has started; the next waits for the next step."""

    @property
    def stopped(self) -> bool:
        """Whether the rollout does not advance by itself (halted, paused, or awaiting its next step)."""
        return self.halted or ((self.paused or self.awaiting_step) and not self.updating)

    def describe(self) -> str:
        kind = "manual rollout" if self.strategy == "Manual" else "rolling update"
        text = (
            f"{kind}: {self.updated} node(s) updated, {self.updating} updating, "
            f"{self.waiting} waiting with the previous spec (at most {self.max_surge} at once)"
        )
        if self.halted:
            text += "; halted because the new spec failed: fix the spec to resume"
        elif self.paused:
            text += "; paused: resume it to go on"
        elif self.awaiting_step:
            text += "; waiting for the next step to be asked for"
        return text

    def as_status(self) -> dict[str, object]:
        return {
            "strategy": self.strategy,
            "maxSurge": self.max_surge,
            "updatedNodes": self.updated,
            "updatingNodes": self.updating,
            "waitingNodes": self.waiting,
            "halted": self.halted,
            "paused": self.paused,
            "awaitingStep": self.awaiting_step,
        }


@dataclass(frozen=True, slots=True)
class Refused:
    """Why nothing of a resource may run: the gadget rejected its spec, or the operator refuses it."""

    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class Observed:
    """What every status computation starts from: the resource as last seen and the time."""

    generation: int
    previous: Mapping[str, Any]
    now: datetime
    max_node_entries: int


def compute_status(
    observed: Observed,
    *,
    desired_nodes: Iterable[str] = (),
    outcomes: Mapping[str, NodeOutcome] | None = None,
    spec_error: str | None = None,
    rejected: Refused | None = None,
    finalizer_error: str | None = None,
    suspended: bool = False,
    deleting: bool = False,
    rollout: Progress | None = None,
) -> dict[str, Any]:
    """The full ``status`` for one resource; see the module docstring. Outcomes of nodes that are not
    desired (any more) are nodes that still hold one of the resource's instances: they are listed as
    Removing (or why removal fails), so the status covers everything that runs."""
    outcomes = outcomes or {}
    desired = sorted(set(desired_nodes))
    shown = [outcomes[node] for node in desired if node in outcomes] if not deleting else list(outcomes.values())
    lingering = [] if deleting else sorted((o for n, o in outcomes.items() if n not in set(desired)), key=_by_node)
    if suspended:  # nothing should run anywhere: whatever still does is lingering
        shown, lingering = [], sorted(outcomes.values(), key=_by_node)
    counts = Counter(outcome.state for outcome in shown)
    running = counts[NodeState.RUNNING]
    failed = counts[NodeState.FAILED] + counts[NodeState.UNREACHABLE]
    pending = len(desired) - running - failed if not (deleting or suspended) else 0
    broken = sorted((o for o in shown if o.state in _NOT_WORKING), key=lambda o: o.node)

    phase, message, conditions = _judge(
        desired=len(desired),
        running=running,
        failed=failed,
        pending=pending,
        broken=broken,
        cleaning=len(shown),
        spec_error=spec_error,
        rejected=rejected,
        finalizer_error=finalizer_error,
        suspended=suspended,
        deleting=deleting,
    )
    if rollout is not None:
        message, conditions = _rolling(message, conditions, rollout)
    if lingering:
        message, conditions = _still_running(message, conditions, lingering)
    entries = sorted(shown + lingering, key=lambda o: (_LISTING_ORDER[o.state], o.node))
    previous_entries = {
        entry.get("node"): entry for entry in observed.previous.get("nodes") or () if isinstance(entry, Mapping)
    }
    listed = entries[: observed.max_node_entries]
    status: dict[str, Any] = {
        "observedGeneration": observed.generation,
        "phase": phase.value,
        "ready": f"{running}/{len(desired)}",
        "message": clip(message, MAX_MESSAGE),
        "desiredNodes": len(desired),
        "runningNodes": running,
        "failedNodes": failed,
        "pendingNodes": pending,
        "conditions": merge_conditions(
            observed.previous.get("conditions") or (),
            conditions,
            generation=observed.generation,
            now=observed.now,
        ),
        "nodes": [_entry(outcome, observed, previous_entries) for outcome in sorted(listed, key=lambda o: o.node)],
    }
    if len(entries) > len(listed):
        status["nodesOmitted"] = len(entries) - len(listed)
    if rollout is not None:
        status["rollout"] = rollout.as_status()
    return status


def _by_node(outcome: NodeOutcome) -> str:
    return outcome.node


def _judge(
    *,
    desired: int,
    running: int,
    failed: int,
    pending: int,
    broken: list[NodeOutcome],
    cleaning: int,
    spec_error: str | None,
    rejected: Refused | None,
    finalizer_error: str | None,
    suspended: bool,
    deleting: bool,
) -> tuple[Phase, str, list[Condition]]:
    """Phase, summary and conditions; the order of the checks is the order of precedence."""
    problems = summarize(broken)
    if deleting:
        message = f"removing instances from {cleaning} node(s)" if cleaning else "removing instances"
        if broken:
            message = f"cannot remove instances from {len(broken)} node(s), retrying: {problems}"
        return (
            Phase.TERMINATING,
            message,
            [
                Condition("Ready", False, "Terminating", message),
                Condition("Progressing", True, "Terminating", message),
                Condition("Degraded", bool(broken), "CleanupBlocked" if broken else "Terminating", problems),
            ],
        )
    if spec_error is not None:
        return _settled(Phase.FAILED, "InvalidSpec", f"invalid spec: {spec_error}", ready=False, degraded=True)
    if rejected is not None:
        return _settled(Phase.FAILED, rejected.reason, rejected.message, ready=False, degraded=True)
    if finalizer_error is not None:
        message = f"cannot add the cleanup finalizer, retrying with backoff; nothing runs until then: {finalizer_error}"
        return _settled(Phase.PENDING, "FinalizerRefused", message, ready=False, degraded=True)
    if suspended:
        return _settled(Phase.SUSPENDED, "Suspended", "suspended: no instances run", ready=True, degraded=False)
    if desired == 0:
        message = "no node matches: no instances run"
        return _settled(Phase.PENDING, "NoMatchingNodes", message, ready=False, degraded=False)
    summary = f"running on {running} of {desired} node(s)"
    if failed:
        phase = Phase.FAILED if running == 0 and pending == 0 else Phase.DEGRADED
        message = f"{summary}; failed on {failed}: {problems}"
        ready_reason = "NodesFailed"
    elif pending:
        phase, message, ready_reason = Phase.PENDING, f"{summary}; {pending} pending", "NodesPending"
    else:
        phase, message, ready_reason = Phase.RUNNING, summary, "AllNodesRunning"
    return (
        phase,
        message,
        [
            Condition("Ready", phase is Phase.RUNNING, ready_reason, message),
            Condition(
                "Progressing",
                pending > 0,
                "Creating" if pending else "Converged",
                f"{pending} node(s) pending" if pending else summary,
            ),
            Condition("Degraded", failed > 0, "NodesFailed" if failed else "NoFailures", problems),
        ],
    )


def _rolling(message: str, conditions: list[Condition], rollout: Progress) -> tuple[str, list[Condition]]:
    """A rolling update in progress: said in the summary; Progressing while it advances, not once the
    new spec's failures have halted it (then only a spec change moves it on), nor while it is paused or
    waits for its next step with nothing starting."""
    progress = rollout.describe()
    updated = []
    for condition in conditions:
        if condition.type == "Progressing":
            if rollout.halted:
                reason = "RolloutHalted"
            elif rollout.stopped:
                reason = "RolloutPaused" if rollout.paused else "AwaitingNextStep"
            else:
                reason = "RollingUpdate"
            condition = Condition("Progressing", not rollout.stopped, reason, progress)
        updated.append(condition)
    return f"{message}; {progress}", updated


def _still_running(
    message: str, conditions: list[Condition], lingering: list[NodeOutcome]
) -> tuple[str, list[Condition]]:
    """Nodes that should run nothing for the resource but still hold an instance (being removed, or the
    removal fails): said in the summary, and the resource is Progressing (Degraded if removal fails)."""
    held = f"still on {len(lingering)} node(s) that should not run it: {summarize(lingering)}"
    blocked = [o for o in lingering if o.state in _NOT_WORKING]
    updated = []
    for condition in conditions:
        if condition.type == "Progressing":
            condition = Condition("Progressing", True, "Removing", held)
        elif condition.type == "Degraded" and blocked:
            problems = "; ".join(filter(None, (condition.message if condition.status else "", summarize(blocked))))
            condition = Condition(
                "Degraded", True, "RemovalBlocked" if not condition.status else condition.reason, problems
            )
        updated.append(condition)
    return f"{message}; {held}", updated


def summarize(broken: list[NodeOutcome]) -> str:
    """The problems of many nodes, said once per distinct message: the same pull error on 200 nodes is
    one line with the count and a few node names, not 200 lines. Largest groups first."""
    groups: dict[str, list[str]] = {}
    for outcome in broken:
        groups.setdefault(clip(outcome.message, MAX_NODE_MESSAGE) or outcome.state.value, []).append(outcome.node)
    ordered = sorted(groups.items(), key=lambda item: (-len(item[1]), item[1][0]))
    parts = []
    for message, nodes in ordered[:_MESSAGES_IN_CONDITION]:
        if len(nodes) == 1:
            parts.append(f"{nodes[0]}: {message}")
            continue
        named = ", ".join(nodes[:_NODES_NAMED])
        if len(nodes) > _NODES_NAMED:
            named += f" and {len(nodes) - _NODES_NAMED} more"
        parts.append(f"{message} (on {len(nodes)} nodes: {named})")
    left = sum(len(nodes) for _, nodes in ordered[_MESSAGES_IN_CONDITION:])
    if left:
        parts.append(f"and {left} more")
    return "; ".join(parts)


def _settled(
    phase: Phase, reason: str, message: str, *, ready: bool, degraded: bool
) -> tuple[Phase, str, list[Condition]]:
    """A state with nothing in progress: every condition has the same reason, and only a degraded
    one repeats the message."""
    return (
        phase,
        message,
        [
            Condition("Ready", ready, reason, message),
            Condition("Progressing", False, reason, message),
            Condition("Degraded", degraded, reason, message if degraded else ""),
        ],
    )


def _entry(outcome: NodeOutcome, observed: Observed, previous: Mapping[Any, Mapping[str, Any]]) -> dict[str, Any]:
    entry: dict[str, Any] = {"node": outcome.node, "state": outcome.state.value}
    if outcome.instance_id:
        entry["instanceId"] = outcome.instance_id
    if outcome.message:
        entry["message"] = clip(outcome.message, MAX_NODE_MESSAGE)
    if outcome.since is not None:
        entry["since"] = format_time(outcome.since)
    else:
        # An outcome made up at render time (a listed node that does not exist) has no history of its
        # own: keep the time already shown while the state holds, so re-rendering changes nothing.
        shown = previous.get(outcome.node) or {}
        kept = shown.get("since") if shown.get("state") == outcome.state.value else None
        entry["since"] = kept or format_time(observed.now)
    return entry


def status_differs(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Whether writing ``wanted`` would change anything a reader sees."""
    return dict(current) != dict(wanted)
