"""The status of each GadgetInstance as the reconciler knows it, and writing it.

``render`` says how a resource stands (cheaply: whether every target node has reported on the
current spec) and how to fold its nodes' outcomes into a status (``status.compute_status``, done only
when the ``StatusWriter`` may write); ``write`` patches ``/status`` and, on each phase change, posts an
Event (``announce``, also used for rollout steps and resync requests, so ``kubectl describe gi`` tells
the story) and records it in the event log; ``count_phase`` keeps the resources-by-phase gauge.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from gadget_operator import kube, metrics, status, validation
from gadget_operator.resource import GadgetInstanceResource
from gadget_operator.status import NodeOutcome, NodeState
from gadget_operator.status_writer import Rendered

if TYPE_CHECKING:
    from gadget_operator.reconciler import Reconciler

logger = logging.getLogger(__name__)

WARNING_PHASES = frozenset({"Degraded", "Failed"})
CHECKING = "checking the gadget image and parameters with a dry run on a daemon"


class StatusReport:
    def __init__(self, reconciler: Reconciler) -> None:
        self.rec = reconciler
        self._phases: dict[str, str] = {}

    def render(self, uid: str, *, max_node_entries: int | None = None) -> Rendered | None:
        """How ``uid`` stands now: whether every target node has reported on the current spec (cheap),
        and how to fold its nodes' outcomes into a status (``status.compute_status``, done only when the
        writer may write it). ``max_node_entries`` overrides the cap on node entries (the control API
        lists every node)."""
        gi = self.rec.resources.get(uid)
        if gi is None or (gi.deleting and uid not in self.rec.deletions):
            return None
        outcomes = self.rec.outcomes.get(uid, {})
        entries = self.rec.settings.status.max_node_entries if max_node_entries is None else max_node_entries

        def observed() -> status.Observed:
            return status.Observed(gi.generation, gi.status, self.rec.clock(), entries)

        refused = self.rec.finalizers.refusal(uid)
        if refused is not None:
            return Rendered(lambda: status.compute_status(observed(), finalizer_error=refused), gi.status, settled=True)
        if gi.deleting:
            # Never settled, so held back for settle_timeout: a quick cleanup writes no Terminating status.
            return Rendered(
                lambda: status.compute_status(observed(), outcomes=outcomes, deleting=True), gi.status, settled=False
            )
        spec = gi.spec
        refusal = self.rec.refusals.get(uid)
        if refusal is not None:
            rejection = status.Refused(refusal.reason, refusal.message)
            return Rendered(lambda: status.compute_status(observed(), rejected=rejection), gi.status, settled=True)
        if spec is None:
            error = gi.spec_error
            return Rendered(lambda: status.compute_status(observed(), spec_error=error), gi.status, settled=True)
        labels = self.rec.topology.labels
        ready = self.rec.topology.ready_nodes()
        matching = self.rec.desired.matching_nodes(gi, spec)
        if spec.suspend:
            return Rendered(
                lambda: status.compute_status(observed(), desired_nodes=matching, outcomes=outcomes, suspended=True),
                gi.status,
                settled=not outcomes,
            )
        verdict = self.rec.dry_runs.verdict(gi)
        if verdict is not None and not verdict.accepted:
            message = f"the gadget rejected this spec (dry run on node {verdict.node}): {verdict.message}"
            if not verdict.confinable:
                message = verdict.message
            rejection = status.Refused(verdict.reason, message)
            return Rendered(lambda: status.compute_status(observed(), rejected=rejection), gi.status, settled=True)
        checking = verdict is None
        checking_message = CHECKING
        if checking and (refused := self.rec.dry_runs.refused.get(validation.check_key(spec))):
            checking_message = f"{CHECKING}: {refused}"
        expected = {node: self.rec.desired.expected_id(gi, spec, node) for node in matching}
        settled = not checking and not any(_unsettled(outcomes.get(node), expected[node]) for node in matching)

        def running_status() -> dict[str, Any]:
            current: dict[str, NodeOutcome] = {}
            for node in matching:
                outcome = outcomes.get(node)
                if checking:
                    outcome = NodeOutcome(node, NodeState.PENDING, message=checking_message)
                elif outcome is None or _stale(outcome, expected[node]):
                    outcome = NodeOutcome(node, NodeState.PENDING, message="not yet created on this node")
                current[node] = outcome
            desired_nodes = list(matching)
            for node, outcome in outcomes.items():
                if node not in current and node in self.rec.workers and not self.rec.desired.targets(gi, node):
                    current[node] = outcome  # still holds an instance it should not: Removing, or why not
            for node in sorted((spec.nodes or frozenset()) - ready.keys()):
                desired_nodes.append(node)
                if node not in labels:
                    current[node] = NodeOutcome(node, NodeState.FAILED, message="no such node in the cluster")
                else:
                    current[node] = NodeOutcome(node, NodeState.PENDING, message="no gadget daemon found on this node")
            return status.compute_status(
                observed(), desired_nodes=desired_nodes, outcomes=current, rollout=self.rec.rollouts.progress(gi)
            )

        return Rendered(running_status, gi.status, settled=settled)

    async def write(self, uid: str, new: dict[str, Any]) -> None:
        gi = self.rec.resources.get(uid)
        if gi is None:
            return
        # A merge patch keeps keys it does not mention: null out the ones the new status dropped.
        patch: dict[str, Any] = {key: None for key in gi.status if key not in new}
        patch.update(new)
        try:
            body = await self.rec.api.patch_status(gi.namespace, gi.name, patch, kind=gi.kind)
        except kube.KubeApiError as error:
            metrics.STATUS_WRITES.labels(result="error").inc()
            if error.status == 404:
                return
            raise
        metrics.STATUS_WRITES.labels(result="ok").inc()
        await self.rec.observe("MODIFIED", body)
        previous = str(gi.status.get("phase") or "")
        phase = str(new.get("phase") or "")
        if previous != phase:
            message = str(new.get("message", phase))
            self.rec.recorder.phase(gi, previous, phase, message)
            self.announce(gi, phase, message, warning=phase in WARNING_PHASES)

    def announce(self, gi: GadgetInstanceResource, reason: str, message: str, *, warning: bool = False) -> None:
        """A Kubernetes Event on the resource (posted in the background; a failure is only logged), so
        `kubectl describe gi` (or `cgi`) tells the story: each phase change, rollout step, resync."""
        self.rec._spawn(self._post(gi, reason, message, warning))

    async def _post(self, gi: GadgetInstanceResource, reason: str, message: str, warning: bool) -> None:
        try:
            await self.rec.api.post_event(gi, warning=warning, reason=reason, message=message)
        except Exception as error:
            logger.debug("%s: posting the %s event failed: %s", gi.key, reason, error)

    def count_phase(self, uid: str, phase: str | None) -> None:
        """Keep the resources-by-phase gauge: ``phase`` None when the resource is gone."""
        if self._phases.get(uid) == phase:
            return
        previous = self._phases.pop(uid, None)
        if previous is not None:
            metrics.RESOURCES.labels(phase=previous).dec()
        if phase is not None:
            self._phases[uid] = phase
            metrics.RESOURCES.labels(phase=phase).inc()


def _unsettled(outcome: NodeOutcome | None, expected_id: str) -> bool:
    """Whether a node has yet to settle on the current spec (reported on it, and not still starting)."""
    return _stale(outcome, expected_id) or outcome is None or outcome.state is NodeState.PENDING


def _stale(outcome: NodeOutcome | None, expected_id: str) -> bool:
    """Whether an outcome says nothing about the current spec's instance."""
    if outcome is None:
        return True
    return bool(outcome.instance_id) and outcome.instance_id != expected_id
