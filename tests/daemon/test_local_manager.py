"""What a daemon actually runs (IG's instance manager), the same under both stores.

A run is held with StatusInvalid, turns to StatusRunning just before the image is pulled, and is
initialized ``init_delay`` later, or turns to StatusError with IG's message and stays there.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gadget_operator.daemon import model
from gadget_operator.simulator.server import Fleet, SimulatedNode
from gadget_operator.simulator.state import RunTiming
from tests.daemon.conftest import VALID_ID, FleetFactory, Stubs, wait_for

INVALID, RUNNING, ERROR = model.InstanceStatus.INVALID, model.InstanceStatus.RUNNING, model.InstanceStatus.ERROR
PULL_FAILED = (
    'initializing and preparing operators: instantiating operator "oci": ensuring image: '
    'pulling image (if missing) "{image}": pulling image "{image}": '
    "copying to local repository: ghcr.io/inspektor-gadget/gadget/broken_gadget:latest: not found"
)


async def run_on_node_1(fleet: Fleet, connect: Callable[[SimulatedNode], Stubs], **fields: object) -> SimulatedNode:
    """Create through node-1, for node-1 (the shared store then runs it there only); wait until it holds the run."""
    node = fleet["node-1"]
    await connect(node).create(nodes=("node-1",), **fields)  # type: ignore[arg-type]
    await wait_for(lambda: VALID_ID in node.running(), what="node-1 holds the run")
    return node


async def status_becomes(node: SimulatedNode, status: model.InstanceStatus) -> model.GadgetInstance:
    return await wait_for(
        lambda: (run := node.running().get(VALID_ID)) is not None and run.status is status and run,
        what=f"status {status.name}",
    )


async def test_a_new_run_is_held_with_status_invalid_until_it_starts(
    any_fleet: FleetFactory, connect: Callable[[SimulatedNode], Stubs]
) -> None:
    fleet = await any_fleet(timing=RunTiming(start_delay=60))
    node = await run_on_node_1(fleet, connect)

    held = node.running()[VALID_ID]
    assert (held.status, held.message) == (INVALID, "")
    assert not node.initialized(VALID_ID)
    fetched = await connect(node).get(VALID_ID)
    assert fetched.state.status == INVALID


async def test_the_run_is_running_before_the_gadget_is_initialized(
    any_fleet: FleetFactory, connect: Callable[[SimulatedNode], Stubs]
) -> None:
    fleet = await any_fleet(timing=RunTiming(init_delay=60))
    node = await run_on_node_1(fleet, connect)

    await status_becomes(node, RUNNING)

    assert not node.initialized(VALID_ID)
    assert (await connect(node).get(VALID_ID)).state.status == RUNNING


async def test_after_the_init_delay_the_gadget_is_initialized_and_still_running(
    any_fleet: FleetFactory, connect: Callable[[SimulatedNode], Stubs]
) -> None:
    fleet = await any_fleet(timing=RunTiming(start_delay=0.01, init_delay=0.02))
    node = await run_on_node_1(fleet, connect)

    await wait_for(lambda: node.initialized(VALID_ID), what="initialized")

    assert (node.running()[VALID_ID].status, node.running()[VALID_ID].message) == (RUNNING, "")


async def test_advance_lets_a_held_run_go_on_at_once(
    any_fleet: FleetFactory, connect: Callable[[SimulatedNode], Stubs]
) -> None:
    fleet = await any_fleet(timing=RunTiming(start_delay=60, init_delay=60))
    node = await run_on_node_1(fleet, connect)

    node.state.manager.advance(VALID_ID)

    assert node.initialized(VALID_ID)
    assert node.running()[VALID_ID].status is RUNNING


async def test_zero_timing_starts_and_initializes_a_run_as_soon_as_it_is_held(
    any_fleet: FleetFactory, connect: Callable[[SimulatedNode], Stubs]
) -> None:
    fleet = await any_fleet(timing=RunTiming(start_delay=0, init_delay=0))
    node = await run_on_node_1(fleet, connect)

    assert node.initialized(VALID_ID)
    assert node.running()[VALID_ID].status is RUNNING


@pytest.mark.parametrize("image", ["broken_gadget", "ghcr.io/inspektor-gadget/gadget/broken_gadget:latest"])
async def test_an_unknown_image_fails_the_run_after_the_init_delay_with_igs_message(
    any_fleet: FleetFactory, connect: Callable[[SimulatedNode], Stubs], image: str
) -> None:
    fleet = await any_fleet(timing=RunTiming(init_delay=0.02))
    node = await run_on_node_1(fleet, connect, image=image)

    failed = await status_becomes(node, ERROR)

    assert failed.message == PULL_FAILED.format(image=image)
    assert not node.initialized(VALID_ID)
    fetched = await connect(node).get(VALID_ID)
    assert (fetched.state.status, fetched.state.message) == (ERROR, failed.message)


async def test_unknown_images_may_be_given_by_their_full_name(
    any_fleet: FleetFactory, connect: Callable[[SimulatedNode], Stubs]
) -> None:
    fleet = await any_fleet(unknown_images=("ghcr.io/inspektor-gadget/gadget/broken_gadget:latest",))
    node = await run_on_node_1(fleet, connect, image="broken_gadget")

    assert (await status_becomes(node, ERROR)).message == PULL_FAILED.format(image="broken_gadget")


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        (
            "all-namespaces",
            "yes",
            'invalid value "yes" as "all-namespaces": expected \'true\' or \'false\', got: "yes"',
        ),
        (
            "all-namespaces",
            "Nope",
            'invalid value "Nope" as "all-namespaces": expected \'true\' or \'false\', got: "nope"',
        ),
        (
            "selector",
            "app",
            'invalid value "app" as "selector": should be a comma-separated list of key-value pairs '
            "(key=value[,key=value,...])",
        ),
    ],
)
async def test_a_bad_kubemanager_param_fails_the_run_like_igs_validation(
    any_fleet: FleetFactory, connect: Callable[[SimulatedNode], Stubs], key: str, value: str, problem: str
) -> None:
    fleet = await any_fleet()
    node = await run_on_node_1(fleet, connect, params={f"operator.KubeManager.{key}": value})

    failed = await status_becomes(node, ERROR)

    assert failed.message == (
        f'initializing and preparing operators: validating instance params for operator "KubeManager": {problem}'
    )


@pytest.mark.parametrize("value", ["true", "false", "TRUE", ""])
async def test_good_all_namespaces_values_run(
    any_fleet: FleetFactory, connect: Callable[[SimulatedNode], Stubs], value: str
) -> None:
    fleet = await any_fleet()
    node = await run_on_node_1(fleet, connect, params={"operator.KubeManager.all-namespaces": value})

    await wait_for(lambda: node.initialized(VALID_ID), what="initialized")


async def test_unknown_param_keys_are_ignored(
    any_fleet: FleetFactory, connect: Callable[[SimulatedNode], Stubs]
) -> None:
    params = {"operator.KubeManager.no-such-param": "x", "no.prefix.at.all": "y", "operator.Nobody.thing": "z"}
    fleet = await any_fleet()
    node = await run_on_node_1(fleet, connect, params=params)

    await wait_for(lambda: node.initialized(VALID_ID), what="initialized")


async def test_the_image_is_pulled_before_params_are_validated(
    any_fleet: FleetFactory, connect: Callable[[SimulatedNode], Stubs]
) -> None:
    fleet = await any_fleet()
    node = await run_on_node_1(
        fleet, connect, image="broken_gadget", params={"operator.KubeManager.all-namespaces": "maybe"}
    )

    assert "pulling image" in (await status_becomes(node, ERROR)).message


async def test_a_failed_run_is_not_retried(any_fleet: FleetFactory, connect: Callable[[SimulatedNode], Stubs]) -> None:
    fleet = await any_fleet()
    node = await run_on_node_1(fleet, connect, image="broken_gadget")
    await status_becomes(node, ERROR)

    run = node.state.manager.lookup(VALID_ID)

    assert run is not None
    assert run.task is None or run.task.done()  # nothing left scheduled: the failure is final
    assert node.running()[VALID_ID].status is ERROR


async def test_removing_an_instance_stops_its_run(
    any_fleet: FleetFactory, connect: Callable[[SimulatedNode], Stubs]
) -> None:
    fleet = await any_fleet(timing=RunTiming(init_delay=60))
    node = await run_on_node_1(fleet, connect)

    assert (await connect(fleet["node-2"] if fleet.shared_store else node).remove(VALID_ID)).result == 0

    await wait_for(lambda: VALID_ID not in node.running(), what="run stopped")
