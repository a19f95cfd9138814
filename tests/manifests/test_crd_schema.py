"""The shipped CRD is a valid, structural schema, and it agrees with the operator's own spec parser.

Admission (the CRD) is the first line of validation and ``resource.parse_spec`` the second: whatever the
API server admits must parse, and the examples in ``examples/`` must pass both. Files in
``examples/invalid/`` start with ``# expect: <text>``: the API server's message must contain it, and
the parser must reject them too.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import celpy
import kubernetes_validate
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gadget_operator import identity, resource, status
from gadget_operator.errors import SpecError
from gadget_operator.settings import StatusSettings
from tests.manifests import crd_validation

EXAMPLES = crd_validation.REPO / "examples"
VALID = sorted(EXAMPLES.glob("*.yaml"))
INVALID = sorted((EXAMPLES / "invalid").glob("*.yaml"))

CRD = crd_validation.load_crd()
SCHEMA = crd_validation.openapi_schema(CRD)
SPEC = SCHEMA["properties"]["spec"]
STATUS = SCHEMA["properties"]["status"]
SELECTOR = SPEC["properties"]["nodeSelector"]
EXPRESSION = SELECTOR["properties"]["matchExpressions"]["items"]

PARSER_FIELDS = {
    "image": "image",
    "params": "params",
    "nodeSelector": "node_selector",
    "nodes": "nodes",
    "tags": "tags",
    "logLevel": "log_level",
    "eventBufferLength": "event_buffer_length",
    "suspend": "suspend",
    "updateStrategy": "update_strategy",
}
"""Each spec field of the resource and the GadgetInstanceSpec attribute the parser puts it in."""


def body(spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{resource.GROUP}/{resource.VERSION}",
        "kind": resource.KIND,
        "metadata": {"name": "test", "namespace": "default"},
        "spec": spec,
    }


def parses(spec: Any) -> bool:
    try:
        resource.parse_spec(spec)
    except SpecError:
        return False
    return True


def load(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as stream:
        document: dict[str, Any] = yaml.safe_load(stream)
    return document


def expected_message(path: Path) -> str:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} must start with '# expect: <message>'"
    return first.removeprefix("# expect: ").strip()


def schema_nodes(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every schema node with its path (``spec.tags[]``, ``spec.params{}``)."""
    nodes = [(path, schema)]
    for name, sub in (schema.get("properties") or {}).items():
        nodes += schema_nodes(sub, f"{path}.{name}" if path else name)
    if isinstance(schema.get("additionalProperties"), dict):
        nodes += schema_nodes(schema["additionalProperties"], f"{path}{{}}")
    if isinstance(schema.get("items"), dict):
        nodes += schema_nodes(schema["items"], f"{path}[]")
    return nodes


# -- the CRD object ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.30", kubernetes_validate.latest_version()])
def test_the_crd_is_a_valid_customresourcedefinition(version: str) -> None:
    kubernetes_validate.validate(CRD, version, strict=True)


def test_the_crd_names_the_api_as_the_operator_does() -> None:
    spec = CRD["spec"]
    assert CRD["metadata"]["name"] == f"{resource.PLURAL}.{resource.GROUP}"
    assert spec["group"] == resource.GROUP
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": resource.KIND,
        "listKind": f"{resource.KIND}List",
        "plural": resource.PLURAL,
        "singular": resource.KIND.lower(),
        "shortNames": [resource.SHORT_NAME],
        "categories": ["gadget"],
    }
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == (resource.VERSION, True, True)
    assert version["subresources"] == {"status": {}}


CLUSTER_CRD_PATH = crd_validation.REPO / "crds" / f"{resource.CLUSTER_PLURAL}.{resource.GROUP}.yaml"
CLUSTER_CRD = yaml.safe_load(CLUSTER_CRD_PATH.read_text())


@pytest.mark.parametrize("version", ["1.30", kubernetes_validate.latest_version()])
def test_the_cluster_crd_is_a_valid_customresourcedefinition(version: str) -> None:
    kubernetes_validate.validate(CLUSTER_CRD, version, strict=True)


def test_the_cluster_crd_names_the_cluster_kind_as_the_operator_does() -> None:
    spec = CLUSTER_CRD["spec"]
    assert CLUSTER_CRD["metadata"]["name"] == f"{resource.CLUSTER_PLURAL}.{resource.GROUP}"
    assert spec["scope"] == "Cluster"
    assert spec["names"] == {
        "kind": resource.CLUSTER_KIND,
        "listKind": f"{resource.CLUSTER_KIND}List",
        "plural": resource.CLUSTER_PLURAL,
        "singular": resource.CLUSTER_KIND.lower(),
        "shortNames": [resource.CLUSTER_SHORT_NAME],
        "categories": ["gadget"],
    }
    kinds = {(k.kind, k.plural, k.short_name, k.namespaced) for k in resource.KINDS}
    assert kinds == {
        (resource.KIND, resource.PLURAL, resource.SHORT_NAME, True),
        (resource.CLUSTER_KIND, resource.CLUSTER_PLURAL, resource.CLUSTER_SHORT_NAME, False),
    }


def test_the_two_crds_differ_only_in_scope_and_names() -> None:
    """Same spec, status, validation rules, printer columns, categories and labels: only what makes the
    second kind a kind of its own (and cluster-scoped) differs."""

    def without_identity(crd: dict[str, Any]) -> dict[str, Any]:
        names = {k: v for k, v in crd["spec"]["names"].items() if k == "categories"}
        spec = {k: v for k, v in crd["spec"].items() if k != "scope"} | {"names": names}
        return crd | {"metadata": {k: v for k, v in crd["metadata"].items() if k != "name"}, "spec": spec}

    assert without_identity(CLUSTER_CRD) == without_identity(CRD)
    assert (CRD["spec"]["scope"], CLUSTER_CRD["spec"]["scope"]) == ("Namespaced", "Cluster")


def test_kubectl_get_shows_image_ready_phase_and_age() -> None:
    columns = {c["name"]: c for c in crd_validation.storage_version(CRD)["additionalPrinterColumns"]}
    assert [name for name, c in columns.items() if c.get("priority", 0) == 0] == ["Image", "Ready", "Phase", "Age"]
    assert columns["Image"]["jsonPath"] == ".spec.image"
    assert columns["Ready"]["jsonPath"] == ".status.ready"
    assert columns["Phase"]["jsonPath"] == ".status.phase"
    assert (columns["Age"]["jsonPath"], columns["Age"]["type"]) == (".metadata.creationTimestamp", "date")
    for column in columns.values():
        path = column["jsonPath"].lstrip(".").split(".")
        if path[0] in ("spec", "status"):
            assert path[1] in SCHEMA["properties"][path[0]]["properties"], column


def test_the_schema_is_structural() -> None:
    assert crd_validation.structural_problems(SCHEMA) == []


def test_the_structural_checker_finds_what_the_api_server_rejects() -> None:
    broken = {
        "type": "object",
        "properties": {
            "a": {"properties": {"b": {"type": "string"}}},
            "c": {"type": "object", "properties": {}, "additionalProperties": {"type": "string"}},
            "d": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
            "e": {"type": "string", "x-kubernetes-validations": [{"rule": "self.("}]},
            "f": {"type": "integer", "maximum": 3, "default": 5},
            "g": {"type": "string", "maxItem": 3},
        },
    }
    problems = "\n".join(crd_validation.structural_problems(broken))
    for fragment in ("properties.a: type is required", "mutually exclusive", "uniqueItems", "does not compile"):
        assert fragment in problems
    assert "default 5 is invalid" in problems
    assert "unknown keyword 'maxItem'" in problems


def test_cel_rules_stay_inside_the_cost_budget() -> None:
    """A rule that iterates needs a bounded collection; a rule that scans a string needs a maxLength.

    (Map keys are an exception the API server makes itself: it estimates their length as zero.)
    """
    for path, node in schema_nodes(SCHEMA):
        for rule in node.get("x-kubernetes-validations") or ():
            text = rule["rule"]
            assert "message" in rule, f"{path}: give {text!r} a message"
            if re.search(r"\bself\.(all|exists|exists_one|map|filter)\(", text):
                assert "maxItems" in node or "maxProperties" in node, f"{path}: {text!r} iterates an unbounded list"
            if node.get("type") == "string" and re.search(r"\bself\.(matches|contains|startsWith|endsWith)", text):
                assert "maxLength" in node, f"{path}: {text!r} scans a string without maxLength"


# -- examples ------------------------------------------------------------------------------------------


def test_there_are_examples_of_both_kinds() -> None:
    assert len(VALID) >= 4
    assert len(INVALID) >= 7


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_an_example_is_admitted_and_parses(path: Path) -> None:
    document = load(path)
    assert document["apiVersion"] == f"{resource.GROUP}/{resource.VERSION}"
    kind = resource.kind_named(document["kind"])
    assert document["kind"] == kind.kind
    assert kind.namespaced or "namespace" not in document["metadata"]  # a cluster object has none
    assert crd_validation.validate(document, CLUSTER_CRD if not kind.namespaced else None) == []
    resource.parse_spec(document["spec"])


def test_there_are_examples_of_the_cluster_kind_too() -> None:
    kinds = {load(path)["kind"] for path in VALID}
    assert kinds == {resource.KIND, resource.CLUSTER_KIND}


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_an_invalid_example_is_refused_by_both_with_the_expected_message(path: Path) -> None:
    document = load(path)
    errors = crd_validation.validate(document)
    assert errors, f"{path.name} was admitted"
    assert any(expected_message(path) in error for error in errors), errors
    with pytest.raises(SpecError):
        resource.parse_spec(document["spec"])


# -- the CRD and the parser agree ----------------------------------------------------------------------


def test_the_spec_fields_are_the_ones_the_parser_reads() -> None:
    source = inspect.getsource(resource.parse_spec)
    read = set(re.findall(r"raw\.get\(\"(\w+)\"\)", source)) | set(re.findall(r"raw\[\"(\w+)\"\]", source))
    assert read == set(PARSER_FIELDS)
    assert set(SPEC["properties"]) == set(PARSER_FIELDS)
    parsed = {f.name for f in dataclasses.fields(resource.GadgetInstanceSpec) if f.init}  # not derived ones
    assert set(PARSER_FIELDS.values()) == parsed
    assert SPEC["required"] == ["image"]
    assert SCHEMA["required"] == ["spec"]


def test_the_selector_fields_are_the_ones_the_parser_reads() -> None:
    assert set(SELECTOR["properties"]) == {"matchLabels", "matchExpressions"}
    assert '{"matchLabels", "matchExpressions"}' in inspect.getsource(resource._selector)
    assert set(EXPRESSION["properties"]) == {"key", "operator", "values"}
    assert EXPRESSION["properties"]["operator"]["enum"] == [op.value for op in resource.SelectorOperator]
    assert SELECTOR["x-kubernetes-map-type"] == "atomic"


def test_the_limits_are_the_parsers() -> None:
    props = SPEC["properties"]
    assert props["params"]["maxProperties"] == resource.MAX_PARAMS
    assert props["tags"]["maxItems"] == resource.MAX_TAGS
    assert props["nodes"]["maxItems"] == resource.MAX_NODES
    assert props["nodes"]["items"]["pattern"] == resource._NODE_NAME.pattern
    assert props["nodes"]["items"]["maxLength"] == 253
    assert props["nodes"]["x-kubernetes-list-type"] == "set"
    assert (props["logLevel"]["minimum"], props["logLevel"]["maximum"]) == (0, resource.MAX_LOG_LEVEL)
    assert (props["eventBufferLength"]["minimum"], props["eventBufferLength"]["maximum"]) == (0, 2**31 - 1)
    assert SELECTOR["properties"]["matchLabels"]["maxProperties"] == 64
    assert EXPRESSION["properties"]["values"]["maxItems"] == 256
    (label_rule,) = SELECTOR["properties"]["matchLabels"]["x-kubernetes-validations"]
    assert f"'{resource._LABEL_KEY.pattern}'" in label_rule["rule"]
    tag_rules = " ".join(r["rule"] for r in props["tags"]["items"]["x-kubernetes-validations"])
    assert f"'{identity.TAG_PREFIX}'" in tag_rules


def test_the_schema_defaults_are_the_parsers_defaults() -> None:
    bare = resource.parse_spec({"image": "trace_exec"})
    defaulted = {name: sub["default"] for name, sub in SPEC["properties"].items() if "default" in sub}
    assert set(defaulted) == {"logLevel", "eventBufferLength", "suspend"}
    for name, value in defaulted.items():
        assert getattr(bare, PARSER_FIELDS[name]) == value
    assert resource.parse_spec({"image": "trace_exec", **defaulted}) == bare
    # nodes must stay absent: an empty list would mean "no node", absent means "every node".
    assert "default" not in SPEC["properties"]["nodes"]


def test_the_white_space_rule_is_the_parsers_str_isspace() -> None:
    (rule,) = SPEC["properties"]["image"]["x-kubernetes-validations"]
    spaces = [chr(c) for c in range(0x3001) if chr(c).isspace()]
    assert len(spaces) > 20
    others = ["_", "-", ":", "@", "/", "\u200b", "\ufeff", "é", "\x00", "\x7f", "\u180e"]
    for char in spaces + others:
        image = f"trace{char}exec"
        result = crd_validation.evaluate_rule(rule["rule"], image)
        assert result is (not char.isspace()), repr(char)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        pytest.param({"image": "x" * 513}, "spec.image: Too long", id="image-longer-than-512"),
        pytest.param({"image": "x", "params": {"a": "v" * 4097}}, "spec.params.a: Too long", id="param-over-4096"),
        pytest.param({"image": "x", "tags": ["t" * 257]}, "spec.tags[0]: Too long", id="tag-over-256"),
        pytest.param({"image": "x", "nodes": ["a", "b", "a"]}, "spec.nodes[2]: Duplicate value", id="duplicate-node"),
        pytest.param(
            {"image": "x", "nodeSelector": {"matchExpressions": [{"key": "k", "operator": "Exists"}] * 65}},
            "spec.nodeSelector.matchExpressions: Too many: 65",
            id="65-expressions",
        ),
        pytest.param({"image": "x", "imagePullPolicy": "Always"}, 'unknown field "spec.imagePullPolicy"', id="unknown"),
        pytest.param(
            {"image": "x", "nodeSelector": {"matchExpressions": [{"key": "k", "operator": "Exists", "value": ["a"]}]}},
            'unknown field "spec.nodeSelector.matchExpressions[0].value"',
            id="unknown-in-expression",
        ),
    ],
)
def test_where_the_schema_is_stricter_than_the_parser(spec: dict[str, Any], message: str) -> None:
    """Known, deliberate gaps: the parser (the second line) accepts these; the API server does not."""
    errors = crd_validation.validate(body(spec))
    assert any(message in error for error in errors), errors


# -- random specs --------------------------------------------------------------------------------------

_node_names = st.from_regex(resource._NODE_NAME, fullmatch=True).filter(lambda name: len(name) <= 253)
_label_keys = st.from_regex(resource._LABEL_KEY, fullmatch=True)
_no_space = st.characters(blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc"))
_images = st.one_of(
    st.sampled_from(["trace_exec", "ghcr.io/inspektor-gadget/gadget/trace_open:v0.45.0", "top_file@sha256:0a1b"]),
    st.text(_no_space, min_size=1, max_size=40),
)
_tags = st.text(min_size=1, max_size=40).filter(lambda t: "," not in t and not t.startswith(identity.TAG_PREFIX))


@st.composite
def _expressions(draw: st.DrawFn) -> dict[str, Any]:
    operator = draw(st.sampled_from([op.value for op in resource.SelectorOperator]))
    item: dict[str, Any] = {"key": draw(st.text(min_size=1, max_size=20)), "operator": operator}
    if operator in ("In", "NotIn"):
        item["values"] = draw(st.lists(st.text(min_size=1, max_size=10), min_size=1, max_size=4))
    elif draw(st.booleans()):
        item["values"] = []
    return item


_selectors = st.fixed_dictionaries(
    {},
    optional={
        "matchLabels": st.dictionaries(_label_keys, st.text(max_size=20), max_size=4),
        "matchExpressions": st.lists(_expressions(), max_size=4),
    },
)

_valid_specs = st.fixed_dictionaries(
    {"image": _images},
    optional={
        "params": st.dictionaries(st.text(min_size=1, max_size=40), st.text(max_size=60), max_size=8),
        "nodeSelector": _selectors,
        "nodes": st.lists(_node_names, unique=True, max_size=5),
        "tags": st.lists(_tags, max_size=5),
        "logLevel": st.integers(0, resource.MAX_LOG_LEVEL),
        "eventBufferLength": st.integers(0, 2**31 - 1),
        "suspend": st.booleans(),
        "updateStrategy": st.one_of(
            st.fixed_dictionaries({}, optional={"type": st.just("AllAtOnce")}),
            st.fixed_dictionaries(
                {"type": st.sampled_from(["RollingUpdate", "Manual"])},
                optional={
                    "rollingUpdate": st.fixed_dictionaries(
                        {}, optional={"maxSurge": st.integers(1, 1000) | st.integers(1, 100).map(lambda p: f"{p}%")}
                    )
                },
            ),
        ),
    },
)

_ABSENT = object()
"""An edge value that removes the field."""

# Values at and just past every rule's edge, valid and invalid, each put into an otherwise valid spec.
# The deliberate gaps (test_where_the_schema_is_stricter_than_the_parser) are left out.
_SELECTOR_EDGES: list[Any] = [
    {"matchLabels": {"node pool": "x"}},
    {"matchLabels": {"-x": "y"}},
    {"matchLabels": {"k": 1}},
    {"matchLabels": {str(i): "v" for i in range(65)}},
    {"matchLabels": {str(i): "v" for i in range(64)}},
    {"matchLabels": {"example.com/a_b.c": ""}},
    {"matchExpressions": [{"key": "k", "operator": "In"}]},
    {"matchExpressions": [{"key": "k", "operator": "NotIn", "values": []}]},
    {"matchExpressions": [{"key": "k", "operator": "Exists", "values": ["a"]}]},
    {"matchExpressions": [{"key": "k", "operator": "DoesNotExist", "values": ["a"]}]},
    {"matchExpressions": [{"key": "k", "operator": "DoesNotExist", "values": []}]},
    {"matchExpressions": [{"key": "k", "operator": "Equals", "values": ["a"]}]},
    {"matchExpressions": [{"key": "k", "operator": "in", "values": ["a"]}]},
    {"matchExpressions": [{"key": "k", "operator": "In", "values": [""]}]},
    {"matchExpressions": [{"key": "k", "operator": "In", "values": [1]}]},
    {"matchExpressions": [{"key": "k", "operator": "In", "values": [str(i) for i in range(257)]}]},
    {"matchExpressions": [{"key": "k", "operator": "In", "values": [str(i) for i in range(256)]}]},
    {"matchExpressions": [{"key": "k", "operator": "In", "values": "a"}]},
    {"matchExpressions": [{"key": "", "operator": "Exists"}]},
    {"matchExpressions": [{"key": 1, "operator": "Exists"}]},
    {"matchExpressions": [{"operator": "Exists"}]},
    {"matchExpressions": [{"key": "k"}]},
    {"matchExpressions": ["k"]},
    {"matchExpressions": {"key": "k", "operator": "Exists"}},
    {"matchLabel": {"a": "b"}},
    {"matchLabels": ["a"]},
    {},
    "role=gadget",
]
_EDGES: list[tuple[str, Any]] = [
    *(
        ("image", v)
        for v in ["", " ", " x", "x ", "a b", "a\u00a0b", "a\x1cb", "a\x85b", "a\u2028b", "\t", "x" * 512, 5, _ABSENT]
    ),
    *(
        ("params", v)
        for v in [
            ["a"],
            "a=b",
            {"": "v"},
            {"k": 1},
            {"k": True},
            {"k": ""},
            {str(i): "v" for i in range(65)},
            {str(i): "v" for i in range(64)},
            {"a": "x" * 4096},
        ]
    ),
    *(("nodeSelector", v) for v in _SELECTOR_EDGES),
    *(
        ("nodes", v)
        for v in [
            "node-1",
            [],
            ["Bad_Node"],
            [""],
            ["a."],
            [".a"],
            ["-a"],
            ["a" * 254],
            ["a" * 253],
            [1],
            [f"n{i}" for i in range(1001)],
            [f"n{i}" for i in range(1000)],
        ]
    ),
    *(
        ("tags", v)
        for v in [
            "team=x",
            [""],
            ["a,b"],
            [","],
            [identity.TAG_OWNER_UID + "=x"],
            ["gadget-operator.io"],
            ["x" * 256],
            [7],
            [f"t{i}" for i in range(33)],
            [f"t{i}" for i in range(32)],
        ]
    ),
    *(("logLevel", v) for v in [-1, 0, resource.MAX_LOG_LEVEL, resource.MAX_LOG_LEVEL + 1, True, "1", 1.5]),
    *(("eventBufferLength", v) for v in [0, 2**31 - 1, 2**31, -1, False, "10"]),
    *(("suspend", v) for v in ["true", 1, 0]),
    *(
        ("updateStrategy", v)
        for v in [
            {},
            {"type": "AllAtOnce"},
            {"type": "RollingUpdate"},
            {"type": "Rolling"},
            {"type": ""},
            {"type": "AllAtOnce", "rollingUpdate": {"maxSurge": 1}},
            {"rollingUpdate": {"maxSurge": 1}},
            {"type": "RollingUpdate", "rollingUpdate": {}},
            {"type": "Manual"},
            {"type": "Manual", "rollingUpdate": {"maxSurge": 2}},
            {"type": "manual"},
            *(
                {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge}}
                for surge in [1, 1000, 1001, 0, -1, "1%", "100%", "101%", "0%", "25", "x%", "05%", 1.5, True]
            ),
            "RollingUpdate",
        ]
    ),
]


def _with(spec: dict[str, Any], field: str, value: Any) -> dict[str, Any]:
    changed = {k: v for k, v in spec.items() if k != field}
    if value is not _ABSENT:
        changed[field] = value
    return changed


@pytest.mark.parametrize(("field", "value"), _EDGES, ids=[f"{f}-{i}" for i, (f, _) in enumerate(_EDGES)])
def test_the_api_server_and_the_parser_agree_at_every_edge(field: str, value: Any) -> None:
    spec = _with({"image": "trace_exec", "nodes": ["worker-1"], "tags": ["team=x"]}, field, value)
    errors = crd_validation.validate(body(spec))
    assert (errors == []) == parses(spec), errors or "admitted but the parser refuses it"


@st.composite
def _mixed_specs(draw: st.DrawFn) -> dict[str, Any]:
    """A random valid spec with one or two fields replaced by edge values or random junk."""
    spec: dict[str, Any] = draw(_valid_specs)
    junk = st.one_of(
        st.sampled_from(_EDGES),
        st.tuples(st.just("params"), st.dictionaries(st.text(max_size=3), st.one_of(st.text(), st.integers()))),
        st.tuples(st.just("tags"), st.lists(st.one_of(st.text(max_size=4), st.integers()), max_size=3)),
    )
    for field, value in draw(st.lists(junk, min_size=1, max_size=2)):
        spec = _with(spec, field, value)
    return spec


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_valid_specs)
def test_every_spec_the_rules_allow_is_admitted_and_parses(spec: dict[str, Any]) -> None:
    assert crd_validation.validate(body(spec)) == []
    parsed = resource.parse_spec(spec)
    defaulted = crd_validation.apply_defaults(body(spec), SCHEMA)["spec"]
    assert resource.parse_spec(defaulted) == parsed


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mixed_specs())
def test_the_api_server_and_the_parser_accept_the_same_specs(spec: dict[str, Any]) -> None:
    errors = crd_validation.validate(body(spec))
    assert (errors == []) == parses(spec), errors or "admitted but the parser refuses it"


# -- status --------------------------------------------------------------------------------------------


def test_the_status_enums_are_the_operators() -> None:
    props = STATUS["properties"]
    assert props["phase"]["enum"] == [phase.value for phase in status.Phase]
    assert props["nodes"]["items"]["properties"]["state"]["enum"] == [state.value for state in status.NodeState]
    assert props["nodes"]["maxItems"] >= StatusSettings().max_node_entries


_NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


@st.composite
def _status_inputs(draw: st.DrawFn) -> dict[str, Any]:
    nodes = draw(st.lists(_node_names, unique=True, max_size=80))
    outcomes = {}
    for node in nodes:
        if draw(st.integers(0, 4)):
            state = draw(st.sampled_from(list(status.NodeState)))
            outcomes[node] = status.NodeOutcome(
                node,
                state,
                instance_id=identity.instance_id("uid-1", node, "0123456789abcdef") if draw(st.booleans()) else "",
                message=draw(st.text(max_size=200)),
                since=_NOW - timedelta(seconds=draw(st.integers(0, 10**6))) if draw(st.booleans()) else None,
            )
    flags = draw(st.sampled_from([{}, {"suspended": True}, {"deleting": True}, {"spec_error": "spec.image: bad"}]))
    return {"desired_nodes": nodes, "outcomes": outcomes, **flags}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(_status_inputs(), st.integers(1, 10**6))
def test_every_status_the_operator_writes_is_admitted(inputs: dict[str, Any], generation: int) -> None:
    observed = status.Observed(
        generation=generation, previous={}, now=_NOW, max_node_entries=StatusSettings().max_node_entries
    )
    rendered = status.compute_status(observed, **inputs)
    assert crd_validation.validate({**body({"image": "trace_exec"}), "status": rendered}) == []
    again = status.compute_status(
        status.Observed(
            generation=generation + 1, previous=rendered, now=_NOW + timedelta(minutes=1), max_node_entries=50
        ),
        **inputs,
    )
    assert crd_validation.validate({**body({"image": "trace_exec"}), "status": again}) == []


def test_a_status_at_fleet_scale_is_capped_and_admitted() -> None:
    states = list(status.NodeState)
    outcomes = {
        f"node-{i:04}": status.NodeOutcome(
            f"node-{i:04}",
            states[i % len(states)],
            instance_id=identity.instance_id("uid-1", f"node-{i:04}", "0123456789abcdef"),
            message="daemon said: " + "x" * 500,
        )
        for i in range(3000)
    }
    observed = status.Observed(generation=7, previous={}, now=_NOW, max_node_entries=StatusSettings().max_node_entries)
    rendered = status.compute_status(observed, desired_nodes=list(outcomes), outcomes=outcomes)
    assert rendered["nodesOmitted"] == 3000 - len(rendered["nodes"])
    assert crd_validation.validate({**body({"image": "trace_exec"}), "status": rendered}) == []


def test_a_malformed_status_is_refused() -> None:
    condition = {"type": "Ready", "status": "True", "reason": "AllNodesRunning", "message": ""}
    bad = {
        "phase": "Done",
        "conditions": [
            {**condition, "lastTransitionTime": "yesterday"},
            {**condition, "lastTransitionTime": "2026-05-01T12:00:00Z"},
        ],
        "nodes": [{"node": "a", "state": "Running"}, {"node": "a", "state": "Failed"}, {"state": "Pending"}],
        "desiredNodes": -1,
    }
    errors = "\n".join(crd_validation.validate({**body({"image": "x"}), "status": bad}))
    for fragment in (
        'status.phase: Unsupported value: "Done"',
        "status.conditions[0].lastTransitionTime: Invalid value",
        'status.conditions[1]: Duplicate value: {"type": "Ready"}',
        'status.nodes[1]: Duplicate value: {"node": "a"}',
        "status.nodes[2].node: Required value",
        "status.desiredNodes: Invalid value: -1",
    ):
        assert fragment in errors


# -- the evaluator itself ------------------------------------------------------------------------------


def test_rules_are_evaluated_where_they_sit_with_self_bound_there() -> None:
    crd = crd_validation.load_crd()
    schema = crd_validation.openapi_schema(crd)
    spec = schema["properties"]["spec"]
    spec["x-kubernetes-validations"] = [{"rule": "self.image != 'forbidden'", "message": "spec-level"}]
    spec["properties"]["params"]["additionalProperties"]["x-kubernetes-validations"] = [
        {"rule": "self != 'x'", "message": "value-level"}
    ]
    errors = crd_validation.validate(body({"image": "forbidden", "params": {"a": "x", "b": "y"}}), crd)
    assert errors == [
        'spec.params.a: Invalid value: "string": value-level',
        'spec: Invalid value: "object": spec-level',
    ]


def test_celpy_speaks_the_kubernetes_cel_the_rules_use() -> None:
    cases = {
        "self.all(k, size(k) > 0)": ({"a": "1"}, True),
        "self.exists(x, x == 'b')": (["a", "b"], True),
        "has(self.values) && size(self.values) > 0": ({"key": "k"}, False),
        "self.operator in ['In', 'NotIn']": ({"operator": "NotIn"}, True),
        "!self.startsWith('gadget-operator.io/') && !self.contains(',')": ("a,b", False),
        "self.matches('^[a-z]+$')": ("abc\n", False),  # RE2: $ is the end of the text
    }
    for rule, (value, expected) in cases.items():
        assert crd_validation.evaluate_rule(rule, value) is expected, rule
    with pytest.raises(celpy.CELParseError):
        crd_validation.compile_rule("self.all(k,")


def test_every_rule_fires_for_some_invalid_example() -> None:
    """No dead rule: each CEL message in the CRD is produced by at least one invalid example."""
    produced = [error for path in INVALID for error in crd_validation.validate(load(path))]
    for path, node in schema_nodes(SPEC, "spec"):
        for rule in node.get("x-kubernetes-validations") or ():
            assert any(rule["message"] in error for error in produced), (
                f"{path}: no invalid example for {rule['rule']!r}"
            )
