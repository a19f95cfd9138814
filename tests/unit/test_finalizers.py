"""The cleanup finalizer: added and removed through the rate-limited queue; refusals retried with
backoff, shown to the status and announced once per message."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from gadget_operator import kube
from gadget_operator.finalizers import Finalizers
from gadget_operator.resource import FINALIZER, GadgetInstanceResource
from gadget_operator.settings import ExecutorSettings
from tests.unit.test_workqueue import FakeClock

REFUSED = kube.KubeApiError(400, 'admission webhook "policy.example.com" denied the request: no finalizers here')


def resource(*, finalizer: bool = False, deleting: bool = False, spec: Any = None) -> GadgetInstanceResource:
    metadata: dict[str, Any] = {"uid": "uid-1", "name": "trace", "namespace": "default", "resourceVersion": "7"}
    if finalizer:
        metadata["finalizers"] = [FINALIZER]
    if deleting:
        metadata["deletionTimestamp"] = "2026-12-02T00:00:00Z"
    return GadgetInstanceResource.from_body({"metadata": metadata, "spec": spec or {"image": "trace_exec"}})


class FakeApi:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.error: Exception | None = None

    async def add_finalizer(self, gi: GadgetInstanceResource) -> None:
        self.calls.append("add")
        if self.error is not None:
            raise self.error

    async def remove_finalizer(self, gi: GadgetInstanceResource) -> None:
        self.calls.append("remove")
        if self.error is not None:
            raise self.error


class World:
    def __init__(self) -> None:
        self.api = FakeApi()
        self.clock = FakeClock()
        self.resources: dict[str, GadgetInstanceResource] = {}
        self.done: set[str] = set()
        self.released: list[str] = []
        self.events: list[tuple[str, str]] = []

        async def warn(gi: GadgetInstanceResource, reason: str, message: str) -> None:
            self.events.append((reason, message))

        self.finalizers = Finalizers(
            self.api,  # type: ignore[arg-type]
            ExecutorSettings(backoff_initial=1.0, backoff_max=8.0),
            self.resources,
            deletion_done=self.done.__contains__,
            released=self.released.append,
            warn=warn,
            clock=self.clock,
        )

    async def sync(self, gi: GadgetInstanceResource) -> None:
        self.resources[gi.uid] = gi
        self.finalizers.sync(gi.uid)
        await self.finalizers.queue.join()


@pytest.fixture
async def world() -> AsyncIterator[World]:
    world = World()
    world.finalizers.start()
    yield world
    await world.finalizers.stop()


async def test_a_new_resource_gets_the_finalizer_once(world: World) -> None:
    await world.sync(resource())
    await world.sync(resource())  # the watch event of the add has not come yet: no second patch
    assert world.api.calls == ["add"]
    await world.sync(resource(finalizer=True))
    assert world.api.calls == ["add"]


async def test_a_refused_finalizer_is_shown_announced_once_and_retried_with_backoff(world: World) -> None:
    world.api.error = REFUSED
    await world.sync(resource())
    assert world.finalizers.refusal("uid-1") == str(REFUSED)
    assert world.events == [("FinalizerRefused", f"cannot add the cleanup finalizer: {REFUSED}")]
    (retry,) = world.clock.pending
    assert retry.when - world.clock.now == pytest.approx(1.0, rel=0.1)

    world.clock.advance(1.2)
    await world.finalizers.queue.join()
    assert world.api.calls == ["add", "add"]
    assert len(world.events) == 1, "the same refusal is announced once"
    (retry,) = world.clock.pending
    assert retry.when - world.clock.now == pytest.approx(2.0, rel=0.1)

    world.api.error = None  # the webhook is fixed
    world.clock.advance(2.4)
    await world.finalizers.queue.join()
    assert world.api.calls == ["add", "add", "add"]
    assert world.finalizers.refusal("uid-1") is None
    assert world.clock.pending == []


async def test_the_finalizer_goes_only_once_deletion_is_done(world: World) -> None:
    await world.sync(resource(finalizer=True, deleting=True))
    assert world.api.calls == []
    world.done.add("uid-1")
    await world.sync(resource(finalizer=True, deleting=True))
    assert (world.api.calls, world.released) == (["remove"], ["uid-1"])


async def test_a_resource_that_is_gone_or_can_never_run_is_left_alone(world: World) -> None:
    world.api.error = kube.KubeApiError(404, "not found")
    await world.sync(resource())
    assert world.finalizers.refusal("uid-1") is None
    assert world.clock.pending == []
    await world.sync(resource(spec={"image": ""}))  # invalid: nothing will run, no cleanup needed
    assert world.api.calls == ["add"]
