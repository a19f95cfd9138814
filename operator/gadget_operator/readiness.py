"""Readiness on evidence: a node counts as running a gadget only once the gadget is proven to run there.

IG reports StatusRunning *before* the gadget has pulled its image and loaded its programs; a bad image
or parameter turns the state to StatusError seconds later (inspektor-gadget.md, "An instance's state
over time"). So a daemon's "Running" is not enough. The evidence is
``GetGadgetInfo{imageName: <instance id>, flags: use-instance}`` on the node's daemon, which IG answers
only once the gadget has initialized there; a run that failed before that never answers, and its
error shows in the instance's state on the next look.

The rules, per (node, instance):

* the daemon reports StatusError          -> Failed, with the daemon's message;
* the probe answered                       -> Running (proven; kept until the daemon loses it or
                                              becomes unreachable, when it must be proven again);
* the probe answered with an error         -> Failed, with that error (IG returns late start errors);
* the probe timed out, or the daemon does
  not run the instance yet                 -> Pending, looked at again a little later.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from gadget_operator import errors
from gadget_operator.daemon import model
from gadget_operator.daemon.client import InstanceApi
from gadget_operator.status import NodeState

STARTING = "starting: waiting for the gadget to initialize (image pull, eBPF programs)"
NOT_STARTED = "waiting for the daemon to start the instance"


class Evidence(enum.Enum):
    PROVEN = "proven"
    STARTING = "starting"
    FAILED = "failed"
    ABSENT = "absent"
    UNREACHABLE = "unreachable"


@dataclass(frozen=True, slots=True)
class ProbeResult:
    evidence: Evidence
    message: str = ""


@dataclass(frozen=True, slots=True)
class Judgement:
    state: NodeState
    message: str = ""


async def probe(api: InstanceApi, instance_id: str, *, deadline: float) -> ProbeResult:
    """Ask the daemon whether ``instance_id`` has initialized there."""
    try:
        await api.wait_initialized(instance_id, deadline=deadline)
    except errors.DaemonDeadlineExceeded:
        return ProbeResult(Evidence.STARTING, STARTING)
    except errors.DaemonUnreachable as error:
        return ProbeResult(Evidence.UNREACHABLE, str(error))
    except errors.InstanceNotFound:
        return ProbeResult(Evidence.ABSENT, NOT_STARTED)
    except errors.DaemonError as error:
        return ProbeResult(Evidence.FAILED, error.message)
    return ProbeResult(Evidence.PROVEN)


def needs_probe(instance: model.GadgetInstance, proven: Iterable[str]) -> bool:
    """A reported instance not proven yet, and not already failed (a failed run never initializes)."""
    return instance.status is not model.InstanceStatus.ERROR and instance.id not in proven


def judge(reported: model.GadgetInstance | None, *, proven: bool, probed: ProbeResult | None = None) -> Judgement:
    """One node's state for one instance, from what its daemon reports and the evidence gathered."""
    if reported is None:
        return Judgement(NodeState.PENDING, NOT_STARTED)
    if reported.status is model.InstanceStatus.ERROR:
        return Judgement(NodeState.FAILED, reported.message or "the daemon reports an error")
    if proven:
        return Judgement(NodeState.RUNNING)
    if probed is not None and probed.evidence is Evidence.FAILED:
        return Judgement(NodeState.FAILED, probed.message)
    if probed is not None and probed.evidence is Evidence.UNREACHABLE:
        return Judgement(NodeState.UNREACHABLE, probed.message)
    return Judgement(NodeState.PENDING, probed.message if probed is not None else STARTING)
