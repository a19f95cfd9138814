"""Tenancy: a namespaced GadgetInstance observes only its own namespace; node-wide gadgets are for
cluster admins (ClusterGadgetInstance), and only allowed images run.

A gadget runs with node-wide power: without a filter it sees every container of the node and often
the host. IG filters by Kubernetes namespace in the kernel through its KubeManager operator
(``operator.KubeManager.namespace``, a comma-separated list; ``all-namespaces``; pod name, selector and
container name). So a namespaced resource is *confined*: its namespace filter is set to its own
namespace when absent, and anything that would widen it (another namespace, a list, an exclusion,
all namespaces) is refused, fail closed, as is a gadget that cannot be confined (its GetGadgetInfo
lists no KubeManager parameters). Pod, selector and container filters stay available.

Pure functions: the same rules are the ValidatingAdmissionPolicy's (manifests/), with the same
messages, so ``kubectl apply`` fails fast where that policy is installed.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace

from gadget_operator.resource import GadgetInstanceResource

KUBE_MANAGER = "operator.KubeManager."
NAMESPACE = KUBE_MANAGER + "namespace"
ALL_NAMESPACES = KUBE_MANAGER + "all-namespaces"

OFFICIAL_REGISTRY = "ghcr.io/inspektor-gadget/gadget/"
DEFAULT_ALLOWED_IMAGES = (OFFICIAL_REGISTRY + "*",)
"""The official gadgets (short names such as ``trace_exec`` expand to them, as in IG)."""

CLUSTER_KIND_HINT = "use a ClusterGadgetInstance (cluster admins) for node-wide or cross-namespace tracing"


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a resource may not run: a CamelCase reason for its conditions and a message that says what
    to do."""

    reason: str
    message: str


def full_image(image: str) -> str:
    """The reference IG pulls: a short name like ``trace_exec`` is an official gadget, ``:latest``."""
    if "/" in image or "." in image.split(":")[0]:
        return image
    return f"{OFFICIAL_REGISTRY}{image}" + ("" if ":" in image else ":latest")


def check_image(image: str, allowed: Collection[str]) -> Refusal | None:
    """Whether ``image`` matches one of the ``allowed`` patterns (shell-style, on the full reference)."""
    reference = full_image(image)
    if any(fnmatch.fnmatchcase(reference, pattern) for pattern in allowed):
        return None
    return Refusal(
        "ImageNotAllowed",
        f"image {reference} is not allowed by this operator (allowed: {', '.join(allowed)}); "
        "ask the cluster admin to add it to the operator's allowed images",
    )


def confine(namespace: str, params: Mapping[str, str]) -> dict[str, str] | Refusal:
    """``params`` of a resource in ``namespace`` with the namespace filter confined to it, or why not."""
    widened = params.get(ALL_NAMESPACES, "").strip().lower()
    if widened not in ("", "false"):
        return _widening(f"{ALL_NAMESPACES}={params[ALL_NAMESPACES]} would trace every namespace")
    value = params.get(NAMESPACE, "").strip()
    if value and value != namespace:
        names = [part.strip() for part in value.split(",")]
        if any(name.startswith("!") for name in names):
            return _widening(f"{NAMESPACE}={value} excludes namespaces instead of naming its own")
        if len(names) > 1:
            return _widening(f"{NAMESPACE}={value} lists several namespaces; only {namespace} is allowed")
        return _widening(f"{NAMESPACE}={value} is another namespace; only {namespace} is allowed")
    return {**params, NAMESPACE: namespace}


def confinable(listed_params: Iterable[str]) -> Refusal | None:
    """Whether a gadget can be confined to a namespace: its GetGadgetInfo lists the namespace filter."""
    if NAMESPACE in set(listed_params):
        return None
    return Refusal(
        "GadgetNotConfinable",
        f"this gadget has no Kubernetes namespace filter ({NAMESPACE}), so it cannot be confined to a "
        f"namespace; {CLUSTER_KIND_HINT}",
    )


def _widening(what: str) -> Refusal:
    return Refusal(
        "NamespaceNotAllowed", f"a GadgetInstance traces only its own namespace: {what}; {CLUSTER_KIND_HINT}"
    )


def admit(gi: GadgetInstanceResource, allowed_images: Collection[str]) -> GadgetInstanceResource | Refusal:
    """``gi`` as it may run: its image allowed and, if it is namespaced, its spec confined to its
    namespace; or why it may not run at all."""
    spec = gi.spec
    if spec is None:
        return gi
    refusal = check_image(spec.image, allowed_images)
    if refusal is not None:
        return refusal
    if not gi.kind.namespaced:  # a ClusterGadgetInstance: for cluster admins, unconfined
        return gi
    confined = confine(gi.namespace, spec.params)
    if isinstance(confined, Refusal):
        return confined
    return replace(gi, spec=replace(spec, params=confined))
