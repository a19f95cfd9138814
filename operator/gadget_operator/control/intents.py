"""Execute: a user intent, checked and carried out by the reconciler, and its answer.

* **Resync** (everything, one resource, one node): the node workers concerned are woken with a fresh
  list, as a drift check would, now. Nothing is stored: a restart resyncs everything anyway.
* **Rollout** (NEXT, PAUSE, RESUME): kept as annotations on the resource (``resource.Controls``), so
  that an intent outlives the process that took it (a restart, a new leader) and equals its
  Kubernetes-native twin (``kubectl annotate``); the answer comes once the annotation is written and
  the reconciler has seen it, so the intent has taken effect when the caller learns it was accepted.

Every intent, accepted or refused, is recorded in the event log. A refusal is an answer, not an
error: ``accepted`` false and a message saying why (an unknown resource, no rollout in progress, the
wrong strategy, a standby replica).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

from gadget_operator import kube, resource
from gadget_operator.control import events
from gadget_operator.control.pb import control_pb2
from gadget_operator.control.state import Operator
from gadget_operator.reconciler import Reconciler
from gadget_operator.resource import GadgetInstanceResource

logger = logging.getLogger(__name__)

ATTEMPTS = 3
"""Writes of a rollout annotation tried when the resource changes under them (409)."""


class AnnotationApi(Protocol):
    async def annotate(
        self,
        gi: GadgetInstanceResource,
        annotations: Mapping[str, str | None],
        *,
        resource_version: str | None = None,
    ) -> dict[str, Any]: ...

    async def get_gadget_instance(
        self, namespace: str, name: str, *, kind: resource.Kind = resource.GADGET_INSTANCE
    ) -> dict[str, Any] | None: ...


class Refused(Exception):
    """The intent cannot be carried out; the message says why."""


def accepted(message: str) -> control_pb2.IntentResult:
    return control_pb2.IntentResult(accepted=True, message=message)


class Intents:
    def __init__(self, op: Operator, api: AnnotationApi) -> None:
        self.op = op
        self.api = api

    async def execute(self, intent: control_pb2.Intent) -> control_pb2.IntentResult:
        try:
            result = await self._execute(intent)
        except Refused as refusal:
            result = control_pb2.IntentResult(accepted=False, message=str(refusal))
        self.op.recorder.intent(intent, result)
        logger.info("control API: %s: %s", "accepted" if result.accepted else "refused", result.message)
        return result

    async def _execute(self, intent: control_pb2.Intent) -> control_pb2.IntentResult:
        which = intent.WhichOneof("intent")
        if which is None:
            raise Refused("an empty intent: say resync or rollout")
        reconciler = self.op.reconciler
        if reconciler is None:
            elector = self.op.elector
            leader = elector.holder if elector is not None and elector.holder else "unknown"
            raise Refused(f"this replica stands by and does nothing; ask the leader ({leader})")
        if which == "resync":
            return resync(reconciler, intent.resync)
        return await self._rollout(reconciler, intent.rollout)

    async def _rollout(self, reconciler: Reconciler, intent: control_pb2.RolloutIntent) -> control_pb2.IntentResult:
        action = intent.action
        if action == control_pb2.RolloutIntent.ACTION_UNSPECIFIED:
            raise Refused("a rollout intent needs an action: NEXT, PAUSE or RESUME")
        gi = find(reconciler, intent.resource)
        for _ in range(ATTEMPTS):
            annotations, message = rollout_change(reconciler, gi, action)
            if not annotations:
                return accepted(message)
            try:
                body = await self.api.annotate(gi, annotations, resource_version=gi.resource_version)
            except kube.KubeApiError as error:
                if error.status == 409:  # changed meanwhile: decide again on the newest copy
                    gi = await self._reread(reconciler, gi)
                    continue
                if error.status == 404:
                    raise Refused(f"{events.Ref.of(gi)} no longer exists") from None
                raise Refused(f"cannot annotate {events.Ref.of(gi)}: {error}") from None
            await reconciler.observe("MODIFIED", body)  # in effect now, not when the watch event comes
            return accepted(message)
        raise Refused(f"{events.Ref.of(gi)} keeps changing; try again")

    async def _reread(self, reconciler: Reconciler, gi: GadgetInstanceResource) -> GadgetInstanceResource:
        body = await self.api.get_gadget_instance(gi.namespace, gi.name, kind=gi.kind)
        if body is None:
            raise Refused(f"{events.Ref.of(gi)} no longer exists")
        await reconciler.observe("MODIFIED", body)
        return reconciler.resources.get(gi.uid) or GadgetInstanceResource.from_body(body)


def find(reconciler: Reconciler, ref: control_pb2.ResourceRef) -> GadgetInstanceResource:
    """The resource ``ref`` names; a GadgetInstance needs its namespace, a ClusterGadgetInstance has none
    (the kind may be left out when the namespace says which)."""
    kind = ref.kind or (resource.KIND if ref.namespace else resource.CLUSTER_KIND)
    if kind not in (resource.KIND, resource.CLUSTER_KIND):
        raise Refused(f"unknown kind {kind!r}: GadgetInstance or ClusterGadgetInstance")
    if not ref.name:
        raise Refused("which resource? give its name (and a GadgetInstance's namespace)")
    if kind == resource.KIND and not ref.namespace:
        raise Refused(f"GadgetInstance {ref.name}: give its namespace")
    namespace = ref.namespace if kind == resource.KIND else ""
    for gi in reconciler.resources.values():
        if (gi.kind.kind, gi.namespace, gi.name) == (kind, namespace, ref.name):
            return gi
    shown = events.Ref(kind, namespace, ref.name)
    scope = reconciler.settings.namespaces
    if namespace and scope and namespace not in scope:
        raise Refused(f"{shown} is not handled by this operator (it watches {', '.join(scope)})")
    raise Refused(f"no {shown} is known to the operator")


def resync(reconciler: Reconciler, intent: control_pb2.ResyncIntent) -> control_pb2.IntentResult:
    target = intent.WhichOneof("target")
    if target == "all":
        if not intent.all:
            raise Refused("resync all must be true")
        reconciler.wake_all(relist=True)
        return accepted(f"resyncing every node now ({len(reconciler.workers)})")
    if target == "resource":
        gi = find(reconciler, intent.resource)
        nodes = reconciler.resync(gi.uid)
        return accepted(f"resyncing {events.Ref.of(gi)} on {len(nodes)} node(s) now")
    if target == "node":
        worker = reconciler.workers.get(intent.node)
        if worker is None:
            served = ", ".join(sorted(reconciler.workers)[:10]) or "none"
            raise Refused(f"node {intent.node!r} has no daemon the operator serves (served: {served})")
        worker.wake(relist=True)
        return accepted(f"resyncing node {intent.node} now")
    raise Refused("a resync intent needs a target: all, a resource or a node")


def rollout_change(
    reconciler: Reconciler, gi: GadgetInstanceResource, action: int
) -> tuple[dict[str, str | None], str]:
    """The annotations that carry out a rollout ``action`` on ``gi`` (none: nothing to change), and
    what to answer; ``Refused`` when it does not apply."""
    spec = gi.spec
    if spec is None:
        raise Refused(f"{events.Ref.of(gi)} has no valid spec: {gi.spec_error or 'refused'}")
    strategy = spec.update_strategy
    ref = events.Ref.of(gi)
    if not strategy.rolling:
        raise Refused(f"{ref} has updateStrategy {strategy.type.value}: nothing rolls out in steps")
    paused = gi.controls.paused
    if action == control_pb2.RolloutIntent.PAUSE:
        if paused:
            return {}, f"the rollout of {ref} is already paused"
        return {resource.ROLLOUT_PAUSED_ANNOTATION: "true"}, f"rollout of {ref} paused: no further node starts"
    if action == control_pb2.RolloutIntent.RESUME:
        if not paused:
            return {}, f"the rollout of {ref} is not paused"
        return {resource.ROLLOUT_PAUSED_ANNOTATION: None}, f"rollout of {ref} resumed"
    if action != control_pb2.RolloutIntent.NEXT:
        raise Refused(f"unknown rollout action {action}")
    if not strategy.manual:
        raise Refused(f"{ref} has updateStrategy {strategy.type.value}, which steps by itself; NEXT is for Manual")
    progress = reconciler.rollouts.progress(gi)
    if progress is None or not progress.waiting:
        raise Refused(f"no node of {ref} waits for a next step: no rollout in progress")
    if progress.halted:
        raise Refused(f"the rollout of {ref} is halted: the new spec failed on a node; fix the spec")
    steps = gi.controls.steps + 1
    message = f"rollout of {ref}: step {steps} allowed (up to {progress.max_surge} more node(s))"
    if paused:
        message += "; it is paused: the step starts once it is resumed"
    return {resource.ROLLOUT_STEP_ANNOTATION: resource.step_annotation(gi.generation, steps)}, message
