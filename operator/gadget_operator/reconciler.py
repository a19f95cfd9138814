"""The reconciler: desired state (GadgetInstances x matching nodes) made true on every node's daemon.

Level-triggered and node-centric. Inputs only mark things as changed:

* ``observe`` (kopf watch events of GadgetInstances) records the resource and wakes the nodes whose
  desired state it touches;
* ``Topology`` changes (nodes and daemon endpoints) start, wake or stop node workers.

Each node has one ``NodeWorker`` task that, when woken or when its periodic drift check is due, plans
the whole node against what its daemon lists (``planner.plan_node``) and carries the plan out
(``executor.execute``). Outcomes land in ``self.outcomes`` per (resource, node) and mark the resource
dirty; the ``StatusWriter`` folds them into the status and writes it when it changed.

Around it, one module per job: ``deletion`` (what a deletion must still clean), ``finalizers`` (added
and removed through a rate-limited queue), ``dry_run`` (a new spec checked before its first instance),
``rollout`` (how many nodes start a new spec at once), ``shared_store`` (placement in IG's shared
store), ``status`` and ``status_writer`` (the status).

Nothing is stored outside the API server and the daemons: a restarted operator rebuilds all of this.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime

from gadget_operator import (
    errors,
    executor,
    identity,
    inventory,
    kube,
    metrics,
    planner,
    readiness,
    resource,
    rollout,
    tenancy,
    validation,
)
from gadget_operator.control.recorder import Recorder
from gadget_operator.daemon import model
from gadget_operator.daemon.client import DaemonClient, DaemonPool
from gadget_operator.deletion import Deletions
from gadget_operator.desired import DesiredIndex
from gadget_operator.discovery import Topology
from gadget_operator.dry_run import DryRuns
from gadget_operator.finalizers import Finalizers
from gadget_operator.node_worker import NodeWorker
from gadget_operator.resource import GadgetInstanceResource
from gadget_operator.settings import DaemonStore, Settings
from gadget_operator.shared_store import SharedPlacement
from gadget_operator.status import NodeOutcome, NodeState
from gadget_operator.status_report import StatusReport
from gadget_operator.status_writer import StatusWriter

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]
WAITING_FOR_TURN = "runs the previous spec{old} until its turn in the rolling update"
REMOVING = "removing the instance"
_BLOCKED = (NodeState.FAILED, NodeState.UNREACHABLE)


PREVIOUS_KEEPS_RUNNING = " (the previous spec's instance {} keeps running)"
"""Added to a node's failure when the instance of the previous spec stays in its place."""


def utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class Reconciler:
    """All in-memory state of one operator process, rebuilt from the API server and daemons."""

    def __init__(
        self,
        *,
        settings: Settings,
        api: kube.KubeApi,
        pool: DaemonPool,
        topology: Topology,
        clock: Clock = utcnow,
        recorder: Recorder | None = None,
    ) -> None:
        self.settings = settings
        self.api = api
        self.pool = pool
        self.topology = topology
        self.clock = clock
        self.recorder = recorder if recorder is not None else Recorder()
        """The event log's hooks (``control.recorder``) and what is known of each daemon's reachability."""
        self.resources: dict[str, GadgetInstanceResource] = {}
        self.outcomes: dict[str, dict[str, NodeOutcome]] = {}
        """Per resource UID, per node: how its instance stands."""
        self.workers: dict[str, NodeWorker] = {}
        self.limits = executor.Limits(settings.executor.max_concurrency, settings.executor.node_concurrency)
        self.report = StatusReport(self)
        self.writer = StatusWriter(render=self.report.render, write=self.report.write, settings=settings.status)
        self._tasks: set[asyncio.Task[None]] = set()
        self.desired = DesiredIndex(self)
        self._unreachable: set[str] = set()
        self.deletions = Deletions(self)
        self.finalizers = Finalizers(
            api,
            settings.executor,
            self.resources,
            deletion_done=self.deletions.done,
            released=self.deletions.released,
            warn=self._warn,
        )
        self._resources_listed = False
        self.dry_runs = DryRuns(
            settings.executor,
            daemons=topology.ready_nodes,
            healthy=lambda node: not (w := self.workers.get(node)) or not w.failures,
            client=pool.get,
            decided=self._verdict_recorded,
        )
        """No instance of a spec is created before its dry run passed."""
        self.rollouts = rollout.RollingUpdates(self)
        self.refusals: dict[str, tenancy.Refusal] = {}
        """Resources the operator refuses to run (``tenancy``), by UID."""
        self.shared = SharedPlacement(self) if settings.discovery.daemon_store is DaemonStore.SHARED else None
        topology.on_change = self.on_topology_change

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._spawn(self.writer.run())
        self.finalizers.start()
        self.dry_runs.start()
        if self.shared is not None:
            namespace = self.settings.discovery.daemon_namespace
            self._spawn(inventory.follow(self.api, namespace, self.shared.inventory))
            self._spawn(self.shared.run())
        self.on_topology_change(self.served_nodes())

    def served_nodes(self) -> set[str]:
        """The nodes whose daemon gets a worker: every node with a Node object and a daemon and, with
        per-node stores, a daemon whose node left the cluster, so that what it still runs of ours is
        removed (nothing is desired there), rather than kept for ever."""
        if self.shared is not None:
            return set(self.topology.ready_nodes())
        return set(self.topology.endpoints)

    async def stop(self) -> None:
        await self.finalizers.stop()
        await self.dry_runs.stop()
        tasks = [*self._tasks, *(w.task for w in self.workers.values() if w.task is not None)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.workers.clear()

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- inputs ------------------------------------------------------------------------------------

    async def observe(self, event_type: str | None, body: dict[str, object]) -> None:
        """A watch event of a GadgetInstance or a ClusterGadgetInstance (kopf.on.event)."""
        metadata = body.get("metadata")
        if not isinstance(metadata, dict) or "uid" not in metadata:
            return
        uid = str(metadata["uid"])
        if event_type == "DELETED":
            self._forget(uid)
            return
        gi = self._admit(GadgetInstanceResource.from_body(body))
        previous = self.resources.get(uid)
        if previous is not None and _older(gi.resource_version, previous.resource_version):
            return  # we already hold a newer copy (the response of our own status write)
        self.resources[uid] = gi
        if not gi.deleting and not gi.has_finalizer and gi.spec is not None:
            # Nothing runs before the finalizer is on (its watch event comes back here); known meanwhile,
            # so that the status can say why nothing runs if it cannot be added.
            self.finalizers.sync(uid)
            self.writer.mark(uid)
            return
        self.report.count_phase(uid, str(gi.status.get("phase", "")) or None)
        if gi.deleting and gi.has_finalizer and uid not in self.deletions:
            self.desired.update(gi)
            self.deletions.begin(uid)
            return
        if previous is None or _wants_differ(previous, gi):
            self._check_spec(gi)
            self.desired.update(gi)
            self.writer.mark(uid)
            self.wake_nodes(self._nodes_touched(previous, gi))
            if self.shared is not None:
                self.shared.wake()
        elif previous.status != gi.status:
            # Someone else (or our own write) changed the status: re-check it, do not re-plan.
            self.writer.mark(uid)
        if previous is not None and previous.controls != gi.controls:
            self._controls_changed(previous, gi)

    def _admit(self, gi: GadgetInstanceResource) -> GadgetInstanceResource:
        """Tenancy (``tenancy.admit``): a refused resource runs nothing, as an invalid spec does, and its
        status says why; an admitted namespaced one runs confined to its namespace."""
        admitted = tenancy.admit(gi, self.settings.tenancy.allowed_images)
        if isinstance(admitted, tenancy.Refusal):
            self.refusals[gi.uid] = admitted
            return replace(gi, spec=None)
        self.refusals.pop(gi.uid, None)
        return admitted

    def on_topology_change(self, nodes: set[str]) -> None:
        self.desired.topology_changed(nodes)
        if self.shared is not None:
            self.shared.wake()
        metrics.READY_NODES.set(len(self.topology.ready_nodes()))
        served = self.served_nodes()
        for node in nodes:
            if node in served and self.shared is None:
                self.deletions.node_served(node)
            worker = self.workers.get(node)
            if node in served and worker is None:
                self._start_worker(node)
            elif node in served and worker is not None:
                worker.wake(relist=True)
            elif node not in served and worker is not None:
                self._stop_worker(node)
            elif node not in served and self.shared is None:
                self.deletions.recheck_out_of_reach(node)
        self._spawn(self._drop_unused_clients())
        for gi in self.resources.values():
            self._check_spec(gi)  # a check that waited for a reachable daemon
            self.writer.mark(gi.uid)

    async def _drop_unused_clients(self) -> None:
        """Close channels (and port-forward listeners) of endpoints that are gone or replaced."""
        in_use = set(self.topology.endpoints.values())
        for address in self.pool.addresses() - in_use:
            await self.pool.discard(address)

    # -- node passes -------------------------------------------------------------------------------

    def _start_worker(self, node: str) -> None:
        config = self.settings.executor
        worker = NodeWorker(
            node=node,
            run_pass=self._run_pass,
            resync_interval=config.resync_interval,
            backoff_initial=config.backoff_initial,
            backoff_max=config.backoff_max,
        )
        worker.task = asyncio.ensure_future(worker.run())
        self.workers[node] = worker
        self.recorder.joined(node, self.topology.endpoints.get(node, ""))

    async def _run_pass(self, worker: NodeWorker) -> None:
        try:
            await self.sync_node(worker)
        finally:
            if worker.failures:
                self._unreachable.add(worker.node)
            else:
                self._unreachable.discard(worker.node)
                self.recorder.reached(worker.node)
            metrics.UNREACHABLE_NODES.set(len(self._unreachable))

    def _stop_worker(self, node: str) -> None:
        worker = self.workers.pop(node)
        if worker.task is not None:
            worker.task.cancel()
        self.limits.forget(node)
        self.recorder.left(node)
        self._unreachable.discard(node)
        metrics.UNREACHABLE_NODES.set(len(self._unreachable))
        reported: dict[str, str] = {}
        for uid, per_node in self.outcomes.items():
            if (outcome := per_node.pop(node, None)) is not None:
                reported[uid] = outcome.instance_id
                self.writer.mark(uid)
        # What its daemon held when last seen (listed, else as last reported): a deletion waits for it.
        self.deletions.node_lost(node, _holding(node, worker.actual) if worker.actual is not None else reported)

    def wake_nodes(self, nodes: set[str], *, relist: bool = False) -> None:
        for node in nodes:
            worker = self.workers.get(node)
            if worker is not None:
                worker.wake(relist=relist)

    def wake_all(self, *, relist: bool = True) -> None:
        """Resync every node now (the "resync" intent)."""
        for worker in self.workers.values():
            worker.wake(relist=relist)
        if self.shared is not None:
            self.shared.wake()

    def resync(self, uid: str) -> set[str]:
        """Look at every node of one resource again now, from a fresh list (the "resync" intent, and
        the ``resync-requested`` annotation); returns those nodes."""
        gi = self.resources.get(uid)
        if gi is None:
            return set()
        nodes = self._nodes_touched(None, gi)
        self.wake_nodes(nodes, relist=True)
        if self.shared is not None:
            self.shared.wake()
        self.writer.mark(uid)
        return nodes

    def _controls_changed(self, previous: GadgetInstanceResource, gi: GadgetInstanceResource) -> None:
        """The annotations that carry intents changed: a new resync value, a pause, a rollout step."""
        if gi.controls.resync and gi.controls.resync != previous.controls.resync:
            nodes = self.resync(gi.uid)
            self.report.announce(
                gi, "ResyncRequested", f"resync requested ({gi.controls.resync}): looking at {len(nodes)} node(s) again"
            )
            self.recorder.resync_requested(gi, len(nodes))
        if (previous.controls.paused, previous.controls.steps) != (gi.controls.paused, gi.controls.steps):
            self.rollouts.controls_changed(previous, gi)

    async def sync_node(self, worker: NodeWorker) -> None:
        """One pass over one node: find out what its daemon runs, make it match (per-node store) or
        just observe it (shared store, placed by ``SharedPlacement``), prove readiness, record."""
        node = worker.node
        address = self.topology.endpoints.get(node)
        if address is None:
            return
        desired = self.desired.on(node)
        client = self.pool.get(address)
        if self.shared is not None:
            await self._observe_shared(worker, client, desired)
            return
        if worker.actual is None:
            try:
                listed = await client.list_instances()
            except errors.DaemonError as error:
                self._record_unreachable(node, desired, error)
                metrics.NODE_PASSES.labels(result="unreachable").inc()
                worker.failures += 1
                self._give_up_if_gone(node)
                return
            worker.actual = {instance.id: instance for instance in listed}
            self.recorder.reached(node)  # (before this pass's outcomes: back, then running again)
        # This pass's view: a relist asked for meanwhile (``wake(relist=True)`` resets ``worker.actual``)
        # is for the next pass, not a reason to lose what this one knows.
        actual = worker.actual
        to_plan, waiting = self.rollouts.hold_back(node, desired, actual)
        plan = planner.plan_node(
            node,
            to_plan,
            actual.values(),
            known_resources=self.resources.keys(),
            known_nodes=self.topology.labels.keys(),
            held=self.desired.held() | waiting.keys(),
        )
        result = await executor.execute(
            plan,
            client,
            actual,
            limits=self.limits,
            owner_gone=self.owner_gone,
            node_gone=self._node_gone,
            proven=worker.proven,
        )
        metrics.INSTANCES_CREATED.inc(result.created)
        metrics.INSTANCES_REMOVED.inc(result.removed)
        self.recorder.node_pass(node, plan, actual)
        metrics.NODE_PASSES.labels(result="ok" if result.unreachable is None else "unreachable").inc()
        holding = _holding(node, actual)
        if result.unreachable is not None:
            self.recorder.unreachable(node, result.unreachable)
            worker.failures += 1
            worker.actual = None
            self._may_still_run(node, desired, NodeState.UNREACHABLE, result.unreachable)
            self._give_up_if_gone(node)
        else:
            worker.failures = 0
            await self._judge(worker, client, to_plan, actual, result.outcomes)
            self._protect(worker, actual, plan, result.outcomes)
            for uid, old_id in waiting.items():
                message = WAITING_FOR_TURN.format(old=f" (instance {old_id})")
                result.outcomes[uid] = executor.InstanceOutcome(NodeState.PENDING, "", message)
        self._record(node, desired, result.outcomes, holding, result.removal_errors)
        self.rollouts.nudge(d.owner.resource_uid for d in desired)
        if result.unreachable is None:
            self.deletions.node_listed(node, actual)
        else:
            self.deletions.node_unreachable(node, NodeState.UNREACHABLE, result.unreachable)

    async def _observe_shared(
        self, worker: NodeWorker, client: DaemonClient, desired: list[planner.DesiredInstance]
    ) -> None:
        assert self.shared is not None
        node = worker.node
        try:
            reported = await self.shared.observe_node(worker, client)
        except errors.DaemonUnreachable as error:
            self._record_unreachable(node, desired, error)
            metrics.NODE_PASSES.labels(result="unreachable").inc()
            worker.failures += 1
            return
        worker.failures = 0
        self.recorder.reached(node)
        metrics.NODE_PASSES.labels(result="ok").inc()
        stored = self.shared.inventory.instances
        here = {i.id: i for i in self.shared.inventory.runs_on(node)}
        outcomes: dict[str, executor.InstanceOutcome] = {}
        to_judge: list[planner.DesiredInstance] = []
        for wanted in desired:
            instance_id = wanted.instance.id
            plan = self.rollouts.registry.get(wanted.owner.resource_uid)
            if plan is not None and plan.nodes is not None and node not in plan.nodes:
                outcomes[wanted.owner.resource_uid] = executor.InstanceOutcome(
                    NodeState.PENDING, "", WAITING_FOR_TURN.format(old="")
                )
                continue
            to_judge.append(wanted)
            if instance_id not in stored:
                outcomes[wanted.owner.resource_uid] = executor.InstanceOutcome(
                    NodeState.PENDING, instance_id, "not yet written to the store"
                )
            elif (instance := reported.get(instance_id)) is not None:
                outcomes[wanted.owner.resource_uid] = executor.outcome_of(instance)
            else:
                outcomes[wanted.owner.resource_uid] = executor.InstanceOutcome(
                    NodeState.PENDING, instance_id, readiness.NOT_STARTED
                )
        await self._judge(worker, client, to_judge, reported, outcomes)
        for wanted in to_judge:
            uid = wanted.owner.resource_uid
            outcome = outcomes.get(uid)
            if outcome is None or outcome.state is not NodeState.FAILED:
                continue  # (only a failure looks for the previous spec: a scan of the node's instances)
            previous = _previous_spec(here.values(), wanted)
            if previous is not None:
                message = outcome.message + PREVIOUS_KEEPS_RUNNING.format(previous)
                outcomes[uid] = executor.InstanceOutcome(NodeState.FAILED, outcome.instance_id, message)
        self._record(node, desired, outcomes, _holding(node, here))
        self.rollouts.nudge(d.owner.resource_uid for d in desired)

    async def _judge(
        self,
        worker: NodeWorker,
        client: DaemonClient,
        desired: list[planner.DesiredInstance],
        reported: dict[str, model.GadgetInstance],
        outcomes: dict[str, executor.InstanceOutcome],
    ) -> None:
        """Readiness on evidence: probe the desired instances the daemon reports but nobody has proven
        yet, and turn "the daemon says Running" into Running only for proven ones."""
        worker.proven &= reported.keys()  # an instance the daemon lost must be proven again
        to_probe = [
            wanted
            for wanted in desired
            if (instance := reported.get(wanted.instance.id)) is not None
            and readiness.needs_probe(instance, worker.proven)
        ]
        probes: dict[str, readiness.ProbeResult] = {}
        node_limit = self.limits.node(worker.node)
        timeout = self.settings.executor.readiness_timeout

        async def probe(wanted: planner.DesiredInstance) -> None:
            async with self.limits.total, node_limit:
                tenant = client.on_behalf_of(wanted.owner.tenant)
                result = await readiness.probe(tenant, wanted.instance.id, deadline=timeout)
            probes[wanted.instance.id] = result
            if result.evidence is readiness.Evidence.PROVEN:
                worker.proven.add(wanted.instance.id)

        await executor.each(to_probe, probe, self.limits.per_node)
        unsettled = False
        for wanted in desired:
            uid, instance_id = wanted.owner.resource_uid, wanted.instance.id
            outcome = outcomes.get(uid)
            if outcome is None or outcome.instance_id != instance_id or outcome.state is not NodeState.RUNNING:
                unsettled |= outcome is not None and outcome.state is NodeState.PENDING
                continue
            verdict = readiness.judge(
                reported.get(instance_id), proven=instance_id in worker.proven, probed=probes.get(instance_id)
            )
            outcomes[uid] = executor.InstanceOutcome(verdict.state, instance_id, verdict.message)
            unsettled |= verdict.state is NodeState.PENDING
        if unsettled:
            self._recheck(worker)
        else:
            worker.recheck_delay = 0.0

    def _protect(
        self,
        worker: NodeWorker,
        actual: Mapping[str, model.GadgetInstance],
        plan: planner.NodePlan,
        outcomes: dict[str, executor.InstanceOutcome],
    ) -> None:
        """Spec changes on this node: an old instance goes once its replacement is proven (another pass,
        at once); while the replacement fails, the old one keeps running and the node says so."""
        for removal in plan.removals:
            replacement = removal.after_proven
            if replacement is None or removal.instance_id not in actual:
                continue
            if replacement in worker.proven:
                worker.wake()
                continue
            uid = removal.owner.resource_uid
            outcome = outcomes.get(uid)
            if outcome is not None and outcome.instance_id == replacement and outcome.state is NodeState.FAILED:
                message = outcome.message + PREVIOUS_KEEPS_RUNNING.format(removal.instance_id)
                outcomes[uid] = executor.InstanceOutcome(NodeState.FAILED, replacement, message)

    def _recheck(self, worker: NodeWorker) -> None:
        """Look at the node again soon: a gadget still starting, or an error IG reports only after
        Create succeeded (an image that cannot be pulled)."""
        if worker.verify_scheduled:
            return
        worker.verify_scheduled = True
        limit = self.settings.executor.verify_delay
        worker.recheck_delay = min(max(worker.recheck_delay * 2, limit / 32), limit)
        asyncio.get_running_loop().call_later(worker.recheck_delay, self._verify, worker)

    @staticmethod
    def _verify(worker: NodeWorker) -> None:
        worker.verify_scheduled = False
        worker.wake(relist=True)

    def _record(
        self,
        node: str,
        desired: list[planner.DesiredInstance],
        outcomes: dict[str, executor.InstanceOutcome],
        holding: Mapping[str, str],
        removal_errors: Mapping[str, str] | None = None,
    ) -> None:
        """Record one node's outcomes. ``holding``: the resources that still have an instance on the node
        (by UID, its ID); one that wants nothing here any more is shown as Removing, or why removal
        fails, until the instance is gone."""
        # ``desired`` was taken before the pass's calls: a resource that targets the node by now (its
        # dry run passed meanwhile) is not lingering, whatever the node holds of it.
        wanted = {d.owner.resource_uid for d in desired} | {
            uid for uid in holding if (gi := self.resources.get(uid)) is not None and self.desired.targets(gi, node)
        }
        for uid, outcome in outcomes.items():
            self.set_outcome(uid, node, NodeOutcome(node, outcome.state, outcome.instance_id, outcome.message))
        for uid, per_node in self.outcomes.items():
            if uid in wanted or uid in self.deletions:
                continue
            if uid in holding:
                failure = (removal_errors or {}).get(uid)
                known = per_node.get(node)
                if failure:
                    self.set_outcome(uid, node, NodeOutcome(node, NodeState.FAILED, holding[uid], failure))
                elif known is None or known.instance_id != holding[uid] or known.state not in _BLOCKED:
                    self.set_outcome(uid, node, NodeOutcome(node, NodeState.REMOVING, holding[uid], REMOVING))
            elif per_node.pop(node, None) is not None:
                self.writer.mark(uid)
        for uid in holding.keys() - wanted - self.outcomes.keys() - self.deletions.pending.keys():
            if uid in self.resources:
                self.set_outcome(uid, node, NodeOutcome(node, NodeState.REMOVING, holding[uid], REMOVING))

    def _record_unreachable(self, node: str, desired: list[planner.DesiredInstance], error: errors.DaemonError) -> None:
        """Listing failed: nothing is known about the node. A daemon that answered with an error is
        Failed (with its message); one that did not answer at all is Unreachable."""
        answered = isinstance(error, errors.DaemonRejected)
        state = NodeState.FAILED if answered else NodeState.UNREACHABLE
        logger.warning("node %s: listing instances failed: %s", node, error)
        message = f"listing instances failed: {error.message}" if answered else str(error)
        self.recorder.unreachable(node, message)
        for wanted in desired:
            self.set_outcome(wanted.owner.resource_uid, node, NodeOutcome(node, state, wanted.instance.id, message))
        self.deletions.node_unreachable(node, state, message)
        self._may_still_run(node, desired, state, message)

    def _give_up_if_gone(self, node: str) -> None:
        """A node that left the cluster and whose daemon cannot be reached blocks nothing: its instances
        are removed if its daemon answers again, and nothing waits for it meanwhile."""
        if node in self.topology.labels:
            return
        self.deletions.node_gone(node)
        for uid, per_node in self.outcomes.items():
            if per_node.pop(node, None) is not None:
                self.writer.mark(uid)

    def _may_still_run(self, node: str, desired: list[planner.DesiredInstance], state: NodeState, why: str) -> None:
        """The daemon could not be asked: a resource that ran here when last seen and should not any
        more may still run, and its status says so."""
        wanted = {d.owner.resource_uid for d in desired}
        for uid, per_node in self.outcomes.items():
            known = per_node.get(node)
            gi = self.resources.get(uid)
            if gi is not None and self.desired.targets(gi, node):
                continue  # wanted here by now (``desired`` was taken before the pass's calls)
            if uid not in wanted and uid not in self.deletions and known is not None:
                message = f"may still run an instance that should be removed; {why}"
                self.set_outcome(uid, node, NodeOutcome(node, state, known.instance_id, message))

    def set_outcome(self, uid: str, node: str, outcome: NodeOutcome) -> None:
        per_node = self.outcomes.setdefault(uid, {})
        previous = per_node.get(node)
        if previous is not None and (previous.state, previous.instance_id, previous.message) == (
            outcome.state,
            outcome.instance_id,
            outcome.message,
        ):
            return
        since = previous.since if previous is not None and previous.state == outcome.state else self.clock()
        per_node[node] = NodeOutcome(node, outcome.state, outcome.instance_id, outcome.message, since)
        self.recorder.outcome(self.resources.get(uid), previous, outcome)
        self.writer.mark(uid)
        self.rollouts.note_outcome(uid, node, outcome)
        if self.shared is not None and self.shared.waiting:
            self.shared.wake()  # an old instance may go once its replacement has taken over here

    def _forget(self, uid: str) -> None:
        self.report.count_phase(uid, None)
        self.finalizers.forget(uid)
        self.refusals.pop(uid, None)
        self.desired.forget(uid)
        self.rollouts.registry.forget(uid)
        gi = self.resources.pop(uid, None)
        self.outcomes.pop(uid, None)
        self.deletions.forget(uid)
        self.writer.forget(uid)
        if gi is not None and gi.has_finalizer and not gi.deleting:
            # Gone without our cleanup (finalizer removed by hand): sweep its orphans now.
            self.wake_all()

    def resources_listed(self) -> None:
        """Every GadgetInstance has been seen once: instances of unknown resources may now be judged."""
        self._resources_listed = True
        self.wake_all(relist=False)
        if self.shared is not None:
            self.shared.wake()

    async def owner_gone(self, owner: identity.Ownership) -> bool:
        """Whether an instance's resource is really gone. Not before every resource has been listed once
        (a restart must not ask about each instance); then one GET confirms it."""
        if owner.resource_uid in self.resources or not self._resources_listed:
            return False
        kind, namespace, name = resource.locate(owner.resource)
        try:
            body = await self.api.get_gadget_instance(namespace, name, kind=kind)
        except Exception as error:
            logger.warning("cannot confirm that %s is gone, keeping its instances: %s", owner.resource, error)
            return False
        return body is None or body.get("metadata", {}).get("uid") != owner.resource_uid

    async def _node_gone(self, node: str) -> bool:
        if node in self.topology.labels:
            return False
        try:
            return not await self.api.node_exists(node)
        except Exception as error:
            logger.warning("cannot confirm that node %s is gone, keeping its instances: %s", node, error)
            return False

    async def _warn(self, gi: GadgetInstanceResource, reason: str, message: str) -> None:
        try:
            await self.api.post_event(gi, warning=True, reason=reason, message=message)
        except Exception as error:
            logger.debug("%s: posting the %s event failed: %s", gi.key, reason, error)

    def _nodes_touched(self, previous: GadgetInstanceResource | None, gi: GadgetInstanceResource) -> set[str]:
        nodes = {node for node in self.workers if self.desired.targets(gi, node)}
        if previous is not None:
            nodes |= {node for node in self.workers if self.desired.targets(previous, node)}
        nodes |= set(self.outcomes.get(gi.uid, {}))
        return nodes

    def taken_over(self, node: str, instance_id: str, failed_counts: bool) -> bool:
        """Whether ``instance_id`` has settled on ``node`` (proven running, the node cannot be asked, or,
        if ``failed_counts``, failed), so that the instance it replaces may go. A new spec that fails
        does not count: the old one keeps running."""
        worker = self.workers.get(node)
        if worker is None or worker.failures:
            return True
        if instance_id in worker.proven:
            return True
        settled = (NodeState.FAILED, NodeState.UNREACHABLE) if failed_counts else (NodeState.UNREACHABLE,)
        return any(
            o.instance_id == instance_id and o.state in settled
            for per_node in self.outcomes.values()
            if (o := per_node.get(node)) is not None
        )

    def record_store_failure(
        self,
        uid: str,
        instance_id: str,
        nodes: set[str],
        error: errors.DaemonError,
        *,
        removing: bool = False,
        wanted: planner.DesiredInstance | None = None,
    ) -> None:
        """A write to the shared store failed: every node it was for says why (and, for the create of
        ``wanted``, that the previous spec's instance keeps running, when there is one)."""
        unreachable = isinstance(error, errors.DaemonUnreachable)
        message = str(error) if unreachable else error.message
        if removing:
            message = f"cannot remove the instance from IG's store: {message}"
        elif wanted is not None and self.shared is not None:
            previous = _previous_spec(self.shared.inventory.instances.values(), wanted)
            if previous is not None:
                message += PREVIOUS_KEEPS_RUNNING.format(previous)
        outcome = NodeOutcome("", NodeState.UNREACHABLE if unreachable else NodeState.FAILED, instance_id, message)
        for node in nodes:
            self.set_outcome(uid, node, replace(outcome, node=node))

    # -- the dry run before a spec's first instance ------------------------------------------------

    def _check_spec(self, gi: GadgetInstanceResource) -> None:
        if gi.active and gi.spec is not None:
            self.dry_runs.check(gi.spec)

    def _verdict_recorded(self, key: str) -> None:
        """The resources of a spec that was checked may now run (or are Failed): look again."""
        for gi in list(self.resources.values()):
            if gi.spec is not None and validation.check_key(gi.spec) == key:
                self.desired.update(gi)
                self.writer.mark(gi.uid)
                self.wake_nodes({node for node in self.workers if self.desired.targets(gi, node)})
        if self.shared is not None:
            self.shared.wake()


def _holding(node: str, instances: Mapping[str, model.GadgetInstance]) -> dict[str, str]:
    """Which resources have an instance on ``node`` among ``instances`` (by UID, the instance's ID)."""
    holding: dict[str, str] = {}
    for instance in instances.values():
        owner = identity.parse_ownership(instance.tags)
        if owner is not None and owner.node in (node, identity.SHARED_NODE):
            holding[owner.resource_uid] = instance.id
    return holding


def _previous_spec(instances: Iterable[model.GadgetInstance], wanted: planner.DesiredInstance) -> str | None:
    """The ID of an instance of an older spec of ``wanted``'s resource among ``instances``, if any."""
    for instance in instances:
        owner = identity.parse_ownership(instance.tags)
        if (
            owner is not None
            and owner.resource_uid == wanted.owner.resource_uid
            and owner.spec_hash != wanted.owner.spec_hash
        ):
            return instance.id
    return None


def _older(candidate: str, current: str) -> bool:
    """Whether ``candidate`` is an older resourceVersion than ``current``. Kubernetes calls them opaque;
    every real API server (etcd revisions) and the emulator use rising integers, and anything else
    is treated as not older."""
    return candidate.isdigit() and current.isdigit() and int(candidate) < int(current)


def _wants_differ(before: GadgetInstanceResource, after: GadgetInstanceResource) -> bool:
    """Whether the change can alter which instances run where (not just the status)."""
    return (before.spec, before.spec_error, before.deleting, before.generation, before.has_finalizer) != (
        after.spec,
        after.spec_error,
        after.deleting,
        after.generation,
        after.has_finalizer,  # nothing runs before the finalizer is on
    )
