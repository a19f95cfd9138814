"""The simulator follows the real daemon's rules (shared/docs/inspektor-gadget.md), one test per rule.

These talk to the simulator with the raw generated stubs, not the project's client, because the
client refuses bad IDs and names before they reach the wire.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest

from gadget_operator.daemon.pb import api_pb2, api_pb2_grpc
from gadget_operator.simulator.server import Fleet, SimulatedNode

VALID_ID = "0123456789abcdef0123456789abcdef"


@pytest.fixture
async def stub(node: SimulatedNode) -> AsyncIterator[api_pb2_grpc.GadgetInstanceManagerStub]:
    target = node.address.removeprefix("tcp://")
    async with grpc.aio.insecure_channel(target) as channel:
        yield api_pb2_grpc.GadgetInstanceManagerStub(channel)


def request(instance_id: str = VALID_ID, name: str = "trace", image: str = "trace_exec", version: int = 1):  # type: ignore[no-untyped-def]
    return api_pb2.CreateGadgetInstanceRequest(
        gadgetInstance=api_pb2.GadgetInstance(
            id=instance_id, name=name, gadgetConfig=api_pb2.GadgetRunRequest(imageName=image, version=version)
        )
    )


async def test_a_valid_client_chosen_id_is_kept(stub: api_pb2_grpc.GadgetInstanceManagerStub) -> None:
    response = await stub.CreateGadgetInstance(request())
    assert (response.result, response.gadgetInstance.id) == (0, VALID_ID)


@pytest.mark.parametrize("bad_id", ["ABCDEF0123456789ABCDEF0123456789", "abc", VALID_ID + "0", "g" * 32])
async def test_an_invalid_id_is_refused(stub: api_pb2_grpc.GadgetInstanceManagerStub, bad_id: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError, match="invalid gadget instance id") as raised:
        await stub.CreateGadgetInstance(request(bad_id))
    assert raised.value.code() is grpc.StatusCode.UNKNOWN


async def test_an_empty_id_gets_a_server_made_one(stub: api_pb2_grpc.GadgetInstanceManagerStub) -> None:
    first = await stub.CreateGadgetInstance(request("", name="a"))
    second = await stub.CreateGadgetInstance(request("", name="b"))
    ids = {first.gadgetInstance.id, second.gadgetInstance.id}
    assert len(ids) == 2
    assert all(len(i) == 32 and all(c in "0123456789abcdef" for c in i) for i in ids)


@pytest.mark.parametrize("bad_name", ["Trace", "x" * 33, "a.b", "a b"])
async def test_names_follow_the_rule(stub: api_pb2_grpc.GadgetInstanceManagerStub, bad_name: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError, match="invalid gadget instance name"):
        await stub.CreateGadgetInstance(request(name=bad_name))


async def test_an_empty_name_gets_a_random_valid_one(stub: api_pb2_grpc.GadgetInstanceManagerStub) -> None:
    response = await stub.CreateGadgetInstance(request(name=""))
    assert response.gadgetInstance.name


async def test_a_duplicate_id_is_refused(stub: api_pb2_grpc.GadgetInstanceManagerStub) -> None:
    await stub.CreateGadgetInstance(request(name="first"))
    with pytest.raises(grpc.aio.AioRpcError, match="already exists"):
        await stub.CreateGadgetInstance(request(name="second"))


async def test_a_duplicate_name_is_refused(stub: api_pb2_grpc.GadgetInstanceManagerStub) -> None:
    await stub.CreateGadgetInstance(request(VALID_ID, name="same"))
    with pytest.raises(grpc.aio.AioRpcError, match="already exists"):
        await stub.CreateGadgetInstance(request("f" * 32, name="same"))


async def test_removing_an_unknown_id_answers_ok_with_result_1(stub: api_pb2_grpc.GadgetInstanceManagerStub) -> None:
    response = await stub.RemoveGadgetInstance(api_pb2.GadgetInstanceId(id=VALID_ID))
    assert response.result == 1
    assert "not found" in response.message


async def test_removing_a_known_id_answers_result_0(stub: api_pb2_grpc.GadgetInstanceManagerStub) -> None:
    await stub.CreateGadgetInstance(request())
    response = await stub.RemoveGadgetInstance(api_pb2.GadgetInstanceId(id=VALID_ID))
    assert response.result == 0
    assert not (await stub.ListGadgetInstances(api_pb2.ListGadgetInstancesRequest())).gadgetInstances


async def test_a_version_other_than_1_puts_the_instance_in_error(stub: api_pb2_grpc.GadgetInstanceManagerStub) -> None:
    response = await stub.CreateGadgetInstance(request(version=2))
    fetched = await stub.GetGadgetInstance(api_pb2.GadgetInstanceId(id=VALID_ID))
    assert response.result == 0
    assert fetched.state.status == api_pb2.StatusError
    assert fetched.state.message == "expected version to be 1"


async def test_an_unknown_image_fails_after_a_successful_create(stub: api_pb2_grpc.GadgetInstanceManagerStub) -> None:
    response = await stub.CreateGadgetInstance(request(image="ghcr.io/inspektor-gadget/gadget/broken_gadget:latest"))
    fetched = await stub.GetGadgetInstance(api_pb2.GadgetInstanceId(id=VALID_ID))
    assert response.result == 0
    assert fetched.state.status == api_pb2.StatusError
    assert "pulling image" in fetched.state.message


async def test_getting_an_unknown_id_fails_with_not_found(stub: api_pb2_grpc.GadgetInstanceManagerStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError, match="not found"):
        await stub.GetGadgetInstance(api_pb2.GadgetInstanceId(id=VALID_ID))


async def test_with_a_store_instances_survive_a_restart_and_run_again(
    node: SimulatedNode, stub: api_pb2_grpc.GadgetInstanceManagerStub
) -> None:
    await stub.CreateGadgetInstance(request())
    await node.restart()
    listed = (await stub.ListGadgetInstances(api_pb2.ListGadgetInstancesRequest())).gadgetInstances
    assert [(i.id, i.state.status) for i in listed] == [(VALID_ID, api_pb2.StatusRunning)]


async def test_without_a_store_a_restart_loses_every_instance(short_dir: object) -> None:
    from pathlib import Path

    fleet = Fleet(Path(str(short_dir)), transport="tcp", stored=False)
    node = await fleet.add("node-1")
    try:
        async with grpc.aio.insecure_channel(node.address.removeprefix("tcp://")) as channel:
            stub = api_pb2_grpc.GadgetInstanceManagerStub(channel)
            await stub.CreateGadgetInstance(request())
            await node.restart()
            assert not (await stub.ListGadgetInstances(api_pb2.ListGadgetInstancesRequest())).gadgetInstances
    finally:
        await fleet.stop()


async def test_one_process_serves_hundreds_of_nodes_each_on_its_own_address(short_dir: object) -> None:
    from pathlib import Path

    from gadget_operator.daemon.client import DaemonPool

    fleet = Fleet(Path(str(short_dir)), transport="unix")
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
