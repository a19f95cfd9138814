"""GetGadgetInfo as IG's service answers it, under both stores: a dry run, or (flag 1) a run's info."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc
import grpc.aio
import pytest

from gadget_operator.simulator.server import SimulatedNode
from gadget_operator.simulator.state import RunTiming
from tests.daemon.conftest import OTHER_ID, VALID_ID, FleetFactory, Stubs, wait_for
from tests.daemon.test_local_manager import ERROR, PULL_FAILED, RUNNING, run_on_node_1, status_becomes

USE_INSTANCE = 1
KUBE_MANAGER = {
    f"operator.KubeManager.{key}" for key in ("podname", "namespace", "selector", "containername", "all-namespaces")
}


async def rpc_error(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value


async def test_a_dry_run_answers_the_gadgets_params_with_their_prefixes(
    any_fleet: FleetFactory, connect: Callable[[SimulatedNode], Stubs]
) -> None:
    stubs = connect((await any_fleet(timing=RunTiming(init_delay=0.01)))["node-1"])

    info = await stubs.info("trace_exec", params={"operator.KubeManager.namespace": "default"})

    keys = {param.prefix + param.key for param in info.params}
    assert keys >= KUBE_MANAGER | {"operator.filter.filter"}
    assert info.imageName == "trace_exec"  # the image as asked for, as IG's gadget context keeps it
    assert info.id == ""


async def test_a_dry_run_of_an_unknown_image_fails_with_igs_message(
    any_fleet: FleetFactory, connect: Callable[[SimulatedNode], Stubs]
) -> None:
    stubs = connect((await any_fleet())["node-1"])

    error = await rpc_error(stubs.info("broken_gadget"))

    assert error.code() is grpc.StatusCode.UNKNOWN
    assert error.details() == "getting gadget info: " + PULL_FAILED.format(image="broken_gadget")


async def test_a_dry_run_with_a_bad_param_fails_with_igs_message(
    any_fleet: FleetFactory, connect: Callable[[SimulatedNode], Stubs]
) -> None:
    stubs = connect((await any_fleet())["node-1"])

    error = await rpc_error(stubs.info("trace_exec", params={"operator.KubeManager.all-namespaces": "x"}))

    assert error.details() == (
        "getting gadget info: initializing and preparing operators: validating instance params for operator "
        '"KubeManager": invalid value "x" as "all-namespaces": expected \'true\' or \'false\', got: "x"'
    )


async def test_a_dry_run_ignores_unknown_param_keys(
    any_fleet: FleetFactory, connect: Callable[[SimulatedNode], Stubs]
) -> None:
    stubs = connect((await any_fleet())["node-1"])

    info = await stubs.info("trace_exec", params={"operator.KubeManager.bogus": "x", "bogus": "y"})

    assert info.params


async def test_a_dry_run_takes_the_init_delay_because_it_pulls(
    any_fleet: FleetFactory, connect: Callable[[SimulatedNode], Stubs]
) -> None:
    stubs = connect((await any_fleet(timing=RunTiming(init_delay=60)))["node-1"])

    error = await rpc_error(stubs.info("trace_exec", deadline=0.2))

    assert error.code() is grpc.StatusCode.DEADLINE_EXCEEDED


@pytest.mark.parametrize("flags", [0, USE_INSTANCE])
async def test_a_version_other_than_1_is_refused(
    any_fleet: FleetFactory, connect: Callable[[SimulatedNode], Stubs], flags: int
) -> None:
    stubs = connect((await any_fleet())["node-1"])

    error = await rpc_error(stubs.info("trace_exec", flags=flags, version=2))

    assert (error.code(), error.details()) == (grpc.StatusCode.UNKNOWN, "expected version to be 1, got 2")


async def test_use_instance_for_an_instance_this_daemon_does_not_run_fails_at_once(
    any_fleet: FleetFactory, connect: Callable[[SimulatedNode], Stubs]
) -> None:
    fleet = await any_fleet(timing=RunTiming(init_delay=60))
    await run_on_node_1(fleet, connect)

    error = await rpc_error(connect(fleet["node-1"]).info(OTHER_ID, flags=USE_INSTANCE))

    assert (error.code(), error.details()) == (grpc.StatusCode.UNKNOWN, f"instance {OTHER_ID} not found")


async def test_use_instance_of_an_initialized_run_answers_its_info(
    any_fleet: FleetFactory, connect: Callable[[SimulatedNode], Stubs]
) -> None:
    fleet = await any_fleet(timing=RunTiming(init_delay=0))
    node = await run_on_node_1(fleet, connect)
    await wait_for(lambda: node.initialized(VALID_ID), what="initialized")

    info = await connect(node).info(VALID_ID, flags=USE_INSTANCE)

    assert (info.id, info.name, info.imageName) == (VALID_ID, "trace", "trace_exec")
    assert {p.prefix + p.key for p in info.params} >= KUBE_MANAGER


async def test_use_instance_finds_a_run_by_name_or_id_prefix_as_ig_does(
    any_fleet: FleetFactory, connect: Callable[[SimulatedNode], Stubs]
) -> None:
    fleet = await any_fleet(timing=RunTiming(init_delay=0))
    node = await run_on_node_1(fleet, connect)

    assert (await connect(node).info("trace", flags=USE_INSTANCE)).id == VALID_ID
    assert (await connect(node).info(VALID_ID[:6], flags=USE_INSTANCE)).id == VALID_ID


async def test_use_instance_blocks_until_the_run_is_initialized(
    any_fleet: FleetFactory, connect: Callable[[SimulatedNode], Stubs]
) -> None:
    fleet = await any_fleet(timing=RunTiming(init_delay=60))
    node = await run_on_node_1(fleet, connect)
    await status_becomes(node, RUNNING)

    call = asyncio.ensure_future(connect(node).info(VALID_ID, flags=USE_INSTANCE, deadline=30))
    await wait_for(lambda: node.calls["GetGadgetInfo"] == 1, what="the call reached the daemon")
    assert not call.done()
    node.state.manager.advance(VALID_ID)

    assert (await call).id == VALID_ID


async def test_use_instance_of_a_run_that_failed_before_initializing_never_answers(
    any_fleet: FleetFactory, connect: Callable[[SimulatedNode], Stubs]
) -> None:
    fleet = await any_fleet(timing=RunTiming(init_delay=0))
    node = await run_on_node_1(fleet, connect, image="broken_gadget")
    await status_becomes(node, ERROR)

    error = await rpc_error(connect(node).info(VALID_ID, flags=USE_INSTANCE, deadline=0.3))

    assert error.code() is grpc.StatusCode.DEADLINE_EXCEEDED


async def test_faults_apply_to_get_gadget_info(
    any_fleet: FleetFactory, connect: Callable[[SimulatedNode], Stubs]
) -> None:
    node = (await any_fleet(timing=RunTiming(init_delay=0)))["node-1"]
    stubs = connect(node)

    node.faults.fail_with, node.faults.fail_only = "boom", frozenset({"GetGadgetInfo"})
    assert (await rpc_error(stubs.info("trace_exec"))).details() == "boom"
    assert await stubs.list() == []

    node.faults.fail_with, node.faults.hang = None, True
    assert (await rpc_error(stubs.info("trace_exec", deadline=0.2))).code() is grpc.StatusCode.DEADLINE_EXCEEDED

    node.release()
    node.faults.latency = 0.01
    assert (await stubs.info("trace_exec")).params
