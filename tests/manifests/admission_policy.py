"""Evaluate a ValidatingAdmissionPolicy (admissionregistration.k8s.io/v1) the way the API server does,
without one: its matchConstraints, matchConditions, variables and validations, with ``celpy``.

What runs, in the API server's order, for one admission request:

1. ``matchConstraints.resourceRules``: the request's group, resource and operation must be listed.
2. ``matchConditions``: every one must be true, or the policy is skipped (the request is admitted).
3. ``variables``, in order, each bound under ``variables.<name>`` for those after it.
4. ``validations``, in order; the first that is false denies the request (the API server reports that
   one: a second failing validation is not shown, as a real kube-apiserver 1.36 does). Its message is
   ``messageExpression``'s value, unless that fails, is blank or has a line break: then ``message``.

Kubernetes' CEL libraries beyond standard CEL that policies here use: ``find`` (the regex library:
the leftmost-first match of a RE2 expression, ``""`` when none). ``matches`` is celpy's, with RE2 too.

Not emulated: type checking, cost limits, ``params``/``paramKind``, ``namespaceObject``, ``authorizer``,
audit annotations, namespace and object selectors of bindings.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import celpy
import re2


@dataclass(frozen=True, slots=True)
class Denial:
    """A request the policy denies: the message the API server shows, and what messageExpression gave
    (``None`` if it failed)."""

    message: str
    expression_message: str | None


def _find(text: celpy.celtypes.StringType, pattern: celpy.celtypes.StringType) -> celpy.celtypes.StringType:
    match = re2.search(str(pattern), str(text))
    return celpy.celtypes.StringType(match.group(0) if match else "")


KUBERNETES_FUNCTIONS = {"find": _find}


@functools.cache
def _program(text: str) -> celpy.Runner:
    environment = celpy.Environment()
    return environment.program(environment.compile(text), functions=KUBERNETES_FUNCTIONS)


def compile_expression(text: str) -> None:
    """Raise ``celpy.CELParseError`` if ``text`` is not a CEL expression."""
    _program(text)


def evaluate(text: str, activation: Mapping[str, Any]) -> Any:
    """``text`` evaluated with ``activation`` (CEL values); a ``celpy.CELEvalError`` is raised, not returned."""
    result = _program(text).evaluate(dict(activation))
    if isinstance(result, celpy.CELEvalError):
        raise result
    return result


def request(
    obj: Mapping[str, Any],
    *,
    operation: str = "CREATE",
    old: Mapping[str, Any] | None = None,
    group: str = "gadget-operator.io",
    resource: str = "gadgetinstances",
) -> dict[str, Any]:
    """An admission request for ``obj`` (its namespace is the request's)."""
    return {
        "operation": operation,
        "namespace": obj.get("metadata", {}).get("namespace", ""),
        "name": obj.get("metadata", {}).get("name", ""),
        "resource": {"group": group, "version": "v1alpha1", "resource": resource},
        "object": obj,
        "oldObject": old,
    }


def matches(policy: Mapping[str, Any], req: Mapping[str, Any]) -> bool:
    """Whether the request is one of the policy's matchConstraints.resourceRules."""
    for rule in policy["spec"]["matchConstraints"]["resourceRules"]:
        if (
            _listed(req["resource"]["group"], rule["apiGroups"])
            and _listed(req["resource"]["resource"], rule["resources"])
            and _listed(req["operation"], rule["operations"])
        ):
            return True
    return False


def _listed(value: str, listed: list[str]) -> bool:
    return "*" in listed or value in listed


def review(policy: Mapping[str, Any], req: Mapping[str, Any]) -> Denial | None:
    """What the policy says about the request: ``None`` when admitted (or not matched), else the denial."""
    if not matches(policy, req):
        return None
    spec = policy["spec"]
    activation: dict[str, Any] = {
        "object": celpy.json_to_cel(req["object"]),
        "oldObject": celpy.json_to_cel(req["oldObject"]),
        "request": celpy.json_to_cel(
            {
                "operation": req["operation"],
                "namespace": req["namespace"],
                "name": req["name"],
                "resource": req["resource"],
            }
        ),
    }
    for condition in spec.get("matchConditions", []):
        if not evaluate(condition["expression"], activation):
            return None
    variables: dict[str, Any] = {}
    for variable in spec.get("variables", []):
        activation["variables"] = celpy.celtypes.MapType(variables)
        variables[celpy.celtypes.StringType(variable["name"])] = evaluate(variable["expression"], activation)
    activation["variables"] = celpy.celtypes.MapType(variables)
    for validation in spec["validations"]:
        if evaluate(validation["expression"], activation):
            continue
        expression_message = None
        if "messageExpression" in validation:
            with contextlib.suppress(celpy.CELEvalError):
                expression_message = str(evaluate(validation["messageExpression"], activation))
        shown = expression_message
        if shown is None or not shown.strip() or "\n" in shown:
            shown = validation.get("message") or f"failed expression: {validation['expression']}"
        return Denial(shown, expression_message)
    return None
