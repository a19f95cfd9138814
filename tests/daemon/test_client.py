"""The daemon client against simulated daemons over real unix and TCP sockets: every RPC, every error."""

from __future__ import annotations

import pytest

from gadget_operator import errors, identity
from gadget_operator.daemon import model
from gadget_operator.daemon.client import DaemonClient, DaemonPool
from gadget_operator.simulator.server import Fleet, SimulatedNode

OWNER = identity.Ownership(
    resource_uid="0b9b7c1e-8d6a-4a35-9a51-3f1f0d8f2c11", resource="default/trace", node="node-1", spec_hash="spec-a"
)


def make_instance(image: str = "trace_exec") -> model.GadgetInstance:
    derived = identity.instance_id(OWNER.resource_uid, OWNER.node, OWNER.spec_hash)
    return model.GadgetInstance(
        id=derived,
        name=identity.instance_name("trace", derived),
        image=image,
        params={"operator.KubeManager.namespace": "default"},
        tags=identity.ownership_tags(OWNER),
        nodes=(OWNER.node,),
        log_level=2,
    )


async def test_every_instance_rpc_round_trips(client: DaemonClient) -> None:
    wanted = make_instance()

    created = await client.create_instance(wanted, event_buffer_length=128)
    listed = await client.list_instances()
    fetched = await client.get_instance(wanted.id)
    await client.remove_instance(wanted.id)

    assert created.id == wanted.id
    assert created.status is model.InstanceStatus.INVALID  # IG echoes the request: no state of its own
    assert [i.id for i in listed] == [wanted.id]
    assert (fetched.name, fetched.image, dict(fetched.params), fetched.tags, fetched.nodes, fetched.log_level) == (
        wanted.name,
        wanted.image,
        dict(wanted.params),
        wanted.tags,
        wanted.nodes,
        2,
    )
    assert identity.parse_ownership(fetched.tags) == OWNER
    assert await client.list_instances() == []


async def test_get_gadget_info_lists_params_with_their_prefixes(client: DaemonClient) -> None:
    info = await client.get_gadget_info("trace_exec")

    assert info.image == "trace_exec"  # IG answers with the image name as asked for
    assert "operator.KubeManager.namespace" in {param.key for param in info.params}


async def test_get_of_an_unknown_instance_is_not_found(client: DaemonClient) -> None:
    with pytest.raises(errors.InstanceNotFound, match="not found"):
        await client.get_instance("f" * 32)


async def test_remove_of_an_unknown_instance_is_not_found(client: DaemonClient) -> None:
    with pytest.raises(errors.InstanceNotFound):
        await client.remove_instance("f" * 32)


async def test_a_duplicate_create_is_already_exists(client: DaemonClient) -> None:
    await client.create_instance(make_instance())

    with pytest.raises(errors.InstanceAlreadyExists, match="already exists"):
        await client.create_instance(make_instance())


async def test_an_unpullable_image_is_created_then_reported_in_error(client: DaemonClient) -> None:
    created = await client.create_instance(make_instance("broken_gadget"))

    fetched = await client.get_instance(created.id)
    assert fetched.status is model.InstanceStatus.ERROR
    assert "pulling image" in fetched.message


@pytest.mark.parametrize(
    ("field", "value"),
    [("id", "NOT-HEX"), ("id", "a" * 31), ("name", "Upper"), ("name", "x" * 33), ("name", "")],
)
async def test_the_client_refuses_ids_and_names_the_daemon_would_refuse(
    client: DaemonClient, node: SimulatedNode, field: str, value: str
) -> None:
    from dataclasses import replace

    with pytest.raises(errors.InvalidInstanceError):
        await client.create_instance(replace(make_instance(), **{field: value}))
    assert node.calls["CreateGadgetInstance"] == 0


async def test_the_daemons_own_error_message_reaches_the_caller(client: DaemonClient, node: SimulatedNode) -> None:
    node.faults.fail_with = "operator.oci: invalid value for ebpf.paths"

    with pytest.raises(errors.DaemonRejected, match=r"invalid value for ebpf\.paths") as raised:
        await client.create_instance(make_instance())
    assert raised.value.address == node.address


async def test_a_hanging_daemon_gives_deadline_exceeded(node: SimulatedNode) -> None:
    node.faults.hang = True
    async with DaemonClient(node.address, timeout=0.3) as client:
        with pytest.raises(errors.DaemonDeadlineExceeded, match=r"0\.3s"):
            await client.list_instances()
        node.release()
        assert await client.list_instances() == []


async def test_latency_below_the_deadline_is_just_slower(node: SimulatedNode, client: DaemonClient) -> None:
    node.faults.latency = 0.05

    assert await client.list_instances() == []


async def test_a_node_that_went_away_is_unavailable(node: SimulatedNode, client: DaemonClient) -> None:
    await client.list_instances()
    await node.stop()

    with pytest.raises(errors.DaemonUnavailable, match="unreachable"):
        await client.list_instances()


async def test_an_address_with_nothing_behind_it_is_unavailable(short_dir: object) -> None:
    async with DaemonClient(f"unix://{short_dir}/nobody.sock", timeout=2.0) as client:
        with pytest.raises(errors.DaemonUnavailable):
            await client.list_instances()


async def test_after_a_restart_the_same_client_reconnects_and_stored_instances_are_back(
    node: SimulatedNode, client: DaemonClient
) -> None:
    created = await client.create_instance(make_instance())

    await node.restart()

    assert [i.id for i in await client.list_instances()] == [created.id]


async def test_a_restart_without_a_store_loses_the_instances(short_dir: object) -> None:
    from pathlib import Path

    fleet = Fleet(Path(str(short_dir)), stored=False)
    node = await fleet.add("node-1")
    try:
        async with DaemonClient(node.address) as client:
            await client.create_instance(make_instance())
            await node.restart()
            assert await client.list_instances() == []
    finally:
        await fleet.stop()


def test_addresses_must_use_igs_forms() -> None:
    for bad in ("localhost:8080", "unix://relative.sock", "tcp://host", "tcp://host:http", "http://host:1"):
        with pytest.raises(ValueError, match="daemon address"):
            DaemonClient(bad)


async def test_the_pool_reuses_one_client_per_address(fleet: Fleet) -> None:
    pool = DaemonPool(timeout=2.0)
    try:
        first, second = (pool.get(address) for address in fleet.addresses().values())
        assert pool.get(fleet["node-1"].address) is first
        assert first is not second
        assert [await first.list_instances(), await second.list_instances()] == [[], []]
    finally:
        await pool.close()
