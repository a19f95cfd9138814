"""The liveness verdict: a stale API heartbeat or a lagging event loop fails the probe."""

from __future__ import annotations

import asyncio

import pytest

from gadget_operator.liveness import TICK, Liveness, Unhealthy
from gadget_operator.settings import LivenessSettings

SETTINGS = LivenessSettings(heartbeat_interval=10.0, max_heartbeat_age=120.0, max_loop_lag=30.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Api:
    """The heartbeat call: answers, fails, or never answers."""

    def __init__(self) -> None:
        self.error: Exception | None = None
        self.hang = False
        self.answered = asyncio.Event()

    async def version(self) -> dict[str, str]:
        if self.hang:
            await asyncio.Event().wait()
        if self.error is not None:
            raise self.error
        self.answered.set()
        return {"gitVersion": "v1.35.0"}


def liveness(api: Api, clock: Clock, settings: LivenessSettings = SETTINGS) -> Liveness:
    return Liveness(api.version, settings, clock=clock)


async def test_a_fresh_heartbeat_is_live() -> None:
    clock, api = Clock(), Api()
    probe = liveness(api, clock)
    assert await probe.beat()
    clock.now += 30
    probe.tick(clock.now)
    assert probe.check() == {"apiHeartbeatAge": 30.0, "loopLag": 0.0}


async def test_a_heartbeat_older_than_the_limit_fails_with_the_last_error() -> None:
    clock, api = Clock(), Api()
    probe = liveness(api, clock)
    assert await probe.beat()
    api.error = TimeoutError()
    clock.now += 60
    assert not await probe.beat()
    probe.tick(clock.now)
    probe.check()  # 60 s: still within the limit

    clock.now += 61
    probe.tick(clock.now)
    with pytest.raises(Unhealthy, match=r"no successful API call for 121s \(limit 120s\); last error: TimeoutError"):
        probe.check()

    api.error = None
    assert await probe.beat()
    assert probe.check()["apiHeartbeatAge"] == 0.0


async def test_a_heartbeat_that_never_answers_counts_as_failed() -> None:
    clock, api = Clock(), Api()
    api.hang = True
    probe = liveness(api, clock, LivenessSettings(heartbeat_interval=0.05, max_heartbeat_age=1.0))
    assert not await probe.beat()
    assert probe.last_error == "TimeoutError"
    assert probe.last_success is None


def test_without_any_successful_heartbeat_the_age_counts_from_the_start() -> None:
    clock, api = Clock(), Api()
    probe = liveness(api, clock)
    clock.now += 119
    probe.tick(clock.now)
    assert probe.check()["apiHeartbeatAge"] == 119.0
    clock.now += 2
    probe.tick(clock.now)
    with pytest.raises(Unhealthy, match="no successful API call since start"):
        probe.check()


async def test_a_lagging_event_loop_fails() -> None:
    clock, api = Clock(), Api()
    probe = liveness(api, clock)
    assert await probe.beat()
    expected = clock.now + TICK
    clock.now = expected + 31  # the ticker woke 31 s late
    probe.tick(expected)
    assert await probe.beat()
    with pytest.raises(Unhealthy, match=r"the event loop lags 31\.0s behind \(limit 30s\)"):
        probe.check()


async def test_a_ticker_that_has_not_woken_for_too_long_fails() -> None:
    clock, api = Clock(), Api()
    probe = liveness(api, clock)
    assert await probe.beat()
    probe.tick(clock.now)
    clock.now += TICK + 29
    assert await probe.beat()
    assert probe.check()["loopLag"] == 29.0
    clock.now += 2
    assert await probe.beat()
    with pytest.raises(Unhealthy, match="the event loop lags"):
        probe.check()


async def test_start_runs_the_heartbeat_and_stop_ends_it() -> None:
    api = Api()
    probe = Liveness(api.version, LivenessSettings(heartbeat_interval=0.01))
    probe.start()
    try:
        async with asyncio.timeout(10):
            await api.answered.wait()
    finally:
        await probe.stop()
    assert probe.last_success is not None
    assert probe.check()["apiHeartbeatAge"] >= 0
