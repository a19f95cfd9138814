"""``ig daemon``'s per-node store follows IG's file store and service, one test per rule.

These talk to the simulator with the raw generated stubs, not the project's client, because the
client refuses bad IDs and names before they reach the wire.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import grpc.aio
import pytest

from gadget_operator.daemon import model
from gadget_operator.daemon.client import DaemonPool
from gadget_operator.daemon.pb import api_pb2
from gadget_operator.simulator.server import Fleet, SimulatedNode
from gadget_operator.simulator.state import RunTiming
from tests.daemon.conftest import OTHER_ID, VALID_ID, Stubs, wait_for

INSTANCE = model.GadgetInstance(id=VALID_ID, name="trace", image="trace_exec")
NOT_FOUND_AT = f'gadget instance not found at "/var/lib/ig/gadgets/{VALID_ID}.gadget"'


@pytest.fixture
async def stubs(node: SimulatedNode, connect: Callable[[SimulatedNode], Stubs]) -> Stubs:
    return connect(node)


async def test_a_valid_client_chosen_id_is_kept(stubs: Stubs) -> None:
    response = await stubs.create()
    assert (response.result, response.gadgetInstance.id) == (0, VALID_ID)


async def test_create_answers_with_the_request_itself_and_no_state(stubs: Stubs) -> None:
    response = await stubs.create(params={"operator.KubeManager.namespace": "default"}, tags=("a=b",), timeout=7)

    assert not response.gadgetInstance.HasField("state")
    assert response.gadgetInstance.timeCreated == 0
    assert response.gadgetInstance.gadgetConfig.timeout == 7
    assert dict(response.gadgetInstance.gadgetConfig.paramValues) == {"operator.KubeManager.namespace": "default"}


@pytest.mark.parametrize("bad_id", ["ABCDEF0123456789ABCDEF0123456789", "abc", VALID_ID + "0", "g" * 32])
async def test_an_invalid_id_is_refused_with_igs_message(stubs: Stubs, bad_id: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stubs.create(instance_id=bad_id)
    assert raised.value.code() is grpc.StatusCode.UNKNOWN
    assert raised.value.details() == f"invalid gadget instance id: {bad_id}"


async def test_an_empty_id_gets_a_server_made_one(stubs: Stubs) -> None:
    first = await stubs.create(instance_id="", name="a")
    second = await stubs.create(instance_id="", name="b")
    ids = {first.gadgetInstance.id, second.gadgetInstance.id}
    assert len(ids) == 2
    assert all(len(i) == 32 and all(c in "0123456789abcdef" for c in i) for i in ids)


@pytest.mark.parametrize("bad_name", ["Trace", "x" * 33, "a.b", "a b"])
async def test_names_follow_the_rule(stubs: Stubs, bad_name: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stubs.create(name=bad_name)
    assert raised.value.details() == f"invalid gadget instance name: {bad_name}"


async def test_an_empty_name_gets_a_random_adjective_surname_one(stubs: Stubs) -> None:
    response = await stubs.create(name="")
    adjective, _, surname = response.gadgetInstance.name.partition("_")
    assert adjective
    assert surname


async def test_a_duplicate_id_is_refused(stubs: Stubs) -> None:
    await stubs.create(name="first")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stubs.create(name="second")
    assert raised.value.details() == f'gadget with id "{VALID_ID}" already exists'


async def test_a_duplicate_name_is_refused(stubs: Stubs) -> None:
    await stubs.create(instance_id=VALID_ID, name="same")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stubs.create(instance_id=OTHER_ID, name="same")
    assert raised.value.details() == 'gadget with name "same" already exists'


async def test_removing_an_unknown_id_answers_ok_with_result_1_naming_the_file(stubs: Stubs) -> None:
    response = await stubs.remove(VALID_ID)
    assert (response.result, response.message) == (1, NOT_FOUND_AT)


async def test_removing_a_known_id_answers_result_0_and_stops_the_run(stubs: Stubs, node: SimulatedNode) -> None:
    await stubs.create()
    response = await stubs.remove(VALID_ID)
    assert (response.result, response.message) == (0, "")
    assert await stubs.list() == []
    assert node.running() == {}


async def test_remove_and_get_of_a_malformed_id_are_errors(stubs: Stubs) -> None:
    for call in (stubs.remove, stubs.get):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call("nope")
        assert raised.value.details() == "invalid gadget instance id: nope"


async def test_getting_an_unknown_id_fails_naming_the_file(stubs: Stubs) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stubs.get(VALID_ID)
    assert raised.value.code() is grpc.StatusCode.UNKNOWN
    assert raised.value.details() == f"getting gadget instance from store: loading gadget: {NOT_FOUND_AT}"


async def test_a_version_other_than_1_is_created_then_fails_its_run(stubs: Stubs) -> None:
    response = await stubs.create(version=2)
    fetched = await stubs.get(VALID_ID)
    assert response.result == 0
    assert fetched.gadgetConfig.version == 2
    assert fetched.state.status == api_pb2.StatusError
    assert fetched.state.message == "expected version to be 1, got 2"


async def test_list_and_get_show_the_stored_instance_with_the_local_state(stubs: Stubs, node: SimulatedNode) -> None:
    await stubs.create(instance_id=OTHER_ID, name="b", image="broken_gadget", nodes=("elsewhere",))
    await stubs.create(instance_id=VALID_ID, name="a")

    listed = await stubs.list()

    assert [(i.id, i.state.status) for i in listed] == [(VALID_ID, api_pb2.StatusRunning), (OTHER_ID, 2)]
    assert list(listed[1].nodes) == ["elsewhere"]  # ig daemon ignores nodes: it runs what it is given
    assert set(node.running()) == {VALID_ID, OTHER_ID}
    assert (await stubs.get(OTHER_ID)).state.message.startswith("initializing and preparing operators:")


async def test_with_a_store_instances_survive_a_restart_and_run_again(node: SimulatedNode, stubs: Stubs) -> None:
    await stubs.create()
    await node.restart()
    listed = await stubs.list()
    assert [(i.id, i.state.status) for i in listed] == [(VALID_ID, api_pb2.StatusRunning)]
    assert node.initialized(VALID_ID)


async def test_the_store_is_one_igs_json_file_per_instance(short_dir: Path) -> None:
    fleet = Fleet(short_dir, transport="tcp", timing=RunTiming(init_delay=0))
    node = await fleet.add("node-1")
    try:
        await node.state.create_instance(INSTANCE)
        files = list((short_dir / "store" / "node-1").iterdir())
        assert [f.name for f in files] == [f"{VALID_ID}.gadget"]
        assert '"gadgetInstance"' in files[0].read_text()
    finally:
        await fleet.stop()


async def test_a_restart_reruns_stored_instances_from_the_start(
    short_dir: Path, connect: Callable[[SimulatedNode], Stubs]
) -> None:
    fleet = Fleet(short_dir, transport="tcp", timing=RunTiming(start_delay=60))
    node = await fleet.add("node-1")
    try:
        stubs = connect(node)
        await stubs.create()
        node.state.manager.advance(VALID_ID)
        assert node.initialized(VALID_ID)

        await node.restart()

        assert node.running()[VALID_ID].status == 0  # held as StatusInvalid again, not initialized
        assert not node.initialized(VALID_ID)
    finally:
        await fleet.stop()


async def test_without_a_store_a_restart_loses_every_instance(
    short_dir: Path, connect: Callable[[SimulatedNode], Stubs]
) -> None:
    fleet = Fleet(short_dir, transport="tcp", stored=False)
    node = await fleet.add("node-1")
    try:
        stubs = connect(node)
        await stubs.create()
        await node.restart()
        assert await stubs.list() == []
        assert node.running() == {}
    finally:
        await fleet.stop()


async def test_one_process_serves_hundreds_of_nodes_each_on_its_own_address(short_dir: Path) -> None:
    fleet = Fleet(short_dir, transport="unix", timing=RunTiming(init_delay=0))
    await fleet.start(200)
    pool = DaemonPool(timeout=5.0)
    try:
        addresses = fleet.addresses()
        assert len(set(addresses.values())) == 200
        probed = {name: await pool.get(address).list_instances() for name, address in list(addresses.items())[::20]}
        assert probed == {name: [] for name in list(addresses)[::20]}
        assert all(fleet[name].calls["ListGadgetInstances"] == 1 for name in probed)
    finally:
        await pool.close()
        await fleet.stop()


async def test_the_sync_api_kept_for_other_tests_still_works(node: SimulatedNode) -> None:
    """``node.state.list()`` (used by the demo and some integration tests) answers like ListGadgetInstances."""
    from gadget_operator.simulator.state import DaemonState

    assert isinstance(node.state, DaemonState)
    node.state.create(INSTANCE)
    await wait_for(lambda: node.state.list(), what="listed")
    assert [i.id for i in node.state.list()] == [VALID_ID]
