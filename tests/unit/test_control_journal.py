"""The event log: numbered entries, a bounded replay that says what it dropped, readers that follow
live, and readers too slow to keep up that never hold anything up."""

from __future__ import annotations

import asyncio

import pytest

from gadget_operator.control import events
from gadget_operator.control.journal import Delivery, Journal
from gadget_operator.control.pb import control_pb2
from gadget_operator.control.recorder import Recorder
from gadget_operator.resource import GadgetInstanceResource
from gadget_operator.status import NodeOutcome, NodeState


def test_entries_are_numbered_from_one_with_the_time_they_were_appended() -> None:
    times = iter([10.0, 11.5])
    journal: Journal[str] = Journal(capacity=4, clock=lambda: next(times))
    first, second = journal.append("a"), journal.append("b")
    assert (first.sequence, first.timestamp, first.payload) == (1, 10.0, "a")
    assert (second.sequence, second.timestamp) == (2, 11.5)
    assert (journal.first_sequence, journal.last_sequence, journal.dropped) == (1, 2, 0)


def test_a_full_log_drops_its_oldest_entries_and_counts_them() -> None:
    journal: Journal[int] = Journal(capacity=3)
    for number in range(5):
        journal.append(number)
    assert [entry.payload for entry in journal.entries()] == [2, 3, 4]
    assert (journal.first_sequence, journal.dropped) == (3, 2)


async def test_a_reader_gets_the_replay_then_what_comes_live_and_the_first_entry_says_what_was_dropped() -> None:
    journal: Journal[str] = Journal(capacity=2)
    for payload in "abc":
        journal.append(payload)
    reader = journal.follow()
    replayed = [await anext(reader), await anext(reader)]
    waiting = asyncio.ensure_future(anext(reader))  # nothing new yet: it waits for the next append
    journal.append("d")
    live = [await asyncio.wait_for(waiting, 5)]
    journal.append("e")
    live.append(await anext(reader))
    await reader.aclose()
    assert [(d.entry.sequence, d.entry.payload, d.missed) for d in replayed + live] == [
        (2, "b", 1),
        (3, "c", 0),
        (4, "d", 0),
        (5, "e", 0),
    ]


async def test_a_replay_only_read_ends_at_the_entry_that_was_newest_when_it_began() -> None:
    journal: Journal[str] = Journal()
    journal.append("a")
    journal.append("b")
    taken = []
    async for delivery in journal.follow(live=False):
        taken.append(delivery.entry.payload)
        journal.append("later")
    assert taken == ["a", "b"]


async def test_a_reader_too_slow_to_keep_up_skips_what_the_log_dropped_and_is_told_how_much() -> None:
    journal: Journal[int] = Journal(capacity=4)
    reader = journal.follow()
    journal.append(0)
    first = await anext(reader)
    for number in range(1, 11):  # appending never waits for the reader
        journal.append(number)
    second = await anext(reader)
    assert (first.entry.sequence, first.missed) == (1, 0)
    assert (second.entry.sequence, second.missed) == (8, 6)  # 2..7 were dropped before it read them
    assert [(await anext(reader)).entry.sequence for _ in range(3)] == [9, 10, 11]
    await reader.aclose()


async def test_closing_the_log_ends_every_live_reader() -> None:
    journal: Journal[str] = Journal()
    journal.append("a")
    readers = [journal.follow() for _ in range(3)]
    assert [(await anext(reader)).entry.payload for reader in readers] == ["a"] * 3
    waiting = [asyncio.ensure_future(anext(reader)) for reader in readers]
    journal.close()
    for pending in waiting:
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(pending, 5)


def test_a_log_needs_room_for_one_entry() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Journal(capacity=0)


# -- what the recorder keeps --------------------------------------------------------------------------


def gi(name: str = "trace", namespace: str = "team-a") -> GadgetInstanceResource:
    return GadgetInstanceResource.from_body(
        {"metadata": {"uid": "uid-1", "name": name, "namespace": namespace}, "spec": {"image": "trace_exec"}}
    )


def test_an_outcome_is_recorded_when_its_instance_runs_or_fails_not_when_only_its_message_changes() -> None:
    recorder = Recorder()
    pending = NodeOutcome("n1", NodeState.PENDING, "id-1", "starting")
    running = NodeOutcome("n1", NodeState.RUNNING, "id-1")
    failed = NodeOutcome("n1", NodeState.FAILED, "id-1", "pull failed")
    recorder.outcome(gi(), None, pending)
    recorder.outcome(gi(), pending, running)
    recorder.outcome(gi(), running, NodeOutcome("n1", NodeState.RUNNING, "id-1", "other text"))
    recorder.outcome(gi(), running, failed)
    recorder.outcome(gi(), failed, NodeOutcome("n1", NodeState.FAILED, "id-1", "pull failed again"))
    recorder.outcome(None, None, running)  # a resource already forgotten
    recorded = [entry.payload for entry in recorder.journal.entries()]
    assert recorded == [
        events.InstanceEvent(
            events.InstanceAction.RUNNING, events.Ref("GadgetInstance", "team-a", "trace"), "n1", "id-1"
        ),
        events.InstanceEvent(
            events.InstanceAction.FAILED,
            events.Ref("GadgetInstance", "team-a", "trace"),
            "n1",
            "id-1",
            "pull failed",
        ),
    ]


def test_a_node_is_reported_unreachable_once_and_reachable_when_it_answers_again() -> None:
    now = iter(range(100, 200))
    recorder = Recorder(clock=lambda: float(next(now)))
    recorder.joined("n1", "unix:///n1.sock")
    recorder.reached("n1")
    recorder.unreachable("n1", "connection refused")
    recorder.unreachable("n1", "deadline exceeded")
    assert (recorder.contacts["n1"].reachable, recorder.contacts["n1"].last_error) == (False, "deadline exceeded")
    assert recorder.contacts["n1"].last_contact == 100.0
    recorder.reached("n1")
    recorder.reached("n1")
    recorder.left("n1")
    actions = [(e.payload.action, e.payload.message) for e in recorder.journal.entries()]  # type: ignore[union-attr]
    assert actions == [
        (events.NodeAction.JOINED, ""),
        (events.NodeAction.UNREACHABLE, "connection refused"),
        (events.NodeAction.REACHABLE, ""),
        (events.NodeAction.LEFT, ""),
    ]
    assert "n1" not in recorder.contacts


def test_every_payload_becomes_a_log_entry_with_its_own_field_and_a_summary() -> None:
    ref = events.Ref("ClusterGadgetInstance", "", "all")
    intent = control_pb2.Intent(resync=control_pb2.ResyncIntent(all=True))
    payloads: list[tuple[events.Event, str]] = [
        (events.InstanceEvent(events.InstanceAction.CREATED, ref, "", "id-1", "written"), "instance"),
        (events.NodeEvent(events.NodeAction.LEFT, "n1"), "node"),
        (events.ResourceEvent(ref, "Running", "Pending", "running on 3 of 3"), "resource"),
        (events.RolloutEvent(events.RolloutAction.STEP, ref, 1, 3, ("n2",)), "rollout"),
        (events.LeadershipEvent("leader", "pod_1"), "leadership"),
        (events.IntentEvent(intent, control_pb2.IntentResult(accepted=True, message="ok")), "intent"),
    ]
    journal: Journal[events.Event] = Journal(clock=lambda: 1700000000.25)
    for payload, _ in payloads:
        journal.append(payload)
    entries = [events.log_entry(Delivery(entry, 0)) for entry in journal.entries()]
    assert [entry.WhichOneof("event") for entry in entries] == [field for _, field in payloads]
    assert all(entry.summary for entry in entries)
    assert entries[0].timestamp.seconds == 1700000000
    assert entries[0].timestamp.nanos == 250_000_000
    assert entries[0].instance.resource == control_pb2.ResourceRef(kind="ClusterGadgetInstance", name="all")
    assert entries[3].rollout.action == control_pb2.RolloutEvent.STEP
    assert list(entries[3].rollout.nodes) == ["n2"]
    assert "ClusterGadgetInstance all" in entries[0].summary
    assert entries[5].intent.intent.resync.all
