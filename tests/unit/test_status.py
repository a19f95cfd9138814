"""A GadgetInstance's status says what really runs: phase, counts, conditions and per-node entries."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gadget_operator.status import (
    MAX_MESSAGE,
    MAX_NODE_MESSAGE,
    NodeOutcome,
    NodeState,
    Observed,
    Phase,
    clip,
    compute_status,
    status_differs,
)

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
T1 = T0 + timedelta(hours=1)
T0_TEXT = "2024-05-01T12:00:00Z"
T1_TEXT = "2024-05-01T13:00:00Z"
ID = "0123456789abcdef0123456789abcdef"
CRD_MAX_CONDITION_MESSAGE = 32768


def observed(
    *, now: datetime = T0, previous: Mapping[str, Any] | None = None, generation: int = 3, max_node_entries: int = 50
) -> Observed:
    return Observed(generation=generation, previous=previous or {}, now=now, max_node_entries=max_node_entries)


def outcomes(*items: NodeOutcome) -> dict[str, NodeOutcome]:
    return {item.node: item for item in items}


def running(node: str, **kw: Any) -> NodeOutcome:
    return NodeOutcome(node, NodeState.RUNNING, **kw)


def failed(node: str, message: str = "", **kw: Any) -> NodeOutcome:
    return NodeOutcome(node, NodeState.FAILED, message=message, **kw)


def conditions(status: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {condition["type"]: condition for condition in status["conditions"]}


def condition_states(status: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """Each condition as (status, reason)."""
    return {kind: (c["status"], c["reason"]) for kind, c in conditions(status).items()}


# -- phases --------------------------------------------------------------------------------------------


def test_all_nodes_running_is_running_and_ready() -> None:
    status = compute_status(
        observed(), desired_nodes=["n1", "n2", "n3"], outcomes=outcomes(running("n1"), running("n2"), running("n3"))
    )
    assert status["phase"] == Phase.RUNNING
    assert status["ready"] == "3/3"
    assert status["message"] == "running on 3 of 3 node(s)"
    assert (status["desiredNodes"], status["runningNodes"], status["failedNodes"], status["pendingNodes"]) == (
        3,
        3,
        0,
        0,
    )
    assert condition_states(status) == {
        "Ready": ("True", "AllNodesRunning"),
        "Progressing": ("False", "Converged"),
        "Degraded": ("False", "NoFailures"),
    }


def test_nodes_not_reported_yet_or_pending_make_the_resource_pending_and_progressing() -> None:
    status = compute_status(
        observed(),
        desired_nodes=["n1", "n2", "n3"],
        outcomes=outcomes(running("n1"), NodeOutcome("n2", NodeState.PENDING, message="creating")),
    )
    assert status["phase"] == Phase.PENDING
    assert status["ready"] == "1/3"
    assert status["pendingNodes"] == 2
    assert status["message"] == "running on 1 of 3 node(s); 2 pending"
    assert condition_states(status) == {
        "Ready": ("False", "NodesPending"),
        "Progressing": ("True", "Creating"),
        "Degraded": ("False", "NoFailures"),
    }
    assert conditions(status)["Progressing"]["message"] == "2 node(s) pending"


def test_some_failed_nodes_degrade_the_resource_and_the_degraded_condition_names_the_first_three() -> None:
    broken = [failed(f"n{i}", f"boom {i}") for i in (5, 2, 4, 1)]
    broken.append(NodeOutcome("n3", NodeState.UNREACHABLE))
    status = compute_status(
        observed(), desired_nodes=[f"n{i}" for i in range(7)], outcomes=outcomes(running("n0"), running("n6"), *broken)
    )
    assert status["phase"] == Phase.DEGRADED
    assert (status["runningNodes"], status["failedNodes"], status["pendingNodes"]) == (2, 5, 0)
    degraded = conditions(status)["Degraded"]
    assert (degraded["status"], degraded["reason"]) == ("True", "NodesFailed")
    # Sorted by node; an outcome without a message shows its state instead.
    assert degraded["message"] == "n1: boom 1; n2: boom 2; n3: Unreachable; and 2 more"
    assert status["message"] == f"running on 2 of 7 node(s); failed on 5: {degraded['message']}"
    assert condition_states(status)["Ready"] == ("False", "NodesFailed")


def test_exactly_three_failures_are_listed_without_a_remainder() -> None:
    status = compute_status(
        observed(),
        desired_nodes=["a", "b", "c", "d"],
        outcomes=outcomes(running("d"), *(failed(n, f"x{n}") for n in "abc")),
    )
    assert conditions(status)["Degraded"]["message"] == "a: xa; b: xb; c: xc"


def test_the_same_error_on_many_nodes_is_said_once_with_the_count_and_a_few_names() -> None:
    pull = "fetching gadget image: not found"
    nodes = [f"n{i:03d}" for i in range(200)]
    broken = [failed(node, pull) for node in nodes[:150]] + [failed("n150", "refused")]
    status = compute_status(observed(), desired_nodes=nodes, outcomes=outcomes(*broken))
    degraded = conditions(status)["Degraded"]["message"]
    assert degraded == f"{pull} (on 150 nodes: n000, n001, n002 and 147 more); n150: refused"
    assert degraded.count(pull) == 1


def test_failures_alongside_pending_nodes_are_degraded_not_failed() -> None:
    status = compute_status(observed(), desired_nodes=["n1", "n2"], outcomes=outcomes(failed("n1", "bad image")))
    assert status["phase"] == Phase.DEGRADED
    assert condition_states(status)["Progressing"] == ("True", "Creating")


def test_all_nodes_failed_is_failed() -> None:
    status = compute_status(
        observed(),
        desired_nodes=["n1", "n2"],
        outcomes=outcomes(failed("n1", "bad image"), NodeOutcome("n2", NodeState.UNREACHABLE, message="refused")),
    )
    assert status["phase"] == Phase.FAILED
    assert status["ready"] == "0/2"
    assert status["failedNodes"] == 2
    assert conditions(status)["Degraded"]["message"] == "n1: bad image; n2: refused"


def test_a_suspended_resource_is_suspended_and_counts_as_ready() -> None:
    status = compute_status(observed(), desired_nodes=["n1", "n2"], suspended=True)
    assert status["phase"] == Phase.SUSPENDED
    assert status["message"] == "suspended: no instances run"
    assert condition_states(status) == {
        "Ready": ("True", "Suspended"),
        "Progressing": ("False", "Suspended"),
        "Degraded": ("False", "Suspended"),
    }


def test_an_invalid_spec_fails_the_resource_with_invalid_spec_reasons_even_when_suspended() -> None:
    status = compute_status(observed(), spec_error="spec.image: must not be empty", suspended=True)
    assert status["phase"] == Phase.FAILED
    assert status["message"] == "invalid spec: spec.image: must not be empty"
    assert condition_states(status) == {
        "Ready": ("False", "InvalidSpec"),
        "Progressing": ("False", "InvalidSpec"),
        "Degraded": ("True", "InvalidSpec"),
    }
    assert {c["message"] for c in status["conditions"]} == {status["message"]}


def test_no_matching_node_is_pending_with_no_matching_nodes() -> None:
    status = compute_status(observed(), desired_nodes=[])
    assert status["phase"] == Phase.PENDING
    assert status["ready"] == "0/0"
    assert status["nodes"] == []
    assert condition_states(status) == {
        "Ready": ("False", "NoMatchingNodes"),
        "Progressing": ("False", "NoMatchingNodes"),
        "Degraded": ("False", "NoMatchingNodes"),
    }


def test_a_deleting_resource_is_terminating_and_lists_the_nodes_it_cleans() -> None:
    status = compute_status(
        observed(),
        outcomes=outcomes(NodeOutcome("n1", NodeState.REMOVING), NodeOutcome("n2", NodeState.REMOVING)),
        deleting=True,
        spec_error="deleting wins over a bad spec",
    )
    assert status["phase"] == Phase.TERMINATING
    assert status["message"] == "removing instances from 2 node(s)"
    assert [entry["node"] for entry in status["nodes"]] == ["n1", "n2"]
    assert condition_states(status) == {
        "Ready": ("False", "Terminating"),
        "Progressing": ("True", "Terminating"),
        "Degraded": ("False", "Terminating"),
    }


def test_a_deleting_resource_with_nothing_left_to_clean_says_so() -> None:
    status = compute_status(observed(), deleting=True)
    assert status["phase"] == Phase.TERMINATING
    assert status["message"] == "removing instances"


def test_an_unreachable_node_blocks_cleanup_and_degrades_a_terminating_resource() -> None:
    status = compute_status(
        observed(),
        outcomes=outcomes(
            NodeOutcome("n1", NodeState.REMOVING), NodeOutcome("n2", NodeState.UNREACHABLE, message="refused")
        ),
        deleting=True,
    )
    assert status["phase"] == Phase.TERMINATING
    assert status["message"] == "cannot remove instances from 1 node(s), retrying: n2: refused"
    degraded = conditions(status)["Degraded"]
    assert (degraded["status"], degraded["reason"], degraded["message"]) == ("True", "CleanupBlocked", "n2: refused")


# -- per-node entries ----------------------------------------------------------------------------------


def test_entries_are_sorted_by_node_and_carry_id_message_and_since_only_when_known() -> None:
    status = compute_status(
        observed(now=T1),
        desired_nodes=["n3", "n1", "n2"],
        outcomes=outcomes(
            running("n3", instance_id=ID, since=T0),
            failed("n1", "bad image", instance_id=ID),
            NodeOutcome("n2", NodeState.PENDING),
        ),
    )
    assert status["nodes"] == [
        {"node": "n1", "state": "Failed", "instanceId": ID, "message": "bad image", "since": T1_TEXT},
        {"node": "n2", "state": "Pending", "since": T1_TEXT},
        {"node": "n3", "state": "Running", "instanceId": ID, "since": T0_TEXT},
    ]


def test_a_node_no_longer_desired_that_still_holds_an_instance_is_shown_as_removing() -> None:
    removing = NodeOutcome("old", NodeState.REMOVING, "a" * 32, "removing the instance")
    status = compute_status(observed(), desired_nodes=["n1"], outcomes=outcomes(running("n1"), removing))
    assert [(entry["node"], entry["state"]) for entry in status["nodes"]] == [("n1", "Running"), ("old", "Removing")]
    assert (status["ready"], status["desiredNodes"], status["phase"]) == ("1/1", 1, "Running")
    assert condition_states(status)["Progressing"] == ("True", "Removing")
    assert "still on 1 node(s) that should not run it: old: removing the instance" in status["message"]


def test_a_suspended_resource_says_where_its_instances_still_run_and_why_removal_fails() -> None:
    stuck = NodeOutcome("n2", NodeState.UNREACHABLE, "a" * 32, "may still run an instance; no answer within 1s")
    status = compute_status(observed(), desired_nodes=["n1", "n2"], outcomes=outcomes(stuck), suspended=True)
    assert status["phase"] == "Suspended"
    assert [(entry["node"], entry["state"]) for entry in status["nodes"]] == [("n2", "Unreachable")]
    assert status["runningNodes"] == 0
    assert condition_states(status)["Degraded"] == ("True", "RemovalBlocked")
    assert "n2: may still run an instance" in conditions(status)["Degraded"]["message"]


def test_entries_are_capped_worst_first_and_the_rest_counted_as_omitted() -> None:
    status = compute_status(
        observed(max_node_entries=3),
        desired_nodes=["a", "b", "c", "d", "e", "f"],
        outcomes=outcomes(
            running("a"),
            running("b"),
            NodeOutcome("c", NodeState.PENDING),
            running("d"),
            NodeOutcome("e", NodeState.UNREACHABLE),
            failed("f", "x"),
        ),
    )
    assert [(entry["node"], entry["state"]) for entry in status["nodes"]] == [
        ("c", "Pending"),
        ("e", "Unreachable"),
        ("f", "Failed"),
    ]
    assert status["nodesOmitted"] == 3
    # The counts still cover every node.
    assert (status["runningNodes"], status["failedNodes"], status["pendingNodes"]) == (3, 2, 1)


def test_nodes_omitted_is_absent_when_every_entry_fits() -> None:
    status = compute_status(observed(max_node_entries=2), desired_nodes=["a", "b"], outcomes=outcomes(running("a")))
    assert "nodesOmitted" not in status
    assert len(status["nodes"]) == 1


def test_long_messages_are_clipped_to_what_the_crd_accepts() -> None:
    long = "e" * 5000
    status = compute_status(observed(), desired_nodes=["n1"], outcomes=outcomes(failed("n1", long)))
    entry = status["nodes"][0]["message"]
    assert len(entry) == MAX_NODE_MESSAGE
    assert entry.endswith("…")
    assert long.startswith(entry[:-1])

    spec_status = compute_status(observed(), spec_error="x" * 20000)
    assert len(spec_status["message"]) == MAX_MESSAGE
    assert spec_status["message"].endswith("…")


def test_condition_messages_stay_within_the_crd_cap_however_long_the_daemon_errors() -> None:
    long = "e" * 20000
    status = compute_status(
        observed(), desired_nodes=["n1", "n2", "n3"], outcomes=outcomes(*(failed(n, long) for n in ("n1", "n2", "n3")))
    )
    assert all(len(c["message"]) <= CRD_MAX_CONDITION_MESSAGE for c in status["conditions"])


@pytest.mark.parametrize(
    ("text", "limit", "clipped"),
    [("abc", 3, "abc"), ("abcd", 3, "ab…"), ("", 1, ""), ("abcdef", 1, "…")],
)
def test_clip_keeps_short_text_and_marks_cut_text_with_an_ellipsis(text: str, limit: int, clipped: str) -> None:
    assert clip(text, limit) == clipped
    assert len(clip(text, limit)) <= limit


# -- conditions over time ------------------------------------------------------------------------------


def test_conditions_and_status_carry_the_observed_generation() -> None:
    status = compute_status(observed(generation=7), desired_nodes=["n1"], outcomes=outcomes(running("n1")))
    assert status["observedGeneration"] == 7
    assert {c["observedGeneration"] for c in status["conditions"]} == {7}


def test_last_transition_time_moves_only_for_conditions_whose_status_flips() -> None:
    pending = compute_status(observed(now=T0), desired_nodes=["n1", "n2"], outcomes=outcomes(running("n1")))
    assert {c["lastTransitionTime"] for c in pending["conditions"]} == {T0_TEXT}

    # Still pending, different message: nothing flips.
    still = compute_status(
        observed(now=T1, previous=pending),
        desired_nodes=["n1", "n2", "n3"],
        outcomes=outcomes(running("n1")),
    )
    assert conditions(still)["Ready"]["message"] != conditions(pending)["Ready"]["message"]
    assert {c["lastTransitionTime"] for c in still["conditions"]} == {T0_TEXT}

    # Now running: Ready and Progressing flip, Degraded stays False.
    ready = compute_status(
        observed(now=T1, previous=pending), desired_nodes=["n1", "n2"], outcomes=outcomes(running("n1"), running("n2"))
    )
    times = {kind: c["lastTransitionTime"] for kind, c in conditions(ready).items()}
    assert times == {"Ready": T1_TEXT, "Progressing": T1_TEXT, "Degraded": T0_TEXT}


def test_a_condition_missing_from_the_previous_status_starts_now() -> None:
    previous = {"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": T0_TEXT}]}
    status = compute_status(observed(now=T1, previous=previous), desired_nodes=["n1"], outcomes=outcomes(running("n1")))
    times = {kind: c["lastTransitionTime"] for kind, c in conditions(status).items()}
    assert times == {"Ready": T0_TEXT, "Progressing": T1_TEXT, "Degraded": T1_TEXT}


# -- determinism ---------------------------------------------------------------------------------------


def test_the_same_inputs_render_the_same_status_so_nothing_is_written() -> None:
    def render(previous: Mapping[str, Any], now: datetime) -> dict[str, Any]:
        return compute_status(
            observed(now=now, previous=previous),
            desired_nodes=["n2", "n1", "n3"],
            outcomes=outcomes(
                running("n1", instance_id=ID, since=T0), failed("n2", "bad image", since=T0), running("n3", since=T0)
            ),
        )

    first = render({}, T0)
    assert render({}, T0) == first
    assert not status_differs(first, render({}, T0))
    # A later pass over an unchanged world, starting from what was written, writes nothing either.
    assert not status_differs(first, render(first, T1))


def test_an_unchanged_world_with_an_outcome_lacking_since_renders_the_same_status_later() -> None:
    def render(previous: Mapping[str, Any], now: datetime) -> dict[str, Any]:
        return compute_status(
            observed(now=now, previous=previous),
            desired_nodes=["ghost"],
            outcomes=outcomes(failed("ghost", "no such node in the cluster")),
        )

    first = render({}, T0)
    assert not status_differs(first, render(first, T1))


def test_status_differs_sees_any_change_a_reader_would_see() -> None:
    status = compute_status(observed(), desired_nodes=["n1"], outcomes=outcomes(running("n1")))
    assert not status_differs(status, dict(status))
    assert status_differs(status, {**status, "phase": "Pending"})
    assert status_differs({}, status)


# -- invariants ----------------------------------------------------------------------------------------

_states = st.sampled_from(list(NodeState))


@given(
    desired=st.dictionaries(st.from_regex(r"n[0-9]{1,3}", fullmatch=True), st.none() | _states, max_size=40),
    max_node_entries=st.integers(min_value=0, max_value=50),
)
def test_counts_add_up_and_every_shown_outcome_is_listed_or_counted_as_omitted(
    desired: dict[str, NodeState | None], max_node_entries: int
) -> None:
    reported = {node: NodeOutcome(node, state) for node, state in desired.items() if state is not None}
    status = compute_status(observed(max_node_entries=max_node_entries), desired_nodes=list(desired), outcomes=reported)
    assert status["runningNodes"] + status["failedNodes"] + status["pendingNodes"] == status["desiredNodes"]
    assert status["desiredNodes"] == len(desired)
    assert status["ready"] == f"{status['runningNodes']}/{status['desiredNodes']}"
    assert len(status["nodes"]) + status.get("nodesOmitted", 0) == len(reported)
    assert len(status["nodes"]) <= max_node_entries
    assert [entry["node"] for entry in status["nodes"]] == sorted(entry["node"] for entry in status["nodes"])
    assert min(status["pendingNodes"], status["runningNodes"], status["failedNodes"]) >= 0
