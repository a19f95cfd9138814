"""Readiness on evidence and the dry-run verdicts, as pure rules."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import replace

import pytest

from gadget_operator import errors, readiness, validation
from gadget_operator.daemon import model
from gadget_operator.daemon.client import GadgetInfo
from gadget_operator.resource import parse_spec
from gadget_operator.status import NodeState

REPORTED = model.GadgetInstance(id="a" * 32, name="trace", image="trace_exec", status=model.InstanceStatus.RUNNING)


def test_running_as_the_daemon_says_it_is_not_running_until_proven() -> None:
    assert readiness.judge(REPORTED, proven=False).state is NodeState.PENDING
    assert readiness.judge(REPORTED, proven=True).state is NodeState.RUNNING


def test_an_error_the_daemon_reports_wins_over_any_earlier_proof() -> None:
    failed = replace(REPORTED, status=model.InstanceStatus.ERROR, message="pulling image: not found")
    assert readiness.judge(failed, proven=True) == readiness.Judgement(NodeState.FAILED, "pulling image: not found")
    assert not readiness.needs_probe(failed, proven=())


def test_a_probe_that_answers_with_an_error_fails_the_node_with_it() -> None:
    probed = readiness.ProbeResult(readiness.Evidence.FAILED, "starting operators: loading eBPF: permission denied")
    judged = readiness.judge(REPORTED, proven=False, probed=probed)
    assert judged == readiness.Judgement(NodeState.FAILED, probed.message)


def test_an_instance_the_daemon_does_not_report_is_pending() -> None:
    assert readiness.judge(None, proven=False) == readiness.Judgement(NodeState.PENDING, readiness.NOT_STARTED)


class FakeDaemon:
    """Answers GetGadgetInfo(use-instance) like IG does: given error, or the info."""

    def __init__(self, error: errors.DaemonError | None) -> None:
        self.error = error

    def on_behalf_of(self, namespace: str | None) -> FakeDaemon:
        return self

    async def wait_initialized(self, instance_id: str, *, deadline: float) -> GadgetInfo:
        await asyncio.sleep(0)
        if self.error is not None:
            raise self.error
        return GadgetInfo(name="trace_exec", image="trace_exec", params=())

    async def get_gadget_info(
        self, image: str, params: Mapping[str, str] | None = None, *, deadline: float | None = None
    ) -> GadgetInfo:
        raise NotImplementedError


@pytest.mark.parametrize(
    ("error", "evidence"),
    [
        (None, readiness.Evidence.PROVEN),
        (errors.DaemonDeadlineExceeded("no answer within 1s", address="x"), readiness.Evidence.STARTING),
        (errors.DaemonUnavailable("unreachable: refused", address="x"), readiness.Evidence.UNREACHABLE),
        (errors.InstanceNotFound(f"instance {'a' * 32} not found", address="x"), readiness.Evidence.ABSENT),
        (errors.DaemonRejected("starting operators: boom", address="x"), readiness.Evidence.FAILED),
    ],
)
async def test_each_answer_to_the_probe_is_one_kind_of_evidence(
    error: errors.DaemonError | None, evidence: readiness.Evidence
) -> None:
    result = await readiness.probe(FakeDaemon(error), "a" * 32, deadline=1.0)  # type: ignore[arg-type]
    assert result.evidence is evidence


def test_a_dry_run_verdict_is_shared_by_every_spec_with_the_same_image_and_parameters() -> None:
    verdicts = validation.Verdicts()
    first = parse_spec({"image": "trace_exec", "params": {"a": "1"}, "tags": ["x"]})
    same_check = parse_spec({"image": "trace_exec", "params": {"a": "1"}, "nodes": ["n1"], "logLevel": 3})
    other = parse_spec({"image": "trace_exec", "params": {"a": "2"}})
    verdicts.put(first, validation.Verdict(accepted=False, node="n1", message="bad"))
    assert verdicts.get(same_check) == validation.Verdict(accepted=False, node="n1", message="bad")
    assert verdicts.get(other) is None
