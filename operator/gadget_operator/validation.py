"""The dry run that checks a new spec against the gadget itself before any instance of it is created.

A CRD cannot validate gadget parameters (each gadget has its own), and IG takes a Create for an image
that does not exist: the instance fails seconds later on every node. So before the first instance of
a spec is created, one reachable daemon runs ``GetGadgetInfo{imageName, paramValues}``: it pulls the
image and prepares the gadget with those parameters without running it, which is also what
``kubectl gadget run`` does before it creates anything. A rejection fails the resource at once with
the gadget's own message and nothing is created.

Verdicts are kept per (image, parameters): a hundred resources of one gadget cost one dry run, and a
rejected spec is not retried until it changes (or the operator restarts).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gadget_operator.resource import GadgetInstanceSpec

MAX_VERDICTS = 4096


@dataclass(frozen=True, slots=True)
class Verdict:
    accepted: bool
    node: str
    """The node whose daemon ran the dry run."""
    message: str = ""
    """The gadget's own error, when rejected."""
    confinable: bool = True
    """Whether the gadget lists the Kubernetes namespace filter, so a namespaced resource can be
    confined to its namespace (``tenancy.confinable``)."""
    reason: str = "GadgetRejected"


def check_key(spec: GadgetInstanceSpec) -> str:
    """What a dry run depends on: the image and the parameters (not tags, nodes or log level)."""
    return spec.check_digest


def dry_run_order(spec: GadgetInstanceSpec, nodes: Iterable[str]) -> list[str]:
    """The nodes to ask, in order: a rotation by the check key spreads dry runs over the daemons."""
    ordered = sorted(nodes)
    if not ordered:
        return []
    start = int(check_key(spec)[:8], 16) % len(ordered)
    return ordered[start:] + ordered[:start]


class Verdicts:
    """Dry-run results by ``check_key``, oldest dropped first beyond ``MAX_VERDICTS``."""

    def __init__(self) -> None:
        self._verdicts: dict[str, Verdict] = {}

    def get(self, spec: GadgetInstanceSpec) -> Verdict | None:
        return self._verdicts.get(check_key(spec))

    def put(self, spec: GadgetInstanceSpec, verdict: Verdict) -> None:
        self._verdicts[check_key(spec)] = verdict
        while len(self._verdicts) > MAX_VERDICTS:
            del self._verdicts[next(iter(self._verdicts))]
