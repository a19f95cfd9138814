"""The GadgetInstance resource: API constants, the parsed spec, and parsing with field-path errors.

Two kinds share the spec and the status and are reconciled alike (``Kind``): the namespaced
``GadgetInstance`` and the cluster-scoped ``ClusterGadgetInstance``, for cluster admins (node-wide and
cross-namespace gadgets). A resource's ``key`` says which: ``namespace/name`` for a GadgetInstance, the
bare ``name`` for a ClusterGadgetInstance (a name never holds a ``/``); the instances' ownership tags
carry that key, and ``locate`` reads it back.

The CRD in ``crds/`` rejects most bad input at admission; this parser is the second line (a resource
applied before the CRD was updated, or a rule a schema cannot express) and turns what is left into a
``SpecError`` naming the field, which the operator reports as ``phase: Failed`` in the status.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gadget_operator import identity
from gadget_operator.errors import SpecError

GROUP = "gadget-operator.io"
VERSION = "v1alpha1"
KIND = "GadgetInstance"
PLURAL = "gadgetinstances"
SHORT_NAME = "gi"
FINALIZER = "gadget-operator.io/cleanup"
CLUSTER_KIND = "ClusterGadgetInstance"
CLUSTER_PLURAL = "clustergadgetinstances"
CLUSTER_SHORT_NAME = "cgi"

ROLLOUT_PAUSED_ANNOTATION = "gadget-operator.io/rollout-paused"
"""``"true"``: a RollingUpdate or Manual rollout admits no further node until the annotation goes (the
control API's PAUSE and RESUME intents set and remove it)."""
ROLLOUT_STEP_ANNOTATION = "gadget-operator.io/rollout-step"
"""Manual rollouts: how many batches past the first the rollout may admit, as ``"<generation>:<n>"``
(bound to that ``metadata.generation``: any later spec change starts again from the first batch; the
control API's NEXT intent writes it) or a bare ``"<n>"`` (whatever rollout runs: for hand-written
manifests, which cannot know the generation; reset it with each spec change)."""
RESYNC_ANNOTATION = "gadget-operator.io/resync-requested"
"""Any new value: the operator looks at every node of the resource again now (once per value)."""


@dataclass(frozen=True, slots=True)
class Kind:
    """One of the kinds the operator reconciles: the same spec, status and handling, another scope."""

    kind: str
    plural: str
    short_name: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{GROUP}/{VERSION}"

    def key(self, namespace: str, name: str) -> str:
        """What identifies an object of this kind among every object of both kinds."""
        return f"{namespace}/{name}" if self.namespaced else name


GADGET_INSTANCE = Kind(KIND, PLURAL, SHORT_NAME, namespaced=True)
CLUSTER_GADGET_INSTANCE = Kind(CLUSTER_KIND, CLUSTER_PLURAL, CLUSTER_SHORT_NAME, namespaced=False)
KINDS = (GADGET_INSTANCE, CLUSTER_GADGET_INSTANCE)
"""Every kind, in the order the operator lists them at start-up."""


def kind_named(kind: object) -> Kind:
    """The Kind of a body's ``kind`` field; a body without one (a unit test's) is a GadgetInstance."""
    for candidate in KINDS:
        if candidate.kind == kind:
            return candidate
    return GADGET_INSTANCE


def locate(key: str) -> tuple[Kind, str, str]:
    """(kind, namespace, name) of a resource's ``key`` (as its instances' ownership tags carry it): a
    ``namespace/name`` is a GadgetInstance, a bare ``name`` a ClusterGadgetInstance."""
    namespace, sep, name = key.partition("/")
    if sep:
        return GADGET_INSTANCE, namespace, name
    return CLUSTER_GADGET_INSTANCE, "", key


MAX_PARAMS = 64
MAX_TAGS = 32
MAX_NODES = 1000
MAX_LOG_LEVEL = 6
_NODE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


class SelectorOperator(enum.StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


@dataclass(frozen=True, slots=True)
class SelectorRequirement:
    key: str
    operator: SelectorOperator
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        match self.operator:
            case SelectorOperator.IN:
                return labels.get(self.key) in self.values
            case SelectorOperator.NOT_IN:
                return labels.get(self.key) not in self.values
            case SelectorOperator.EXISTS:
                return self.key in labels
            case SelectorOperator.DOES_NOT_EXIST:
                return self.key not in labels


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A standard Kubernetes label selector; the empty selector matches everything."""

    match_labels: Mapping[str, str] = field(default_factory=dict)
    match_expressions: tuple[SelectorRequirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels.items()) and all(
            req.matches(labels) for req in self.match_expressions
        )


class UpdateStrategyType(enum.StrEnum):
    ALL_AT_ONCE = "AllAtOnce"
    ROLLING_UPDATE = "RollingUpdate"
    MANUAL = "Manual"
    """A RollingUpdate that admits its first batch and then waits for each next step
    (``ROLLOUT_STEP_ANNOTATION``, the control API's NEXT intent)."""


_PERCENT = re.compile(r"^(100|[1-9][0-9]?)%$")
DEFAULT_MAX_SURGE = "25%"


@dataclass(frozen=True, slots=True)
class UpdateStrategy:
    """How a spec change reaches the nodes that run an older spec. Either way a node keeps its old
    instance until the new one is proven there; ``RollingUpdate`` also limits how many nodes start
    the new spec at once (``max_surge``, a count or a percentage of the target nodes, rounded up) and
    stops there while one of them fails, so a broken spec reaches only the first batch. ``Manual`` is
    the same, but after the first batch each further batch waits for a step asked for by hand."""

    type: UpdateStrategyType = UpdateStrategyType.ALL_AT_ONCE
    max_surge: int | str = DEFAULT_MAX_SURGE

    @property
    def rolling(self) -> bool:
        """Whether a spec change rolls out in batches (RollingUpdate or Manual)."""
        return self.type is not UpdateStrategyType.ALL_AT_ONCE

    @property
    def manual(self) -> bool:
        return self.type is UpdateStrategyType.MANUAL

    def batch_size(self, target_nodes: int) -> int:
        """Nodes that may start the new spec at once (at least one)."""
        if isinstance(self.max_surge, int):
            return max(1, self.max_surge)
        percent = int(self.max_surge.removesuffix("%"))
        return max(1, -(-target_nodes * percent // 100))


@dataclass(frozen=True, slots=True)
class GadgetInstanceSpec:
    image: str
    params: Mapping[str, str] = field(default_factory=dict)
    node_selector: LabelSelector = field(default_factory=LabelSelector)
    nodes: frozenset[str] | None = None
    """An explicit node list; None means every node the selector matches."""
    tags: tuple[str, ...] = ()
    log_level: int = 0
    event_buffer_length: int = 0
    suspend: bool = False
    update_strategy: UpdateStrategy = field(default_factory=UpdateStrategy)
    digest: str = field(init=False, compare=False, repr=False)
    """Hash of ``daemon_payload``, computed once: it names every instance of this spec."""
    check_digest: str = field(init=False, compare=False, repr=False)
    """Hash of what a dry run of the gadget depends on (image and parameters), computed once."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "digest", identity.spec_hash(self.daemon_payload()))
        object.__setattr__(self, "check_digest", identity.spec_hash({"image": self.image, "params": dict(self.params)}))

    def targets(self, node: str, labels: Mapping[str, str]) -> bool:
        """Whether this spec wants an instance on ``node`` (both the list and the selector must agree)."""
        return (self.nodes is None or node in self.nodes) and self.node_selector.matches(labels)

    @property
    def targets_every_node(self) -> bool:
        """No node list and an empty selector: every node with a daemon, including ones that join later."""
        return self.nodes is None and not self.node_selector.match_labels and not self.node_selector.match_expressions

    def daemon_payload(self) -> dict[str, object]:
        """What reaches the daemon; its hash names the instance, so only these fields restart it."""
        return {
            "image": self.image,
            "params": dict(self.params),
            "tags": list(self.tags),
            "logLevel": self.log_level,
            "eventBufferLength": self.event_buffer_length,
        }

    def hash(self) -> str:
        return self.digest


def parse_spec(raw: Any) -> GadgetInstanceSpec:
    """Parse ``spec`` from a GadgetInstance body; raise ``SpecError`` naming the first bad field."""
    if not isinstance(raw, Mapping):
        raise SpecError("spec", "must be an object")
    image = raw.get("image")
    if not isinstance(image, str) or not image.strip():
        raise SpecError("spec.image", "is required and must be a non-empty string")
    if image != image.strip() or any(ch.isspace() for ch in image):
        raise SpecError("spec.image", f"must not contain white space: {image!r}")

    params = _string_map(raw.get("params"), "spec.params", MAX_PARAMS)
    tags = _string_list(raw.get("tags"), "spec.tags", MAX_TAGS)
    for index, tag in enumerate(tags):
        if tag.startswith(identity.TAG_PREFIX):
            raise SpecError(f"spec.tags[{index}]", f"the prefix {identity.TAG_PREFIX} is reserved")
        if "," in tag:
            # Inspektor Gadget's DaemonSet mode stores tags comma-joined in a ConfigMap annotation.
            raise SpecError(f"spec.tags[{index}]", "must not contain a comma")

    nodes_raw = raw.get("nodes")
    nodes: frozenset[str] | None = None
    if nodes_raw is not None:
        node_list = _string_list(nodes_raw, "spec.nodes", MAX_NODES)
        for index, node in enumerate(node_list):
            if len(node) > 253 or not _NODE_NAME.fullmatch(node):
                raise SpecError(f"spec.nodes[{index}]", f"{node!r} is not a valid node name")
        nodes = frozenset(node_list)

    return GadgetInstanceSpec(
        image=image,
        params=params,
        node_selector=_selector(raw.get("nodeSelector"), "spec.nodeSelector"),
        nodes=nodes,
        tags=tuple(tags),
        log_level=_int(raw.get("logLevel"), "spec.logLevel", 0, MAX_LOG_LEVEL),
        event_buffer_length=_int(raw.get("eventBufferLength"), "spec.eventBufferLength", 0, 2**31 - 1),
        suspend=_bool(raw.get("suspend"), "spec.suspend"),
        update_strategy=_update_strategy(raw.get("updateStrategy"), "spec.updateStrategy"),
    )


def _update_strategy(raw: Any, path: str) -> UpdateStrategy:
    if raw is None:
        return UpdateStrategy()
    if not isinstance(raw, Mapping):
        raise SpecError(path, "must be an object (type, rollingUpdate)")
    unknown = set(raw) - {"type", "rollingUpdate"}
    if unknown:
        raise SpecError(path, f"unknown field(s) {sorted(unknown)}; use type or rollingUpdate")
    try:
        kind = UpdateStrategyType(raw.get("type", UpdateStrategyType.ALL_AT_ONCE))
    except ValueError:
        raise SpecError(
            f"{path}.type", f"must be AllAtOnce, RollingUpdate or Manual, got {raw.get('type')!r}"
        ) from None
    rolling = raw.get("rollingUpdate")
    if rolling is None:
        return UpdateStrategy(kind)
    if kind is UpdateStrategyType.ALL_AT_ONCE:
        raise SpecError(f"{path}.rollingUpdate", "is only allowed with type RollingUpdate or Manual")
    if not isinstance(rolling, Mapping) or set(rolling) - {"maxSurge"}:
        raise SpecError(f"{path}.rollingUpdate", "must be an object with maxSurge only")
    surge = rolling.get("maxSurge", DEFAULT_MAX_SURGE)
    surge_path = f"{path}.rollingUpdate.maxSurge"
    if isinstance(surge, bool) or not isinstance(surge, int | str):
        raise SpecError(surge_path, f"must be a count of nodes or a percentage such as '25%', got {surge!r}")
    if isinstance(surge, int) and not 1 <= surge <= MAX_NODES:
        raise SpecError(surge_path, f"must be between 1 and {MAX_NODES} nodes, got {surge}")
    if isinstance(surge, str) and not _PERCENT.fullmatch(surge):
        raise SpecError(surge_path, f"must be a percentage from 1% to 100%, got {surge!r}")
    return UpdateStrategy(kind, surge)


def _string_map(raw: Any, path: str, limit: int) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise SpecError(path, "must be a map of strings to strings")
    if len(raw) > limit:
        raise SpecError(path, f"has {len(raw)} entries; at most {limit} are allowed")
    for key, value in raw.items():
        if not isinstance(key, str) or not key:
            raise SpecError(path, f"keys must be non-empty strings, got {key!r}")
        if not isinstance(value, str):
            raise SpecError(f"{path}.{key}", f"must be a string (quote it in YAML), got {value!r}")
    return dict(raw)


def _string_list(raw: Any, path: str, limit: int) -> list[str]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise SpecError(path, "must be a list of strings")
    if len(raw) > limit:
        raise SpecError(path, f"has {len(raw)} entries; at most {limit} are allowed")
    for index, item in enumerate(raw):
        if not isinstance(item, str) or not item:
            raise SpecError(f"{path}[{index}]", f"must be a non-empty string, got {item!r}")
    return list(raw)


def _int(raw: Any, path: str, low: int, high: int) -> int:
    if raw is None:
        return low
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise SpecError(path, f"must be an integer, got {raw!r}")
    if not low <= raw <= high:
        raise SpecError(path, f"must be between {low} and {high}, got {raw}")
    return raw


def _bool(raw: Any, path: str) -> bool:
    if raw is None:
        return False
    if not isinstance(raw, bool):
        raise SpecError(path, f"must be true or false, got {raw!r}")
    return raw


def _selector(raw: Any, path: str) -> LabelSelector:
    if raw is None:
        return LabelSelector()
    if not isinstance(raw, Mapping):
        raise SpecError(path, "must be a label selector (matchLabels, matchExpressions)")
    unknown = set(raw) - {"matchLabels", "matchExpressions"}
    if unknown:
        raise SpecError(path, f"unknown field(s) {sorted(unknown)}; use matchLabels or matchExpressions")
    labels = _string_map(raw.get("matchLabels"), f"{path}.matchLabels", 64)
    for key in labels:
        if not _LABEL_KEY.fullmatch(key):
            raise SpecError(f"{path}.matchLabels", f"{key!r} is not a valid label key")
    expressions_raw = raw.get("matchExpressions") or []
    if not isinstance(expressions_raw, list):
        raise SpecError(f"{path}.matchExpressions", "must be a list")
    expressions = []
    for index, item in enumerate(expressions_raw):
        item_path = f"{path}.matchExpressions[{index}]"
        if not isinstance(item, Mapping) or not isinstance(item.get("key"), str) or not item["key"]:
            raise SpecError(item_path, "needs a key")
        try:
            operator = SelectorOperator(str(item.get("operator")))
        except ValueError:
            raise SpecError(
                f"{item_path}.operator",
                f"must be one of In, NotIn, Exists, DoesNotExist, got {item.get('operator')!r}",
            ) from None
        values = _string_list(item.get("values"), f"{item_path}.values", 256)
        if operator in (SelectorOperator.IN, SelectorOperator.NOT_IN) and not values:
            raise SpecError(f"{item_path}.values", f"must not be empty for {operator}")
        if operator in (SelectorOperator.EXISTS, SelectorOperator.DOES_NOT_EXIST) and values:
            raise SpecError(f"{item_path}.values", f"must be empty for {operator}")
        expressions.append(SelectorRequirement(item["key"], operator, frozenset(values)))
    return LabelSelector(labels, tuple(expressions))


@dataclass(frozen=True, slots=True)
class Controls:
    """What a user asks of the operator through annotations on the resource: the Kubernetes-native twin
    of the control API's intents, and where those intents are kept, so that they outlive the process
    that took them (a restart, a new leader)."""

    paused: bool = False
    """``ROLLOUT_PAUSED_ANNOTATION`` is ``"true"``: no further node starts the new spec."""
    steps: int = 0
    """``ROLLOUT_STEP_ANNOTATION``: batches past the first that a Manual rollout may admit."""
    resync: str = ""
    """``RESYNC_ANNOTATION``'s value; each new one asks for a resync."""


NO_CONTROLS = Controls()
_STEP = re.compile(r"^(?:(\d{1,18}):)?(\d{1,6})$")


def parse_controls(annotations: Any, generation: int) -> Controls:
    """The ``Controls`` in a resource's annotations. A value that cannot be read counts as absent (a
    pause that is not ``"true"``, a step of another generation or not a number): annotations are not
    validated at admission, and nothing here may stop the resource from being handled."""
    if not isinstance(annotations, Mapping) or not annotations:
        return NO_CONTROLS
    paused = str(annotations.get(ROLLOUT_PAUSED_ANNOTATION, "")).strip().lower() == "true"
    steps = 0
    match = _STEP.fullmatch(str(annotations.get(ROLLOUT_STEP_ANNOTATION, "")).strip())
    if match is not None and (match.group(1) is None or int(match.group(1)) == generation):
        steps = int(match.group(2))
    resync = str(annotations.get(RESYNC_ANNOTATION, ""))
    if not (paused or steps or resync):
        return NO_CONTROLS
    return Controls(paused=paused, steps=steps, resync=resync)


def step_annotation(generation: int, steps: int) -> str:
    """The value of ``ROLLOUT_STEP_ANNOTATION`` that grants ``steps`` batches past the first to the
    rollout of ``generation``."""
    return f"{generation}:{steps}"


@dataclass(frozen=True, slots=True)
class GadgetInstanceResource:
    """What the operator needs of one GadgetInstance or ClusterGadgetInstance object, parsed once per
    watch event (``namespace`` is empty for a ClusterGadgetInstance)."""

    uid: str
    namespace: str
    name: str
    generation: int
    resource_version: str
    spec: GadgetInstanceSpec | None
    spec_error: str | None
    deleting: bool
    finalizers: tuple[str, ...]
    status: Mapping[str, Any]
    kind: Kind = GADGET_INSTANCE
    controls: Controls = NO_CONTROLS

    @property
    def key(self) -> str:
        return self.kind.key(self.namespace, self.name)

    @property
    def has_finalizer(self) -> bool:
        return FINALIZER in self.finalizers

    @property
    def active(self) -> bool:
        """Whether instances should run for it now."""
        return self.spec is not None and not self.spec.suspend and not self.deleting

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> GadgetInstanceResource:
        metadata = body.get("metadata", {})
        spec: GadgetInstanceSpec | None = None
        spec_error: str | None = None
        try:
            spec = parse_spec(body.get("spec"))
        except SpecError as error:
            spec_error = str(error)
        kind = kind_named(body.get("kind"))
        generation = int(metadata.get("generation", 1))
        return cls(
            uid=metadata["uid"],
            namespace=metadata.get("namespace", "") if kind.namespaced else "",
            name=metadata["name"],
            generation=generation,
            resource_version=str(metadata.get("resourceVersion", "")),
            spec=spec,
            spec_error=spec_error,
            deleting=bool(metadata.get("deletionTimestamp")),
            finalizers=tuple(metadata.get("finalizers") or ()),
            status=dict(body.get("status") or {}),
            kind=kind,
            controls=parse_controls(metadata.get("annotations"), generation),
        )
