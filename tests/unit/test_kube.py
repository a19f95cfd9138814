"""The operator's own API calls address both kinds right: a ClusterGadgetInstance at the cluster scope.

Run through ``kube.KubeApi`` against the API emulator (which serves the shipped CRDs and answers 404
for a cluster-scoped resource under a namespace, as a real server does), so a wrong path fails here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gadget_operator import kube, resource
from gadget_operator.resource import GadgetInstanceResource
from gadget_operator.testing.kube_emulator import KubeEmulator

CRDS = Path(__file__).resolve().parents[2] / "crds"
GI, CGI = resource.GADGET_INSTANCE, resource.CLUSTER_GADGET_INSTANCE


@pytest.fixture
async def world() -> AsyncIterator[tuple[KubeEmulator, kube.KubeApi]]:
    emulator = KubeEmulator()
    for path in sorted(CRDS.glob("*.yaml")):
        emulator.register_crd(yaml.safe_load(path.read_text()))
    url = await emulator.start()
    api = await kube.KubeApi.connect(url)
    try:
        yield emulator, api
    finally:
        await api.close()
        await emulator.stop()


def put(emulator: KubeEmulator, kind: resource.Kind, name: str) -> dict[str, Any]:
    metadata = {"name": name} | ({"namespace": "team-a"} if kind.namespaced else {})
    return emulator.put(
        {"apiVersion": kind.api_version, "kind": kind.kind, "metadata": metadata, "spec": {"image": "trace_exec"}}
    )


@pytest.mark.parametrize("kind", resource.KINDS, ids=lambda k: k.kind)
async def test_get_status_finalizers_and_list_reach_the_object_of_either_kind(
    world: tuple[KubeEmulator, kube.KubeApi], kind: resource.Kind
) -> None:
    emulator, api = world
    put(emulator, kind, "trace")
    namespace = "team-a" if kind.namespaced else ""

    body = await api.get_gadget_instance(namespace, "trace", kind=kind)
    assert body is not None
    gi = GadgetInstanceResource.from_body(body)
    assert (gi.kind, gi.key) == (kind, kind.key(namespace, "trace"))
    assert await api.get_gadget_instance(namespace, "other", kind=kind) is None

    await api.add_finalizer(gi)
    gi = GadgetInstanceResource.from_body(emulator.get(kind.api_version, kind.plural, "trace", namespace or None) or {})
    assert gi.finalizers == (resource.FINALIZER,)

    written = await api.patch_status(namespace, "trace", {"phase": "Running"}, kind=kind)
    assert written["status"] == {"phase": "Running"}
    assert GadgetInstanceResource.from_body(written).kind == kind  # the reply is parsed as the same kind

    listed = await api.list_gadget_instances(None, kind=kind)
    assert [(item["kind"], item["metadata"]["name"]) for item in listed] == [(kind.kind, "trace")]

    emulator.delete(kind.api_version, kind.plural, "trace", namespace or None)
    with pytest.raises(kube.KubeApiError) as stale:  # read before the status write and the deletion
        await api.remove_finalizer(gi)
    assert stale.value.status == 409
    gi = GadgetInstanceResource.from_body(emulator.get(kind.api_version, kind.plural, "trace", namespace or None) or {})
    await api.remove_finalizer(gi)
    assert emulator.get(kind.api_version, kind.plural, "trace", namespace or None) is None


async def test_a_finalizer_change_on_a_stale_copy_conflicts_and_keeps_anothers_finalizer(
    world: tuple[KubeEmulator, kube.KubeApi],
) -> None:
    """Another controller adds its finalizer after we read the object: ours is not added over it."""
    emulator, api = world
    gi = GadgetInstanceResource.from_body(put(emulator, GI, "trace"))
    current = emulator.get(GI.api_version, GI.plural, "trace", "team-a") or {}
    emulator.put(current | {"metadata": current["metadata"] | {"finalizers": ["example.com/other"]}})
    with pytest.raises(kube.KubeApiError) as conflict:
        await api.add_finalizer(gi)
    assert conflict.value.status == 409
    fresh = GadgetInstanceResource.from_body(emulator.get(GI.api_version, GI.plural, "trace", "team-a") or {})
    await api.add_finalizer(fresh)
    assert fresh.finalizers == ("example.com/other",)
    after = GadgetInstanceResource.from_body(emulator.get(GI.api_version, GI.plural, "trace", "team-a") or {})
    assert after.finalizers == ("example.com/other", resource.FINALIZER)


async def test_an_event_about_a_cluster_gadget_instance_goes_to_default_without_a_namespace(
    world: tuple[KubeEmulator, kube.KubeApi],
) -> None:
    emulator, api = world
    gi = GadgetInstanceResource.from_body(put(emulator, CGI, "trace-all"))
    namespaced = GadgetInstanceResource.from_body(put(emulator, GI, "trace"))

    await api.post_event(gi, warning=False, reason="Running", message="Running on 3 of 3 nodes")
    await api.post_event(namespaced, warning=True, reason="Failed", message="no")

    (event,) = emulator.list_objects("v1", "events", "default")
    assert event["involvedObject"] == {
        "apiVersion": "gadget-operator.io/v1alpha1",
        "kind": "ClusterGadgetInstance",
        "name": "trace-all",
        "uid": gi.uid,
    }
    (other,) = emulator.list_objects("v1", "events", "team-a")
    assert other["involvedObject"]["namespace"] == "team-a"
    assert other["involvedObject"]["kind"] == "GadgetInstance"
