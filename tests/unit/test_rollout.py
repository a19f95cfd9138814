"""Rolling updates: how many nodes start a new spec at once, and when a rollout halts."""

from __future__ import annotations

import pytest

from gadget_operator import rollout
from gadget_operator.resource import UpdateStrategy, UpdateStrategyType, parse_spec
from gadget_operator.status import Progress

NODES = {f"n{i}" for i in range(10)}
ROLLING = UpdateStrategyType.ROLLING_UPDATE


@pytest.mark.parametrize(
    ("surge", "targets", "batch"),
    [(1, 10, 1), (3, 2, 3), ("25%", 10, 3), ("25%", 3, 1), ("1%", 1000, 10), ("100%", 7, 7), ("10%", 0, 1)],
)
def test_the_batch_is_a_count_or_a_percentage_rounded_up_and_at_least_one(
    surge: int | str, targets: int, batch: int
) -> None:
    assert UpdateStrategy(ROLLING, surge).batch_size(targets) == batch


def test_the_default_is_all_at_once_and_a_rolling_update_defaults_to_a_quarter() -> None:
    assert not parse_spec({"image": "x"}).update_strategy.rolling
    strategy = parse_spec({"image": "x", "updateStrategy": {"type": "RollingUpdate"}}).update_strategy
    assert strategy.rolling
    assert strategy.batch_size(8) == 2


def test_nodes_are_admitted_a_batch_at_a_time_as_earlier_ones_are_proven() -> None:
    plan = rollout.Rollout("digest")
    admitted = [node for node in sorted(NODES) if plan.admit(node, batch=2, targets=NODES, failed=())]
    assert admitted == ["n0", "n1"]
    assert plan.waiting == NODES - {"n0", "n1"}
    plan.updated.add("n0")
    assert plan.admit("n5", batch=2, targets=NODES, failed=())
    assert not plan.admit("n6", batch=2, targets=NODES, failed=())
    progress = plan.progress(batch=2, targets=NODES, failed=())
    assert progress == Progress(max_surge=2, updated=1, updating=2, waiting=7, halted=False)


def test_a_failure_in_the_batch_halts_the_rollout_even_with_room_left() -> None:
    plan = rollout.Rollout("digest")
    assert plan.admit("n0", batch=3, targets=NODES, failed=())
    assert not plan.admit("n1", batch=3, targets=NODES, failed={"n0"})
    progress = plan.progress(batch=3, targets=NODES, failed={"n0"})
    assert progress is not None
    assert progress.halted
    assert "halted; fix the spec to resume" in progress.describe().replace(" because the new spec failed:", ";")


def test_nodes_that_left_the_targets_do_not_hold_the_batch_and_a_finished_rollout_shows_nothing() -> None:
    plan = rollout.Rollout("digest")
    assert plan.admit("n0", batch=1, targets=NODES, failed=())
    assert not plan.admit("n1", batch=1, targets=NODES, failed=())
    assert plan.admit("n1", batch=1, targets=NODES - {"n0"}, failed=())  # n0 left the selector
    plan.updated |= {"n0", "n1"}
    assert plan.progress(batch=1, targets=NODES, failed=()) is None


def test_a_new_spec_starts_a_new_rollout_and_a_non_rolling_one_has_none() -> None:
    rollouts = rollout.Rollouts()
    first = rollouts.of("uid", "d1", rolling=True)
    assert first is not None
    assert rollouts.of("uid", "d1", rolling=True) is first
    first.admitted.add("n0")
    second = rollouts.of("uid", "d2", rolling=True)
    assert second is not None
    assert second.admitted == set()
    assert rollouts.of("uid", "d2", rolling=False) is None
    assert rollouts.get("uid") is None


def test_a_manual_rollout_admits_no_node_past_its_limit_until_a_step_raises_it() -> None:
    plan = rollout.Rollout("digest")
    assert plan.admit("n0", batch=1, targets=NODES, failed=(), limit=1)
    plan.updated.add("n0")
    assert not plan.admit("n1", batch=1, targets=NODES, failed=(), limit=1)  # room in the batch, but no step
    progress = plan.progress(batch=1, targets=NODES, failed=(), limit=1, strategy="Manual")
    assert progress is not None
    assert (progress.awaiting_step, progress.stopped) == (True, True)
    assert "waiting for the next step" in progress.describe()
    assert plan.admit("n1", batch=1, targets=NODES, failed=(), limit=2)  # one step granted
    progress = plan.progress(batch=1, targets=NODES, failed=(), limit=2, strategy="Manual")
    assert progress is not None
    assert not progress.awaiting_step


def test_a_paused_rollout_admits_nothing_and_says_so() -> None:
    plan = rollout.Rollout("digest")
    assert not plan.admit("n0", batch=3, targets=NODES, failed=(), paused=True)
    progress = plan.progress(batch=3, targets=NODES, failed=(), paused=True)
    assert progress is not None
    assert (progress.paused, progress.stopped, progress.as_status()["paused"]) == (True, True, True)
    assert "paused" in progress.describe()
    assert plan.admit("n0", batch=3, targets=NODES, failed=())


def test_manual_is_a_rolling_strategy_and_takes_the_same_batch_size() -> None:
    strategy = parse_spec(
        {"image": "x", "updateStrategy": {"type": "Manual", "rollingUpdate": {"maxSurge": 2}}}
    ).update_strategy
    assert (strategy.rolling, strategy.manual, strategy.batch_size(10)) == (True, True, 2)
    assert UpdateStrategy(ROLLING).manual is False
