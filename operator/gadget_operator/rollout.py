"""Rolling updates: which nodes may start a resource's new spec now.

A spec change never takes a node's running gadget away before the new one is proven there (the
planner keeps the old instance until then). ``RollingUpdate`` also limits the spread: only
``maxSurge`` nodes that run an older spec start the new one at a time; the next ones start as those
are proven, and none start while one of them has failed, so a broken spec stops at the first batch
and everything else keeps the previous one. A node that runs nothing of the resource yet has nothing
to protect and starts the new spec at once. A fixed spec is a new digest, so a new rollout.

``Manual`` is the same with a limit: the rollout admits its first batch, then one more batch per step
asked for (``Controls.steps``: the control API's NEXT intent writes the ``rollout-step`` annotation). A
pause (the ``rollout-paused`` annotation: PAUSE and RESUME intents) admits nothing more in either.

Kept in memory only: after a restart the nodes already running the new spec are admitted again as
they are seen, and no new node is admitted before every target node has been seen, so the batch is
never exceeded. Steps and pauses are annotations on the resource, so they outlive the process too.

Each step (nodes admitted), a halt, the end, a pause and a resume are recorded in the event log and
posted as Kubernetes Events on the resource.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gadget_operator import identity, planner
from gadget_operator.control import events
from gadget_operator.daemon import model
from gadget_operator.resource import GadgetInstanceResource, GadgetInstanceSpec
from gadget_operator.status import NodeOutcome, NodeState, Progress

if TYPE_CHECKING:
    from gadget_operator.reconciler import Reconciler


@dataclass(slots=True)
class Rollout:
    """One resource's rollout of one spec (by digest)."""

    digest: str
    admitted: set[str] = field(default_factory=set)
    """Nodes allowed to start the new spec beside an older one."""
    updated: set[str] = field(default_factory=set)
    """Nodes where the new spec has been proven running; they never count against the batch again."""
    waiting: set[str] = field(default_factory=set)
    """Nodes that run only an older spec and have not been admitted yet."""
    version: int = 0
    """Counts changes of ``admitted`` and ``nodes``, so that what is derived from them is recomputed."""
    nodes: frozenset[str] | None = None
    """Shared store: the nodes the new spec's one instance covers while the rollout has not reached
    every node (None once it has); each step is a new instance, as IG instances are immutable."""
    halt_reported: bool = False
    complete_reported: bool = False

    def updating(self, targets: Collection[str]) -> set[str]:
        return {node for node in self.admitted - self.updated if node in targets}

    def admitted_in(self, targets: Collection[str]) -> int:
        return sum(1 for node in self.admitted if node in targets)

    def admit(
        self,
        node: str,
        *,
        batch: int,
        targets: Collection[str],
        failed: Collection[str],
        limit: int | None = None,
        paused: bool = False,
    ) -> bool:
        """Whether ``node`` (which runs an older spec) may start the new one now; admits it if so.
        ``limit``: most target nodes admitted in all (Manual: the batches asked for); ``paused``: none."""
        if node in self.admitted:
            return True
        updating = self.updating(targets)
        if (
            paused
            or len(updating) >= batch
            or any(n in failed for n in updating)
            or (limit is not None and self.admitted_in(targets) >= limit)
        ):
            self.waiting.add(node)
            return False
        self.admitted.add(node)
        self.waiting.discard(node)
        self.version += 1
        return True

    def readmit(self, node: str) -> None:
        """``node`` already runs the new spec (seen after a restart, or a node set that was written)."""
        if node not in self.admitted:
            self.admitted.add(node)
            self.waiting.discard(node)
            self.version += 1

    def progress(
        self,
        *,
        batch: int,
        targets: Collection[str],
        failed: Collection[str],
        limit: int | None = None,
        paused: bool = False,
        strategy: str = "RollingUpdate",
    ) -> Progress | None:
        """The status of the rollout, or None when it is over (nothing updating or waiting)."""
        updating = self.updating(targets)
        waiting = {node for node in self.waiting if node in targets}
        if not updating and not waiting:
            return None
        halted = bool(waiting) and any(node in failed for node in updating)
        return Progress(
            max_surge=batch,
            updated=sum(1 for node in self.updated if node in targets),
            updating=len(updating),
            waiting=len(waiting),
            halted=halted,
            strategy=strategy,
            paused=paused and bool(waiting),
            awaiting_step=(limit is not None and bool(waiting) and not halted and self.admitted_in(targets) >= limit),
        )


class Rollouts:
    """The rollout of each rolling resource's current spec, by resource UID."""

    def __init__(self) -> None:
        self._by_uid: dict[str, Rollout] = {}

    def of(self, uid: str, digest: str, *, rolling: bool) -> Rollout | None:
        """The rollout of spec ``digest`` (a new one when the spec changed); None if not rolling."""
        current = self._by_uid.get(uid)
        if not rolling:
            self._by_uid.pop(uid, None)
            return None
        if current is None or current.digest != digest:
            current = self._by_uid[uid] = Rollout(digest)
        return current

    def get(self, uid: str) -> Rollout | None:
        return self._by_uid.get(uid)

    def forget(self, uid: str) -> None:
        self._by_uid.pop(uid, None)


class RollingUpdates:
    """The reconciler's rolling updates: admission per node (per-node stores) or per step of the one
    instance (shared store), the wake-ups when a batch frees up, and the progress the status shows."""

    def __init__(self, reconciler: Reconciler) -> None:
        self.rec = reconciler
        self.registry = Rollouts()

    def of(self, gi: GadgetInstanceResource) -> Rollout | None:
        spec = gi.spec
        if spec is None:
            return None
        return self.registry.of(gi.uid, spec.digest, rolling=spec.update_strategy.rolling)

    def _inputs(self, gi: GadgetInstanceResource, plan: Rollout) -> tuple[int, set[str], set[str]]:
        """(batch size, target nodes, updating nodes whose new instance failed) of ``gi``'s rollout."""
        assert gi.spec is not None
        targets = set(self._targets(gi, gi.spec))
        outcomes = self.rec.outcomes.get(gi.uid, {})
        failed = {
            node
            for node in plan.updating(targets)
            if (o := outcomes.get(node)) is not None and o.state is NodeState.FAILED
        }
        return gi.spec.update_strategy.batch_size(len(targets)), targets, failed

    def _targets(self, gi: GadgetInstanceResource, spec: GadgetInstanceSpec) -> list[str]:
        """The nodes the rollout goes through: those the spec selects that have a daemon now. A Node
        without one runs nothing meanwhile, so it has nothing to protect, and a batch must never wait
        on it (in the shared store it would wait forever: IG may never run on that node)."""
        return self.rec.desired.matching_nodes(gi, spec)

    def hold_back(
        self, node: str, desired: list[planner.DesiredInstance], actual: Mapping[str, model.GadgetInstance]
    ) -> tuple[list[planner.DesiredInstance], dict[str, str]]:
        """Per-node store: the desired instances this node may start now, and the rolling resources
        whose new spec must wait here (by UID, the older instance that keeps running meanwhile)."""
        older: dict[str, list[str]] = {}
        for instance in actual.values():
            owner = identity.parse_ownership(instance.tags)
            if owner is not None and owner.node == node:
                older.setdefault(owner.resource_uid, []).append(instance.id)
        to_plan: list[planner.DesiredInstance] = []
        waiting: dict[str, str] = {}
        for wanted in desired:
            uid, instance_id = wanted.owner.resource_uid, wanted.instance.id
            gi = self.rec.resources.get(uid)
            plan = self.of(gi) if gi is not None else None
            previous = [i for i in older.get(uid, ()) if i != instance_id]
            if gi is None or plan is None or not previous:
                to_plan.append(wanted)  # not rolling, or nothing runs here to protect
            elif instance_id in actual:
                plan.readmit(node)
                to_plan.append(wanted)
            elif self._seen_everywhere(gi) and (node in plan.admitted or self._admit(gi, plan, node)):
                to_plan.append(wanted)
            else:
                plan.waiting.add(node)
                waiting[uid] = previous[0]
        return to_plan, waiting

    def _admission(self, gi: GadgetInstanceResource, plan: Rollout) -> dict[str, Any]:
        batch, targets, failed = self._inputs(gi, plan)
        return {
            "batch": batch,
            "targets": targets,
            "failed": failed,
            "limit": _limit(gi, batch),
            "paused": gi.controls.paused,
        }

    def _admit(self, gi: GadgetInstanceResource, plan: Rollout, node: str) -> bool:
        """Admit ``node`` if it may start the new spec now (a step, recorded)."""
        if not plan.admit(node, **self._admission(gi, plan)):
            return False
        self._stepped(gi, plan, [node])
        return True

    def _stepped(self, gi: GadgetInstanceResource, plan: Rollout, nodes: list[str]) -> None:
        """A step: ``nodes`` start the new spec."""
        if not nodes:
            return
        targets = set(self._targets(gi, gi.spec)) if gi.spec is not None else set()
        updated = sum(1 for node in plan.updated if node in targets)
        self.rec.recorder.rollout(
            events.RolloutAction.STEP, gi, updated=updated, total=len(targets), nodes=tuple(sorted(nodes))
        )
        self.rec.report.announce(
            gi,
            "RolloutStep",
            f"{', '.join(sorted(nodes))} start(s) the new spec ({updated} of {len(targets)} node(s) updated)",
        )

    def _announce(self, gi: GadgetInstanceResource, plan: Rollout, action: events.RolloutAction) -> None:
        """A halt, the end, a pause or a resume of ``gi``'s rollout."""
        targets = set(self._targets(gi, gi.spec)) if gi.spec is not None else set()
        updated = sum(1 for node in plan.updated if node in targets)
        event = self.rec.recorder.rollout(action, gi, updated=updated, total=len(targets))
        self.rec.report.announce(gi, _REASONS[action], event.summary(), warning=action is events.RolloutAction.HALTED)

    def controls_changed(self, previous: GadgetInstanceResource, gi: GadgetInstanceResource) -> None:
        """A pause, a resume or a step (annotations): record it, and let waiting nodes in if they may."""
        plan = self.of(gi)
        if plan is None:
            return
        if previous.controls.paused != gi.controls.paused:
            action = events.RolloutAction.PAUSED if gi.controls.paused else events.RolloutAction.RESUMED
            self._announce(gi, plan, action)
        self.nudge((gi.uid,))

    def _seen_everywhere(self, gi: GadgetInstanceResource) -> bool:
        """Per-node store: every target node has reported on the resource since this process started,
        so the nodes already running the new spec are known and the batch cannot be exceeded."""
        assert gi.spec is not None
        outcomes = self.rec.outcomes.get(gi.uid, {})
        return all(node in outcomes for node in self.rec.desired.matching_nodes(gi, gi.spec))

    def nudge(self, uids: Iterable[str]) -> None:
        """Wake the nodes waiting for their turn in a rollout that can take more nodes now."""
        for uid in set(uids):
            plan = self.registry.get(uid)
            gi = self.rec.resources.get(uid)
            if plan is None or not plan.waiting or gi is None or gi.spec is None:
                continue
            batch, targets, failed = self._inputs(gi, plan)
            if failed or len(plan.updating(targets)) >= batch or gi.controls.paused:
                continue
            limit = _limit(gi, batch)
            if limit is not None and plan.admitted_in(targets) >= limit:
                continue
            if self.rec.shared is not None:
                self.rec.shared.wake()
            elif self._seen_everywhere(gi):
                self.rec.wake_nodes(plan.waiting)

    def note_outcome(self, uid: str, node: str, outcome: NodeOutcome) -> None:
        """A node proven running the current spec leaves its rollout's batch for good (and the rollout
        may be complete); an admitted node whose new instance failed halts it."""
        plan = self.registry.get(uid)
        if plan is None or outcome.state not in (NodeState.RUNNING, NodeState.FAILED):
            return
        gi = self.rec.resources.get(uid)
        if gi is None or gi.spec is None or plan.digest != gi.spec.digest:
            return
        if outcome.state is NodeState.FAILED:
            if not plan.halt_reported and node in plan.admitted and node not in plan.updated:
                plan.halt_reported = True
                self._announce(gi, plan, events.RolloutAction.HALTED)
            return
        if node not in plan.updated and outcome.instance_id == self.rec.desired.expected_id(gi, gi.spec, node):
            plan.updated.add(node)
            plan.halt_reported = False
            self.nudge((uid,))
            if not plan.complete_reported and node in plan.admitted and self.progress(gi) is None:
                plan.complete_reported = True
                self._announce(gi, plan, events.RolloutAction.COMPLETE)

    def advance_shared(self, stored: Iterable[model.GadgetInstance]) -> set[str]:
        """Shared store: admit the next nodes of every rolling update. While a rollout has not reached
        every node that runs an older spec, the new spec's one instance covers the nodes that ran
        nothing of it plus the admitted ones; returns the resources in that state."""
        rolling = {uid for uid, gi in self.rec.resources.items() if gi.spec and gi.spec.update_strategy.rolling}
        nodes_by_spec: dict[tuple[str, str], set[str]] = {}
        cluster = self.rec.topology.labels.keys()
        for instance in stored if rolling else ():  # (a pass over the whole store, on every store pass)
            owner = identity.parse_ownership(instance.tags)
            if owner is not None and owner.resource_uid in rolling:
                key = (owner.resource_uid, owner.spec_hash)
                nodes_by_spec.setdefault(key, set()).update(planner.runs_on(instance, owner, cluster))
        partial: set[str] = set()
        for uid, gi in self.rec.resources.items():
            spec = gi.spec
            plan = self.of(gi) if gi.active and spec is not None and self.rec.dry_runs.accepted(gi) else None
            if plan is None or spec is None:
                continue
            targets = set(self._targets(gi, spec))
            older = set().union(*(n for (owner, h), n in nodes_by_spec.items() if owner == uid and h != spec.digest))
            older &= targets
            for node in nodes_by_spec.get((uid, spec.digest), set()) & older:
                plan.readmit(node)
            admitted = [node for node in sorted(older - plan.admitted) if plan.admit(node, **self._admission(gi, plan))]
            self._stepped(gi, plan, admitted)
            step = None if older <= plan.admitted else frozenset((targets - older) | plan.admitted)
            if step != plan.nodes:
                plan.nodes = step
                plan.version += 1
                self.rec.desired.update(gi)
            if step is not None:
                partial.add(uid)
        return partial

    def progress(self, gi: GadgetInstanceResource) -> Progress | None:
        plan = self.registry.get(gi.uid)
        if plan is None or gi.spec is None or plan.digest != gi.spec.digest:
            return None
        batch, targets, failed = self._inputs(gi, plan)
        return plan.progress(
            batch=batch,
            targets=targets,
            failed=failed,
            limit=_limit(gi, batch),
            paused=gi.controls.paused,
            strategy=gi.spec.update_strategy.type.value,
        )


_REASONS = {
    events.RolloutAction.HALTED: "RolloutHalted",
    events.RolloutAction.COMPLETE: "RolloutComplete",
    events.RolloutAction.PAUSED: "RolloutPaused",
    events.RolloutAction.RESUMED: "RolloutResumed",
}
"""The Kubernetes Event reason of each rollout event but a step (``RolloutStep``)."""


def _limit(gi: GadgetInstanceResource, batch: int) -> int | None:
    """Manual: the most target nodes the rollout may have admitted (its first batch and one per step
    asked for); None for a RollingUpdate."""
    if gi.spec is None or not gi.spec.update_strategy.manual:
        return None
    return batch * (1 + gi.controls.steps)
