"""Instance IDs and names follow Inspektor Gadget's rules and are stable across processes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gadget_operator import identity, resource
from gadget_operator.errors import InvalidInstanceError


@given(uid=st.uuids().map(str), node=st.text(min_size=1, max_size=63), digest=st.text(min_size=1, max_size=16))
def test_derived_ids_are_32_lowercase_hex_and_deterministic(uid: str, node: str, digest: str) -> None:
    first = identity.instance_id(uid, node, digest)
    assert identity.ID_PATTERN.fullmatch(first)
    assert identity.instance_id(uid, node, digest) == first


def test_ids_differ_per_node_and_per_spec() -> None:
    ids = {
        identity.instance_id("uid-1", "node-a", "spec-1"),
        identity.instance_id("uid-1", "node-b", "spec-1"),
        identity.instance_id("uid-1", "node-a", "spec-2"),
        identity.instance_id("uid-2", "node-a", "spec-1"),
    }
    assert len(ids) == 4


@given(name=st.text(max_size=300))
def test_names_always_follow_the_daemon_name_rule(name: str) -> None:
    derived = identity.instance_id("uid", "node", "spec")
    made = identity.instance_name(name, derived)
    assert identity.NAME_PATTERN.fullmatch(made)
    assert made.endswith(derived[: identity.NAME_ID_CHARS])


def test_names_keep_a_readable_prefix_of_the_resource_name() -> None:
    derived = identity.instance_id("uid", "node", "spec")
    assert identity.instance_name("Trace.Exec", derived) == f"trace-exec-{derived[:16]}"


@pytest.mark.parametrize("bad", ["", "ABCDEF0123456789ABCDEF0123456789", "0" * 31, "0" * 33, "g" * 32])
def test_invalid_ids_are_rejected_with_the_daemon_message(bad: str) -> None:
    with pytest.raises(InvalidInstanceError, match="invalid gadget instance id"):
        identity.validate_instance_id(bad)


@pytest.mark.parametrize("bad", ["", "a" * 33, "Upper", "dot.ted", "spa ce"])
def test_invalid_names_are_rejected(bad: str) -> None:
    with pytest.raises(InvalidInstanceError, match="invalid gadget instance name"):
        identity.validate_instance_name(bad)


def test_ownership_round_trips_through_tags_and_ignores_foreign_tags() -> None:
    owner = identity.Ownership(resource_uid="u", resource="ns/name", node="n", spec_hash="h")
    tags = ("team=a", *identity.ownership_tags(owner), "other")
    assert identity.parse_ownership(tags) == owner
    assert identity.parse_ownership(("team=a", "gadget-operator.io/node=n")) is None


_DNS_LABEL = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True)
_DNS_NAME = st.lists(_DNS_LABEL, min_size=1, max_size=4).map(".".join)


@given(namespace=st.one_of(st.just(""), _DNS_LABEL), name=_DNS_NAME)
def test_the_owner_key_of_either_kind_survives_igs_shared_store_and_names_its_kind(namespace: str, name: str) -> None:
    """The tags go comma-joined into one ConfigMap annotation in IG's shared store; the resource key
    read back names the kind to look the owner up as (a ClusterGadgetInstance's key is its name)."""
    kind = resource.GADGET_INSTANCE if namespace else resource.CLUSTER_GADGET_INSTANCE
    owner = identity.Ownership("6a7c0000-0000-4000-8000-000000000001", kind.key(namespace, name), "node-1", "0" * 16)
    tags = identity.ownership_tags(owner)
    stored = ",".join(tags)
    assert identity.parse_ownership(stored.split(",")) == owner
    assert resource.locate(owner.resource) == (kind, namespace, name)
    assert identity.NAME_PATTERN.fullmatch(identity.instance_name(name, "f" * 32))
