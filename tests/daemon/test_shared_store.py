"""IG's DaemonSet mode: one ConfigMap store on the API server, every daemon runs what names its node.

The store is the project's API emulator, reached through the official Kubernetes client; each daemon
has its own informer cache and worker (``informer_lag``, ``worker_delay``) and its own local manager.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import grpc
import grpc.aio
import pytest

from gadget_operator.simulator.configmap_store import SharedStoreDaemon, instance_to_configmap
from gadget_operator.simulator.server import Fleet, SimulatedNode
from gadget_operator.simulator.state import RunTiming
from tests.daemon.conftest import GADGET_NAMESPACE, OTHER_ID, VALID_ID, Cluster, FleetFactory, Stubs, wait_for
from tests.daemon.test_gadget_info import rpc_error
from tests.daemon.test_local_manager import INVALID, RUNNING

NOT_RUN_HERE = f'getting instance status for "{VALID_ID}": gadget not found'


def daemon(node: SimulatedNode) -> SharedStoreDaemon:
    assert isinstance(node.state, SharedStoreDaemon)
    return node.state


async def runs_on(fleet: Fleet, *names: str) -> None:
    await wait_for(
        lambda: {name for name, node in fleet.nodes.items() if VALID_ID in node.running()} == set(names),
        what=f"{VALID_ID} runs on exactly {names}",
    )


async def test_create_writes_exactly_igs_configmap(
    shared_fleet: FleetFactory, cluster: Cluster, connect: Callable[[SimulatedNode], Stubs]
) -> None:
    fleet = await shared_fleet()

    await connect(fleet["node-1"]).create(
        params={"operator.KubeManager.namespace": "default", "operator.filter.filter": "pid>1"},
        tags=("team=sre", "x"),
        nodes=("node-2", "node-1"),
        log_level=3,
        timeout=5_000_000_000,
    )

    configmap = (await cluster.core.read_namespaced_config_map(VALID_ID, GADGET_NAMESPACE)).to_dict()
    assert configmap["metadata"]["labels"] == {"type": "gadget-instance", "name": "trace"}
    assert configmap["metadata"]["annotations"] == {
        "gadgetImage": "trace_exec",
        "gadgetTags": "team=sre,x",
        "gadgetTimeout": "5000000000",
        "gadgetLogLevel": "3",
        "gadgetNodes": "node-2,node-1",
    }
    assert configmap["immutable"] is True
    assert configmap["data"] == {"operator.KubeManager.namespace": "default", "operator.filter.filter": "pid>1"}


async def test_create_answers_with_the_request_and_returns_before_any_daemon_runs_it(
    shared_fleet: FleetFactory, cluster: Cluster, connect: Callable[[SimulatedNode], Stubs]
) -> None:
    fleet = await shared_fleet(timing=RunTiming(informer_lag=60))

    response = await connect(fleet["node-1"]).create(instance_id="", name="")

    created = response.gadgetInstance
    assert response.result == 0
    assert not created.HasField("state")
    assert created.timeCreated == 0
    assert len(created.id) == 32
    assert created.name
    assert set(cluster.configmaps()) == {created.id}
    assert all(node.running() == {} for node in fleet.nodes.values())


async def test_an_unrestricted_instance_runs_on_every_node_and_lists_everywhere(
    shared_fleet: FleetFactory, connect: Callable[[SimulatedNode], Stubs]
) -> None:
    fleet = await shared_fleet(count=3, timing=RunTiming(init_delay=0))

    await connect(fleet["node-2"]).create()

    await runs_on(fleet, "node-1", "node-2", "node-3")
    for node in fleet.nodes.values():
        listed = await connect(node).list()
        assert [(i.id, i.state.status) for i in listed] == [(VALID_ID, RUNNING)]


async def test_a_pinned_instance_runs_only_on_its_nodes_and_breaks_list_and_get_elsewhere(
    shared_fleet: FleetFactory, connect: Callable[[SimulatedNode], Stubs]
) -> None:
    fleet = await shared_fleet(count=3, timing=RunTiming(init_delay=0))
    await connect(fleet["node-2"]).create(nodes=("node-1", "node-3"))
    await runs_on(fleet, "node-1", "node-3")
    await wait_for(lambda: VALID_ID in daemon(fleet["node-2"]).cache, what="node-2's cache has it")

    listed = await connect(fleet["node-1"]).list()
    list_error = await rpc_error(connect(fleet["node-2"]).list())
    get_error = await rpc_error(connect(fleet["node-2"]).get(VALID_ID))

    assert [i.id for i in listed] == [VALID_ID]
    assert (list_error.code(), list_error.details()) == (grpc.StatusCode.UNKNOWN, NOT_RUN_HERE)
    assert (get_error.code(), get_error.details()) == (grpc.StatusCode.UNKNOWN, NOT_RUN_HERE)
    assert fleet["node-2"].running() == {}


async def test_one_pinned_instance_breaks_list_even_with_others_that_run_here(
    shared_fleet: FleetFactory, connect: Callable[[SimulatedNode], Stubs]
) -> None:
    fleet = await shared_fleet(timing=RunTiming(init_delay=0))
    stubs = connect(fleet["node-1"])
    await stubs.create(instance_id=OTHER_ID, name="everywhere")
    await stubs.create(instance_id=VALID_ID, name="pinned", nodes=("node-1",))
    await runs_on(fleet, "node-1")
    await wait_for(lambda: len(daemon(fleet["node-2"]).cache) == 2, what="node-2's cache has both")

    error = await rpc_error(connect(fleet["node-2"]).list())

    assert error.details() == NOT_RUN_HERE
    assert [i.name for i in await connect(fleet["node-1"]).list()] == ["everywhere", "pinned"]


async def test_list_fails_in_the_window_after_a_create_before_the_worker_starts_the_run(
    shared_fleet: FleetFactory, connect: Callable[[SimulatedNode], Stubs]
) -> None:
    fleet = await shared_fleet(timing=RunTiming(init_delay=0))
    node = fleet["node-1"]
    daemon(node).worker_delay = 60
    await connect(node).create()
    await wait_for(lambda: VALID_ID in daemon(node).cache, what="node-1's cache has it")

    error = await rpc_error(connect(node).list())

    assert error.details() == NOT_RUN_HERE
    assert (await rpc_error(connect(node).get(VALID_ID))).details() == NOT_RUN_HERE
    await runs_on(fleet, "node-2")  # node-2's worker is prompt
    assert [i.id for i in await connect(fleet["node-2"]).list()] == [VALID_ID]


async def test_a_daemon_whose_cache_lags_does_not_know_a_new_instance_yet(
    shared_fleet: FleetFactory, connect: Callable[[SimulatedNode], Stubs]
) -> None:
    fleet = await shared_fleet()
    daemon(fleet["node-2"]).informer_lag = 60
    await connect(fleet["node-1"]).create()
    await runs_on(fleet, "node-1")

    assert await connect(fleet["node-2"]).list() == []
    error = await rpc_error(connect(fleet["node-2"]).get(VALID_ID))
    assert error.details() == "getting gadget instance from store: not found"


async def test_a_duplicate_name_is_refused_by_a_daemon_whose_cache_has_it(
    shared_fleet: FleetFactory, cluster: Cluster, connect: Callable[[SimulatedNode], Stubs]
) -> None:
    fleet = await shared_fleet()
    await connect(fleet["node-1"]).create(name="same")
    await wait_for(lambda: VALID_ID in daemon(fleet["node-2"]).cache, what="node-2's cache has it")

    error = await rpc_error(connect(fleet["node-2"]).create(instance_id=OTHER_ID, name="same"))

    assert (error.code(), error.details()) == (
        grpc.StatusCode.UNKNOWN,
        "gadget instance with name 'same' already exists",
    )
    assert set(cluster.configmaps()) == {VALID_ID}


async def test_a_duplicate_name_gets_through_a_daemon_whose_cache_lags(
    shared_fleet: FleetFactory, cluster: Cluster, connect: Callable[[SimulatedNode], Stubs]
) -> None:
    fleet = await shared_fleet()
    daemon(fleet["node-2"]).informer_lag = 60
    await connect(fleet["node-1"]).create(name="same")

    await connect(fleet["node-2"]).create(instance_id=OTHER_ID, name="same")

    assert set(cluster.configmaps()) == {VALID_ID, OTHER_ID}


async def test_a_duplicate_id_fails_with_the_api_servers_message(
    shared_fleet: FleetFactory, connect: Callable[[SimulatedNode], Stubs]
) -> None:
    fleet = await shared_fleet(timing=RunTiming(informer_lag=60))  # no cache knows it: the API server refuses
    await connect(fleet["node-1"]).create(name="first")

    error = await rpc_error(connect(fleet["node-2"]).create(name="second"))

    assert (error.code(), error.details()) == (grpc.StatusCode.UNKNOWN, f'configmaps "{VALID_ID}" already exists')


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"instance_id": "XYZ"}, "invalid gadget instance id: XYZ"),
        ({"name": "Upper"}, "invalid gadget instance name: Upper"),
        ({"name": "x" * 33}, f"invalid gadget instance name: {'x' * 33}"),
    ],
)
async def test_invalid_ids_and_names_are_refused_before_the_store(
    shared_fleet: FleetFactory,
    cluster: Cluster,
    connect: Callable[[SimulatedNode], Stubs],
    fields: dict[str, str],
    message: str,
) -> None:
    fleet = await shared_fleet()

    error = await rpc_error(connect(fleet["node-1"]).create(**fields))

    assert error.details() == message
    assert cluster.configmaps() == {}


async def test_remove_through_any_daemon_deletes_the_configmap_and_stops_every_run(
    shared_fleet: FleetFactory, cluster: Cluster, connect: Callable[[SimulatedNode], Stubs]
) -> None:
    fleet = await shared_fleet()
    await connect(fleet["node-1"]).create()
    await runs_on(fleet, "node-1", "node-2")

    response = await connect(fleet["node-2"]).remove(VALID_ID)

    assert (response.result, response.message) == (0, "")
    assert cluster.configmaps() == {}
    await runs_on(fleet)


async def test_removing_an_unknown_id_answers_result_1_with_the_api_servers_message(
    shared_fleet: FleetFactory, connect: Callable[[SimulatedNode], Stubs]
) -> None:
    stubs = connect((await shared_fleet())["node-1"])

    response = await stubs.remove(VALID_ID)

    assert (response.result, response.message) == (1, f'configmaps "{VALID_ID}" not found')
    assert (await rpc_error(stubs.remove("nope"))).details() == "invalid gadget instance id: nope"


async def test_stored_fields_read_back_as_ig_parses_them(
    shared_fleet: FleetFactory, cluster: Cluster, connect: Callable[[SimulatedNode], Stubs]
) -> None:
    fleet = await shared_fleet(timing=RunTiming(init_delay=0))
    stubs = connect(fleet["node-1"])
    await stubs.create(instance_id=VALID_ID, name="bare", version=2, log_level=4)
    await stubs.create(instance_id=OTHER_ID, name="tagged", tags=("a", "b"), nodes=("node-1",))
    await runs_on(fleet, "node-1", "node-2")

    bare, tagged = await stubs.get(VALID_ID), await stubs.get(OTHER_ID)

    assert (list(bare.tags), list(bare.nodes)) == ([""], [])  # "no tags" comes back as one empty tag
    assert (list(tagged.tags), list(tagged.nodes)) == (["a", "b"], ["node-1"])
    assert bare.gadgetConfig.version == 1  # the version is not stored: the create's 2 is gone, the run is fine
    assert bare.gadgetConfig.logLevel == 4
    assert bare.state.status == RUNNING
    created = cluster.configmaps()[VALID_ID]["metadata"]["creationTimestamp"]
    assert bare.timeCreated == int(datetime.fromisoformat(created).timestamp())


async def test_changing_the_nodes_annotation_moves_the_run(
    shared_fleet: FleetFactory, cluster: Cluster, connect: Callable[[SimulatedNode], Stubs]
) -> None:
    fleet = await shared_fleet()
    await connect(fleet["node-1"]).create(nodes=("node-1",))
    await runs_on(fleet, "node-1")

    patch = {"metadata": {"annotations": {"gadgetNodes": "node-2"}}}
    await cluster.core.patch_namespaced_config_map(
        VALID_ID, GADGET_NAMESPACE, patch, _content_type="application/merge-patch+json"
    )

    await runs_on(fleet, "node-2")


async def test_any_update_stops_and_reruns_the_instance(
    shared_fleet: FleetFactory, cluster: Cluster, connect: Callable[[SimulatedNode], Stubs]
) -> None:
    fleet = await shared_fleet(timing=RunTiming(start_delay=60))
    node = fleet["node-1"]
    await connect(node).create(nodes=("node-1",))
    await runs_on(fleet, "node-1")
    first = node.state.manager.advance(VALID_ID)
    assert node.initialized(VALID_ID)

    patch = {"metadata": {"annotations": {"gadgetTags": "changed"}}}
    await cluster.core.patch_namespaced_config_map(
        VALID_ID, GADGET_NAMESPACE, patch, _content_type="application/merge-patch+json"
    )

    await wait_for(lambda: node.state.manager.lookup(VALID_ID) not in (None, first), what="a new run")
    assert node.running()[VALID_ID].status is INVALID
    assert node.running()[VALID_ID].tags == ("changed",)


async def test_a_configmap_written_or_deleted_by_anyone_is_run_or_stopped(
    shared_fleet: FleetFactory, cluster: Cluster
) -> None:
    from gadget_operator.daemon import model

    fleet = await shared_fleet()
    body = instance_to_configmap(model.GadgetInstance(id=VALID_ID, name="direct", image="trace_exec"), GADGET_NAMESPACE)

    await cluster.core.create_namespaced_config_map(GADGET_NAMESPACE, body)
    await runs_on(fleet, "node-1", "node-2")
    await cluster.core.delete_namespaced_config_map(VALID_ID, GADGET_NAMESPACE)
    await runs_on(fleet)


async def test_configmaps_without_the_type_label_are_not_instances(
    shared_fleet: FleetFactory, cluster: Cluster
) -> None:
    fleet = await shared_fleet()
    body = {"metadata": {"name": VALID_ID, "labels": {"name": "x"}}, "data": {}}
    await cluster.core.create_namespaced_config_map(GADGET_NAMESPACE, body)
    await connect_and_create_marker(fleet, cluster)

    assert VALID_ID not in daemon(fleet["node-1"]).cache


async def connect_and_create_marker(fleet: Fleet, cluster: Cluster) -> None:
    """A labelled ConfigMap after the unlabelled one: once the daemons see it, they saw everything before."""
    from gadget_operator.daemon import model

    marker = model.GadgetInstance(id=OTHER_ID, name="marker", image="trace_exec")
    await cluster.core.create_namespaced_config_map(GADGET_NAMESPACE, instance_to_configmap(marker, GADGET_NAMESPACE))
    await wait_for(lambda: OTHER_ID in daemon(fleet["node-1"]).cache, what="the marker is seen")


async def test_a_restarted_daemon_loses_its_runs_and_reruns_what_the_store_holds(
    shared_fleet: FleetFactory, connect: Callable[[SimulatedNode], Stubs]
) -> None:
    fleet = await shared_fleet(timing=RunTiming(start_delay=60))
    await connect(fleet["node-1"]).create()
    await runs_on(fleet, "node-1", "node-2")
    for node in fleet.nodes.values():
        node.state.manager.advance(VALID_ID)

    await fleet["node-1"].restart()

    assert fleet["node-1"].running()[VALID_ID].status is INVALID  # run again from the start
    assert not fleet["node-1"].initialized(VALID_ID)
    assert fleet["node-2"].initialized(VALID_ID)  # the other daemon did not restart
    assert [i.id for i in await connect(fleet["node-1"]).list()] == [VALID_ID]


async def test_a_new_daemon_runs_what_the_store_already_holds(
    shared_fleet: FleetFactory, connect: Callable[[SimulatedNode], Stubs]
) -> None:
    fleet = await shared_fleet(count=1, timing=RunTiming(init_delay=0))
    await connect(fleet["node-1"]).create(nodes=("node-9",))

    late = await fleet.add("node-9")

    await wait_for(lambda: late.initialized(VALID_ID), what="the late daemon runs it")
    assert [i.id for i in await connect(late).list()] == [VALID_ID]
