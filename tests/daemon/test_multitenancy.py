"""IG's experimental namespace multi-tenancy (branch ``flyth/multitenancy``) in the simulated daemons.

The policy is tested as pure functions with the cases of IG's ``policy_test.go`` and
``tokenreview_test.go`` and more; the gRPC path with raw stubs that send ``authorization: Bearer`` to
fleets of both stores, whose daemons review the tokens (minted by TokenRequest) and ask RBAC through
the API emulator, as IG's DaemonSet asks its API server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from kubernetes.aio import client as kclient

from gadget_operator.daemon import model
from gadget_operator.daemon.pb import api_pb2, api_pb2_grpc
from gadget_operator.simulator.configmap_store import ConfigMapStore
from gadget_operator.simulator.multitenancy import (
    AUDIENCE,
    MultiTenancy,
    PolicyError,
    authorize_param_values,
    enforce_policy_scope,
    extract_bearer,
    visible,
)
from gadget_operator.simulator.server import Fleet
from gadget_operator.simulator.state import RunTiming
from gadget_operator.testing.kube_emulator import KubeEmulator
from tests.daemon.conftest import GADGET_NAMESPACE, OTHER_ID, VALID_ID, create_request, wait_for

NS = "operator.KubeManager.namespace"
K8S_NS = "operator.KubeManager.k8s-namespace"
ALL = "operator.KubeManager.all-namespaces"
POLICY = "operator.KubeManager.multi-tenancy-policy"
RBAC = "rbac.authorization.k8s.io"
NO_ISOLATION_STATE = (
    'initializing and preparing operators: instantiating operator "KubeManager": '
    "rpc error: code = PermissionDenied desc = gadget does not support Kubernetes namespace isolation"
)
NOT_AUTHORIZED = (grpc.StatusCode.PERMISSION_DENIED, "requested Kubernetes namespace is not authorized")
NO_NAMESPACES = (grpc.StatusCode.PERMISSION_DENIED, "no Kubernetes namespaces are authorized for this request")
UNAUTHENTICATED = (grpc.StatusCode.UNAUTHENTICATED, "token was not authenticated")


# -- the policy, as pure functions (IG's policy_test.go first) ---------------------------------------------------


def refusal(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(PolicyError) as raised:
        call()
    return raised.value.code, raised.value.message


@pytest.mark.parametrize(
    ("allowed", "values", "stored_namespace"),
    [
        # IG's cases
        (("team-a", "team-b"), {ALL: "true"}, "team-a,team-b"),  # all namespaces becomes the allowed ones
        (("team-a", "team-b"), {NS: "team-b,team-a"}, "team-b,team-a"),  # an allowed list is kept as asked
        # more
        (("default",), {}, "default"),  # no namespace means "default"
        (("team-a",), {K8S_NS: "team-a"}, "team-a"),  # the alternative key counts and is dropped
        (("team-a",), {NS: "team-a", K8S_NS: "team-b"}, "team-a"),  # the main key wins
        (("team-a", "team-b"), {NS: " team-a , team-b "}, "team-a,team-b"),  # entries are trimmed
        (("team-a",), {ALL: "TRUE", NS: "team-b"}, "team-a"),  # all-namespaces (any case) wins over a list
        (("team-a",), {ALL: "false", NS: "team-a"}, "team-a"),
    ],
)
def test_create_narrows_the_kube_manager_params_to_the_allowed_namespaces(
    allowed: tuple[str, ...], values: dict[str, str], stored_namespace: str
) -> None:
    stored = enforce_policy_scope(allowed, values | {"operator.filter.filter": "pid>1"})

    assert stored == {
        NS: stored_namespace,
        ALL: "false",
        POLICY: "true",
        "operator.filter.filter": "pid>1",
    }


@pytest.mark.parametrize(
    ("allowed", "values", "refused"),
    [
        # IG's cases
        (("team-a",), {NS: "team-b"}, NOT_AUTHORIZED),
        (
            ("team-a",),
            {NS: "!team-b"},
            (
                grpc.StatusCode.INVALID_ARGUMENT,
                'namespace exclusions are not supported in multi-tenancy mode: "!team-b"',
            ),
        ),
        # more
        (("team-a",), {NS: "team-a,team-b"}, NOT_AUTHORIZED),  # every namespace must be allowed
        (("team-b",), {}, NOT_AUTHORIZED),  # "default" is not
        ((), {NS: "team-a"}, NO_NAMESPACES),
        ((), {ALL: "true"}, NO_NAMESPACES),
        (("team-a",), {NS: "team-a,"}, (grpc.StatusCode.INVALID_ARGUMENT, 'invalid namespace filter "team-a,"')),
        (
            ("team-a",),
            {K8S_NS: "!x"},
            (grpc.StatusCode.INVALID_ARGUMENT, 'namespace exclusions are not supported in multi-tenancy mode: "!x"'),
        ),
    ],
)
def test_create_refuses_namespaces_outside_the_scope_and_exclusions(
    allowed: tuple[str, ...], values: dict[str, str], refused: tuple[grpc.StatusCode, str]
) -> None:
    before = dict(values)

    assert refusal(lambda: enforce_policy_scope(allowed, values)) == refused
    assert values == before


def test_without_multi_tenancy_the_params_are_kept_as_they_are() -> None:
    values = {NS: "!team-b", ALL: "true"}

    assert enforce_policy_scope(None, values) == values
    authorize_param_values(None, values)
    assert visible(None, values)


def test_stored_instances_are_authorized_by_their_params_without_naming_the_namespace() -> None:
    stored = {NS: "team-a"}

    authorize_param_values(("team-a",), stored)
    code, message = refusal(lambda: authorize_param_values(("team-b",), stored))
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert "team-a" not in message
    assert refusal(lambda: authorize_param_values(("team-a",), {ALL: "true"})) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "all-namespaces gadget instances are not allowed in multi-tenancy mode",
    )
    assert visible(("default",), {})  # an instance stored without a namespace is "default"'s
    assert not visible(("team-a",), {NS: "!team-b"})  # whatever the refusal, List hides it


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer token", "token"),  # IG's cases
        ("bEaReR token", "token"),
        ("Basic token", ""),
        ("Bearer ", ""),
        ("Bearer", ""),  # more
        ("Bearer a b", "a b"),
    ],
)
def test_the_bearer_token_is_taken_as_ig_takes_it(header: str, token: str) -> None:
    assert extract_bearer([("authorization", header)]) == token


def test_the_first_bearer_value_counts() -> None:
    assert extract_bearer([("x", "Bearer no"), ("authorization", "Basic x"), ("authorization", "Bearer yes")]) == "yes"


def test_the_scope_is_configured_as_igs() -> None:
    custom = MultiTenancy(group="gadget.kinvolk.io", resource="traces", verb="get")
    defaulted = MultiTenancy(group="ignored", resource="", verb="ignored")  # no resource: IG's whole default

    assert (custom.group, custom.resource, custom.verb) == ("gadget.kinvolk.io", "traces", "get")
    assert (defaulted.group, defaulted.resource, defaulted.verb) == ("", "pods", "create")
    with pytest.raises(ValueError, match="multi-tenancy scope verb cannot be empty"):
        MultiTenancy(verb="")


async def test_a_fleet_needs_a_kubernetes_client_for_multi_tenancy(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multi-tenancy enabled but no Kubernetes client provided"):
        Fleet(tmp_path, multi_tenancy=MultiTenancy())


# -- the gRPC path, on the API emulator ------------------------------------------------------------------------

INSTANT = RunTiming(init_delay=0)


def role_and_binding(namespace: str, account_namespace: str, rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A Role in ``namespace`` with ``rules``, bound to ServiceAccount ``account_namespace/ig-client``."""
    name = f"ig-client-{account_namespace}"
    meta = {"name": name, "namespace": namespace}
    subject = {"kind": "ServiceAccount", "name": "ig-client", "namespace": account_namespace}
    return [
        {"apiVersion": f"{RBAC}/v1", "kind": "Role", "metadata": meta, "rules": rules},
        {
            "apiVersion": f"{RBAC}/v1",
            "kind": "RoleBinding",
            "metadata": meta,
            "roleRef": {"apiGroup": RBAC, "kind": "Role", "name": name},
            "subjects": [subject],
        },
    ]


POD_CREATOR = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}]


def service_account(namespace: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "ig-client", "namespace": namespace}}


class Caller:
    """Raw stubs to one node that send one caller's token (or none) with every call."""

    def __init__(self, channel: grpc.aio.Channel, token: str | None) -> None:
        self.metadata = () if token is None else (("authorization", f"Bearer {token}"),)
        self.instances = api_pb2_grpc.GadgetInstanceManagerStub(channel)
        self.gadgets = api_pb2_grpc.GadgetManagerStub(channel)

    async def create(self, **fields: Any) -> api_pb2.CreateGadgetInstanceResponse:
        return await self.instances.CreateGadgetInstance(create_request(**fields), metadata=self.metadata)

    async def list(self) -> list[api_pb2.GadgetInstance]:
        request = api_pb2.ListGadgetInstancesRequest()
        return list((await self.instances.ListGadgetInstances(request, metadata=self.metadata)).gadgetInstances)

    async def get(self, instance_id: str) -> api_pb2.GadgetInstance:
        return await self.instances.GetGadgetInstance(api_pb2.GadgetInstanceId(id=instance_id), metadata=self.metadata)

    async def remove(self, instance_id: str) -> api_pb2.StatusResponse:
        request = api_pb2.GadgetInstanceId(id=instance_id)
        return await self.instances.RemoveGadgetInstance(request, metadata=self.metadata)

    async def info(self, image: str, *, params: dict[str, str] | None = None, flags: int = 0) -> api_pb2.GadgetInfo:
        request = api_pb2.GetGadgetInfoRequest(imageName=image, paramValues=params or {}, flags=flags, version=1)
        return (await self.gadgets.GetGadgetInfo(request, metadata=self.metadata, timeout=2.0)).gadgetInfo

    async def attach(self, instance_id: str) -> list[api_pb2.GadgetEvent]:
        control = api_pb2.GadgetControlRequest(attachRequest=api_pb2.GadgetAttachRequest(id=instance_id, version=1))
        call = self.gadgets.RunGadget(iter([control]), metadata=self.metadata, timeout=2.0)
        return [event async for event in call]


@dataclass
class World:
    emulator: KubeEmulator
    api: kclient.ApiClient
    fleet: Fleet
    multi_tenancy: MultiTenancy
    store: str
    channels: list[grpc.aio.Channel]

    @property
    def shared(self) -> bool:
        return self.store == "shared"

    async def token(self, namespace: str, name: str = "ig-client", audiences: list[str] | None = None) -> str:
        """A token minted by TokenRequest, as ``kubectl gadget --auth-service-account`` mints it."""
        spec = {"audiences": [AUDIENCE] if audiences is None else audiences, "expirationSeconds": 3600}
        body: Any = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        core = kclient.CoreV1Api(self.api)
        return str((await core.create_namespaced_service_account_token(name, namespace, body)).status.token)

    def caller(self, token: str | None, node: str = "node-1") -> Caller:
        channel = grpc.aio.insecure_channel(self.fleet[node].address.removeprefix("tcp://"))
        self.channels.append(channel)
        return Caller(channel, token)

    async def tenant(self, namespace: str, node: str = "node-1") -> Caller:
        """ServiceAccount ``namespace/ig-client``, calling ``node``."""
        return self.caller(await self.token(namespace), node)

    async def runs(self, instance_id: str, node: str = "node-1") -> model.GadgetInstance:
        """The node's run of ``instance_id`` once it has one (the shared store's worker starts it a moment later)."""
        run: model.GadgetInstance = await wait_for(
            lambda: self.fleet[node].running().get(instance_id), what=f"{node} runs {instance_id}"
        )
        return run


@pytest.fixture(params=["per-node", "shared"])
async def world(request: pytest.FixtureRequest, short_dir: Path) -> AsyncIterator[World]:
    """team-a's and team-b's ServiceAccount ``ig-client`` may create pods in their own namespace, team-a's
    in team-c too; ``nobody/ig-client`` has no rights. The fleet's daemons run IG's multi-tenancy."""
    emulator = KubeEmulator()
    for namespace in ("team-a", "team-b", "team-c", "nobody", GADGET_NAMESPACE):
        emulator.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    for namespace in ("team-a", "team-b", "nobody"):
        emulator.put(service_account(namespace))
    for namespace, account in (("team-a", "team-a"), ("team-b", "team-b"), ("team-c", "team-a")):
        for obj in role_and_binding(namespace, account, POD_CREATOR):
            emulator.put(obj)
    url = await emulator.start()
    api = kclient.ApiClient(kclient.Configuration(host=url))
    store: str = request.param
    multi_tenancy = MultiTenancy() if store == "shared" else MultiTenancy(api)
    shared_store = ConfigMapStore(api, GADGET_NAMESPACE) if store == "shared" else None
    fleet = Fleet(
        short_dir,
        transport="tcp",
        timing=INSTANT,
        unknown_images=["broken_gadget"],
        shared_store=shared_store,
        multi_tenancy=multi_tenancy,
    )
    await fleet.start(2)
    world = World(emulator, api, fleet, multi_tenancy, store, [])
    try:
        yield world
    finally:
        for channel in world.channels:
            await channel.close()
        await fleet.stop()
        await api.close()
        await emulator.stop()


async def refused(call: Awaitable[object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value.code(), raised.value.details() or ""


def reviews(emulator: KubeEmulator) -> list[str]:
    return [r.resource or "" for r in emulator.requests if r.resource in ("tokenreviews", "subjectaccessreviews")]


async def test_a_call_without_a_token_is_unauthenticated_before_the_api_is_asked(world: World) -> None:
    anonymous = world.caller(None)

    assert await refused(anonymous.list()) == (grpc.StatusCode.UNAUTHENTICATED, "missing bearer token")
    assert await refused(anonymous.create(params={NS: "team-a"})) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "missing bearer token",
    )
    assert await refused(anonymous.attach(VALID_ID)) == (grpc.StatusCode.UNAUTHENTICATED, "missing bearer token")
    node = world.fleet["node-1"]
    assert node.refused == {"ListGadgetInstances": 1, "CreateGadgetInstance": 1, "RunGadget": 1}
    assert node.calls == node.refused
    assert reviews(world.emulator) == []
    assert node.running() == {}


async def test_a_token_for_the_api_server_is_not_accepted(world: World) -> None:
    api_token = await world.token("team-a", audiences=[])  # the API server's own audience: not replayable here

    assert await refused(world.caller(api_token).list()) == UNAUTHENTICATED
    assert await refused(world.caller("forged").list()) == UNAUTHENTICATED
    assert world.fleet["node-1"].refused == {"ListGadgetInstances": 2}
    assert world.multi_tenancy.access_reviews == 0  # nothing is asked of RBAC for an unknown caller


async def test_an_expired_token_or_one_of_a_deleted_account_is_not_accepted(world: World) -> None:
    token = await world.token("team-a")
    caller = world.caller(token)
    assert await caller.list() == []

    now = world.emulator.clock()
    world.emulator.clock = lambda: now + 3600 + 61
    assert await refused(caller.list()) == UNAUTHENTICATED
    world.emulator.clock = lambda: now
    await kclient.CoreV1Api(world.api).delete_namespaced_service_account("ig-client", "team-a")
    assert await refused(caller.list()) == UNAUTHENTICATED


async def test_an_allowed_namespace_runs_and_is_stored_narrowed(world: World) -> None:
    team_a = await world.tenant("team-a")

    response = await team_a.create(params={NS: "team-a", "operator.filter.filter": "pid>1"})

    narrowed = {NS: "team-a", ALL: "false", POLICY: "true", "operator.filter.filter": "pid>1"}
    assert dict(response.gadgetInstance.gadgetConfig.paramValues) == narrowed  # IG answers with the rewritten request
    run = await world.runs(VALID_ID)
    assert run.params == narrowed
    assert run.status is model.InstanceStatus.RUNNING
    (listed,) = await team_a.list()
    assert dict(listed.gadgetConfig.paramValues) == narrowed
    assert (await team_a.get(VALID_ID)).id == VALID_ID
    if world.shared:
        configmap = world.emulator.get("v1", "configmaps", VALID_ID, GADGET_NAMESPACE)
        assert configmap is not None
        assert configmap["data"] == narrowed
    assert world.fleet["node-1"].refused == {}
    assert world.fleet["node-1"].denied == {}


async def test_another_namespace_is_refused_and_nothing_is_stored(world: World) -> None:
    team_a = await world.tenant("team-a")

    assert await refused(team_a.create(params={NS: "team-b"})) == NOT_AUTHORIZED
    assert await refused(team_a.create(params={NS: "team-a,team-b"})) == NOT_AUTHORIZED
    assert await refused(team_a.create()) == NOT_AUTHORIZED  # no namespace: "default", not team-a's
    # The policy comes before IG's own checks of the request.
    assert await refused(team_a.create(instance_id="not-an-id", params={NS: "team-b"})) == NOT_AUTHORIZED

    assert world.fleet["node-1"].denied == {"CreateGadgetInstance": 4}
    assert await team_a.list() == []
    assert world.emulator.list_objects("v1", "configmaps", GADGET_NAMESPACE) == []


async def test_a_service_account_without_rights_may_do_nothing_but_read_gadget_images(world: World) -> None:
    nobody = await world.tenant("nobody")

    assert await refused(nobody.create(params={NS: "nobody"})) == NO_NAMESPACES
    assert await refused(nobody.create(params={ALL: "true"})) == NO_NAMESPACES
    assert await nobody.list() == []
    info = await nobody.info("trace_exec")  # image metadata is not confined to namespaces
    assert "operator.KubeManager.namespace" in {p.prefix + p.key for p in info.params}


async def test_all_namespaces_is_narrowed_to_the_callers_namespaces(world: World) -> None:
    team_a = await world.tenant("team-a")

    response = await team_a.create(params={ALL: "true"})

    assert response.gadgetInstance.gadgetConfig.paramValues[NS] == "team-a,team-c"
    assert response.gadgetInstance.gadgetConfig.paramValues[ALL] == "false"
    assert (await world.runs(VALID_ID)).params[NS] == "team-a,team-c"


async def test_an_exclusion_is_refused_as_an_invalid_argument(world: World) -> None:
    team_a = await world.tenant("team-a")

    assert await refused(team_a.create(params={NS: "!team-b"})) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        'namespace exclusions are not supported in multi-tenancy mode: "!team-b"',
    )


async def test_list_shows_each_tenant_only_its_own_instances(world: World) -> None:
    team_a, team_b = await world.tenant("team-a"), await world.tenant("team-b")
    await team_a.create(instance_id=VALID_ID, name="a-trace", params={NS: "team-a"})
    await team_b.create(instance_id=OTHER_ID, name="b-trace", params={NS: "team-b"})
    await world.runs(VALID_ID)
    await world.runs(OTHER_ID)

    assert [i.name for i in await team_a.list()] == ["a-trace"]
    assert [i.name for i in await team_b.list()] == ["b-trace"]


async def test_another_tenants_instance_cannot_be_read_removed_or_attached(world: World) -> None:
    team_a, team_b = await world.tenant("team-a"), await world.tenant("team-b")
    await team_a.create(params={NS: "team-a"})
    await world.runs(VALID_ID)

    assert await refused(team_b.get(VALID_ID)) == NOT_AUTHORIZED
    assert await refused(team_b.remove(VALID_ID)) == NOT_AUTHORIZED
    assert await refused(team_b.info(VALID_ID, flags=1)) == NOT_AUTHORIZED
    assert await refused(team_b.attach(VALID_ID)) == NOT_AUTHORIZED
    assert world.fleet["node-1"].denied == {
        "GetGadgetInstance": 1,
        "RemoveGadgetInstance": 1,
        "GetGadgetInfo": 1,
        "RunGadget": 1,
    }
    assert VALID_ID in world.fleet["node-1"].running()
    assert (await team_a.info(VALID_ID, flags=1)).id == VALID_ID  # its owner's attach goes on
    assert (await team_a.remove(VALID_ID)).result == 0


async def test_remove_looks_the_instance_up_first_so_an_unknown_one_is_an_error(world: World) -> None:
    team_a = await world.tenant("team-a")

    code, message = await refused(team_a.remove(VALID_ID))

    assert code is grpc.StatusCode.UNKNOWN  # not IG's usual result 1: the branch gets the instance first
    expected = (
        "getting gadget instance from store: not found"
        if world.shared
        else "getting gadget instance from store: loading gadget: gadget instance not found at "
        f'"/var/lib/ig/gadgets/{VALID_ID}.gadget"'
    )
    assert message == expected


async def test_a_gadget_without_kube_manager_isolation_is_created_then_fails_with_igs_message(world: World) -> None:
    team_a = await world.tenant("team-a")

    await team_a.create(image="profile_blockio", params={NS: "team-a"})

    run = await world.runs(VALID_ID)
    assert (run.status, run.message) == (model.InstanceStatus.ERROR, NO_ISOLATION_STATE)
    (listed,) = await team_a.list()
    assert (listed.state.status, listed.state.message) == (api_pb2.StatusError, NO_ISOLATION_STATE)
    assert not world.fleet["node-1"].initialized(VALID_ID)
    # It never initialized, so the attach's info never comes: the caller's deadline ends the wait.
    assert (await refused(team_a.info(VALID_ID, flags=1)))[0] is grpc.StatusCode.DEADLINE_EXCEEDED
    # A dry run with the stored params fails the same way, with the code IG's wrapped error keeps.
    assert await refused(team_a.info("profile_blockio", params=dict(listed.gadgetConfig.paramValues))) == (
        grpc.StatusCode.PERMISSION_DENIED,
        f"getting gadget info: {NO_ISOLATION_STATE}",
    )


async def test_every_call_reviews_the_token_and_asks_rbac_once_per_namespace(world: World) -> None:
    team_a = await world.tenant("team-a")
    namespaces = len(world.emulator.list_objects("v1", "namespaces"))
    before = len(reviews(world.emulator))

    await team_a.list()
    await team_a.list()

    assert reviews(world.emulator)[before:] == (["tokenreviews"] + ["subjectaccessreviews"] * namespaces) * 2
    assert world.multi_tenancy.namespace_lists == 2


async def test_a_revoked_permission_takes_effect_on_the_next_call(world: World) -> None:
    team_a = await world.tenant("team-a")
    await team_a.create(params={NS: "team-a"})
    assert len(await team_a.list()) == 1

    await kclient.RbacAuthorizationV1Api(world.api).delete_namespaced_role_binding("ig-client-team-a", "team-a")

    assert await team_a.list() == []
    assert await refused(team_a.get(VALID_ID)) == NOT_AUTHORIZED


async def test_an_api_server_that_fails_the_reviews_fails_the_call_closed(world: World) -> None:
    team_a = await world.tenant("team-a")
    world.emulator.deny("create", "tokenreviews")

    token_review = await refused(team_a.list())
    world.emulator.allow("create", "tokenreviews")
    world.emulator.deny("create", "subjectaccessreviews")
    access_review = await refused(team_a.list())

    assert token_review == (
        grpc.StatusCode.UNAVAILABLE,
        'token review failed: tokenreviews.authentication.k8s.io is forbidden: User "system:anonymous" cannot '
        'create resource "tokenreviews" in API group "authentication.k8s.io" at the cluster scope',
    )
    assert access_review == (
        grpc.StatusCode.UNAVAILABLE,
        'resolving namespace access: reviewing namespace "default": subjectaccessreviews.authorization.k8s.io is '
        'forbidden: User "system:anonymous" cannot create resource "subjectaccessreviews" in API group '
        '"authorization.k8s.io" at the cluster scope',
    )
    assert world.fleet["node-1"].refused == {"ListGadgetInstances": 2}


async def test_a_missing_gadget_configuration_is_refused_under_multi_tenancy(world: World) -> None:
    team_a = await world.tenant("team-a")
    bare = api_pb2.CreateGadgetInstanceRequest(gadgetInstance=api_pb2.GadgetInstance(id=VALID_ID, name="x"))

    code, message = await refused(team_a.instances.CreateGadgetInstance(bare, metadata=team_a.metadata))

    assert (code, message) == (grpc.StatusCode.UNKNOWN, "missing gadget instance configuration")


async def test_an_instance_hidden_from_the_caller_no_longer_breaks_its_list_on_a_node_that_does_not_run_it(
    world: World,
) -> None:
    if not world.shared:
        pytest.skip("IG's List bug is a shared-store bug")
    team_a, team_b = await world.tenant("team-a"), await world.tenant("team-b")
    await team_b.create(instance_id=OTHER_ID, name="pinned", params={NS: "team-b"}, nodes=("node-2",))
    await world.runs(OTHER_ID, "node-2")
    node_1_cache = world.fleet["node-1"].state.cache  # type: ignore[attr-defined]
    await wait_for(lambda: OTHER_ID in node_1_cache, what="node-1's informer has team-b's instance")

    assert await team_a.list() == []  # skipped before its state is asked for
    assert await refused(team_b.list()) == (  # its owner still hits IG's bug on node-1
        grpc.StatusCode.UNKNOWN,
        f'getting instance status for "{OTHER_ID}": gadget not found',
    )


async def test_the_scope_asked_of_rbac_is_configurable(short_dir: Path) -> None:
    emulator = KubeEmulator()
    for namespace in ("team-a", "team-b"):
        emulator.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    emulator.put(service_account("team-a"))
    traces = [{"apiGroups": ["gadget.kinvolk.io"], "resources": ["traces"], "verbs": ["get"]}]
    for obj in role_and_binding("team-b", "team-a", traces) + role_and_binding("team-a", "team-a", POD_CREATOR):
        emulator.put(obj)
    url = await emulator.start()
    async with kclient.ApiClient(kclient.Configuration(host=url)) as api:
        fleet = Fleet(
            short_dir,
            transport="tcp",
            stored=False,
            timing=INSTANT,
            multi_tenancy=MultiTenancy(api, group="gadget.kinvolk.io", resource="traces", verb="get"),
        )
        await fleet.start(1)
        token = emulator.issue_token("team-a", "ig-client", audiences=(AUDIENCE,))
        async with grpc.aio.insecure_channel(fleet["node-1"].address.removeprefix("tcp://")) as channel:
            caller = Caller(channel, token)
            created = await caller.create(params={ALL: "true"})
            assert created.gadgetInstance.gadgetConfig.paramValues[NS] == "team-b"
        await fleet.stop()
    await emulator.stop()
