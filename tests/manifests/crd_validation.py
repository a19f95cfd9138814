"""Validate objects against the shipped GadgetInstance CRD the way the API server would, without one.

What runs, in the API server's order:

1. ``null`` values of fields that are not ``nullable`` are dropped (the server prunes them too).
2. ``default:`` values are filled in (``apply_defaults``).
3. The openAPIV3Schema is checked with ``jsonschema`` (Draft 4, which OpenAPI v3 schemas follow;
   ``x-kubernetes-*`` keys are ignored by it). ``pattern`` uses RE2 (``google-re2``, a cel-python
   dependency), the engine the API server uses, so ``$`` and ``\\s`` mean what they mean there.
4. What jsonschema cannot see: unknown fields (as ``kubectl``'s default strict field validation reports
   them), duplicates in ``x-kubernetes-list-type`` set and map lists, and every
   ``x-kubernetes-validations`` CEL rule, evaluated with ``celpy`` at its schema node with ``self``
   bound to the value there (through properties, array items and additionalProperties).

Messages follow the API server's wording (``spec.logLevel: Invalid value: 9: spec.logLevel in body
should be less than or equal to 6``), so an expected message reads like what ``kubectl`` prints.

Not emulated: CEL cost estimation, transition rules (``oldSelf``), ``metadata`` validation.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import re2
import yaml

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "crds" / "gadgetinstances.gadget-operator.io.yaml"

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}


# -- loading -------------------------------------------------------------------------------------------


@functools.cache
def _load_crd_cached() -> dict[str, Any]:
    with CRD_PATH.open(encoding="utf-8") as stream:
        crd: dict[str, Any] = yaml.safe_load(stream)
    return crd


def load_crd() -> dict[str, Any]:
    """The CRD as shipped in ``crds/`` (a fresh copy each call, so callers may change it)."""
    return copy.deepcopy(_load_crd_cached())


def storage_version(crd: dict[str, Any] | None = None) -> dict[str, Any]:
    crd = crd if crd is not None else load_crd()
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    return dict(version)


def openapi_schema(crd: dict[str, Any] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = storage_version(crd)["schema"]["openAPIV3Schema"]
    return schema


# -- the public entry points ---------------------------------------------------------------------------


def validate(obj: dict[str, Any], crd: dict[str, Any] | None = None) -> list[str]:
    """Every error the API server would report for creating ``obj``; empty if it would be admitted."""
    schema = openapi_schema(crd)
    value = apply_defaults(_drop_nulls(obj, schema), schema)
    errors = _schema_errors(value, schema)
    errors += list(_walk(value, schema, ""))
    return list(dict.fromkeys(errors))


def apply_defaults(obj: Any, schema: dict[str, Any]) -> Any:
    """A copy of ``obj`` with every absent field that has a ``default:`` filled in, as the server does."""
    value = copy.deepcopy(obj)
    _default_in_place(value, schema)
    return value


def structural_problems(schema: dict[str, Any], path: str = "openAPIV3Schema") -> list[str]:
    """Why the API server would call ``schema`` non-structural (or reject it otherwise); empty if fine."""
    return list(_structural(schema, path, root=True))


# -- step 1 and 2: nulls and defaults ------------------------------------------------------------------


def _drop_nulls(value: Any, schema: dict[str, Any]) -> Any:
    if isinstance(value, dict):
        result = {}
        for key, item in value.items():
            sub = _child_schema(schema, key)
            if item is None and not (sub or {}).get("nullable"):
                continue
            result[key] = _drop_nulls(item, sub or {})
        return result
    if isinstance(value, list):
        return [_drop_nulls(item, schema.get("items") or {}) for item in value]
    return value


def _default_in_place(value: Any, schema: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for name, sub in (schema.get("properties") or {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
        for key, item in value.items():
            sub = _child_schema(schema, key)
            if sub:
                _default_in_place(item, sub)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            _default_in_place(item, schema["items"])


def _child_schema(schema: dict[str, Any], key: str) -> dict[str, Any] | None:
    properties = schema.get("properties") or {}
    if key in properties:
        return dict(properties[key])
    extra = schema.get("additionalProperties")
    return dict(extra) if isinstance(extra, dict) else None


# -- step 3: the openAPIV3Schema through jsonschema ----------------------------------------------------


def _re2_pattern(
    validator: jsonschema.protocols.Validator, pattern: str, instance: Any, schema: dict[str, Any]
) -> Iterator[jsonschema.ValidationError]:
    if validator.is_type(instance, "string") and not re2.search(pattern, instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


_format_checker = jsonschema.FormatChecker(formats=())


_RFC3339 = re2.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


@_format_checker.checks("date-time", raises=ValueError)
def _is_date_time(instance: object) -> bool:
    """RFC 3339, as the server checks ``format: date-time`` (the T, the seconds and an offset)."""
    if not isinstance(instance, str):
        return True
    if not _RFC3339.search(instance):
        return False
    datetime.fromisoformat(instance.upper())  # the ranges: month 13 or second 61 raise ValueError
    return True


_Validator = jsonschema.validators.extend(jsonschema.Draft4Validator, {"pattern": _re2_pattern})


def _schema_errors(value: Any, schema: dict[str, Any]) -> list[str]:
    validator = _Validator(schema, format_checker=_format_checker)
    found = sorted(validator.iter_errors(value), key=lambda e: (_path(e.absolute_path), str(e.validator)))
    errors = []
    for error in found:
        errors.extend(_describe(error))
    return errors


def _describe(error: jsonschema.ValidationError) -> list[str]:
    """One jsonschema error in the API server's words."""
    path = _path(error.absolute_path)
    where = path or "<root>"
    keyword, limit, value = error.validator, error.validator_value, error.instance
    shown = json.dumps(value, ensure_ascii=False) if not isinstance(value, dict | list) else _json_type(value)
    if keyword == "required":
        missing = [name for name in limit if isinstance(value, dict) and name not in value]
        return [f"{_join(path, name)}: Required value" for name in missing]
    if keyword == "type":
        actual = _json_type(value)
        return [f'{where}: Invalid value: "{actual}": {where} in body must be of type {limit}: "{actual}"']
    if keyword == "enum":
        supported = ", ".join(json.dumps(item) for item in limit)
        return [f"{where}: Unsupported value: {shown}: supported values: {supported}"]
    if keyword == "minLength":
        return [f"{where}: Invalid value: {shown}: {where} in body should be at least {limit} chars long"]
    if keyword == "maxLength":
        return [f"{where}: Too long: may not be more than {limit} bytes"]
    if keyword == "pattern":
        return [f"{where}: Invalid value: {shown}: {where} in body should match '{limit}'"]
    if keyword == "minimum":
        return [f"{where}: Invalid value: {shown}: {where} in body should be greater than or equal to {limit}"]
    if keyword == "maximum":
        return [f"{where}: Invalid value: {shown}: {where} in body should be less than or equal to {limit}"]
    if keyword in ("maxItems", "maxProperties"):
        return [f"{where}: Too many: {len(value)}: must have at most {limit} items"]
    if keyword in ("minItems", "minProperties"):
        return [f"{where}: Invalid value: {len(value)}: {where} in body should have at least {limit} items"]
    if keyword == "format":
        return [f"{where}: Invalid value: {shown}: {where} in body must be of type {limit}: {shown}"]
    return [f"{where}: {error.message}"]


# -- step 4: unknown fields, list types and CEL rules --------------------------------------------------


def _walk(value: Any, schema: dict[str, Any], path: str) -> Iterator[str]:
    if not _has_type(value, schema):
        return  # jsonschema has reported it; the server runs no rules on a value of the wrong type
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        prunes = bool(properties) and extra is None and not schema.get("x-kubernetes-preserve-unknown-fields")
        for key, item in value.items():
            child = _join(path, key)
            if key in properties:
                yield from _walk(item, properties[key], child)
            elif isinstance(extra, dict):
                yield from _walk(item, extra, child)
            elif prunes:
                yield f'{path or "<root>"}: unknown field "{child}"'
    elif isinstance(value, list):
        yield from _list_type_errors(value, schema, path)
        if isinstance(schema.get("items"), dict):
            for index, item in enumerate(value):
                yield from _walk(item, schema["items"], f"{path}[{index}]")
    for rule in schema.get("x-kubernetes-validations") or ():
        yield from _check_rule(rule, value, path)


def _list_type_errors(value: list[Any], schema: dict[str, Any], path: str) -> Iterator[str]:
    list_type = schema.get("x-kubernetes-list-type")
    if list_type == "set":
        keyed = [json.dumps(item, sort_keys=True) for item in value]
    elif list_type == "map":
        names = schema.get("x-kubernetes-list-map-keys") or []
        keyed = [json.dumps({n: item.get(n) for n in names} if isinstance(item, dict) else item) for item in value]
    else:
        return
    seen: set[str] = set()
    for index, key in enumerate(keyed):
        if key in seen:
            yield f"{path}[{index}]: Duplicate value: {key}"
        seen.add(key)


def _check_rule(rule: dict[str, Any], value: Any, path: str) -> Iterator[str]:
    where = _join(path, rule["fieldPath"].lstrip(".")) if rule.get("fieldPath") else path or "<root>"
    outcome = evaluate_rule(rule["rule"], value)
    if outcome is True:
        return
    if outcome is False:
        message = rule.get("message") or f"failed rule: {rule['rule']}"
        if rule.get("messageExpression"):
            rendered = evaluate_rule(rule["messageExpression"], value)
            message = rendered if isinstance(rendered, str) and rendered else message
        yield f'{where}: Invalid value: "{_json_type(value)}": {message}'
    else:
        yield f'{where}: Invalid value: "{_json_type(value)}": rule {rule["rule"]!r} did not evaluate: {outcome}'


@functools.cache
def _program(text: str) -> celpy.Runner:
    environment = celpy.Environment()
    return environment.program(environment.compile(text))


def compile_rule(text: str) -> None:
    """Raise ``celpy.CELParseError`` if ``text`` is not a CEL expression."""
    _program(text)


def evaluate_rule(text: str, value: Any) -> bool | str:
    """``text`` evaluated with ``self`` bound to ``value``.

    Returns a rule's result (True or False), a message expression's string, or why it failed to run.
    """
    try:
        result = _program(text).evaluate({"self": celpy.json_to_cel(value)})
    except Exception as error:  # celpy raises a variety; the server reports them all as errors
        return f"{type(error).__name__}: {error}"
    if isinstance(result, celpy.celtypes.BoolType):
        return bool(result)
    if isinstance(result, celpy.celtypes.StringType):
        return str(result)
    return f"not a bool: {result!r}"


# -- structural schemas --------------------------------------------------------------------------------

_ALLOWED = {
    "type", "format", "description", "title", "default", "example", "enum", "nullable",
    "maximum", "minimum", "exclusiveMaximum", "exclusiveMinimum", "multipleOf",
    "maxLength", "minLength", "pattern", "maxItems", "minItems", "uniqueItems",
    "maxProperties", "minProperties", "required", "items", "properties", "additionalProperties",
    "allOf", "anyOf", "oneOf", "not", "externalDocs",
    "x-kubernetes-preserve-unknown-fields", "x-kubernetes-embedded-resource", "x-kubernetes-int-or-string",
    "x-kubernetes-list-type", "x-kubernetes-list-map-keys", "x-kubernetes-map-type", "x-kubernetes-validations",
}  # fmt: skip
_FORBIDDEN = {"$ref", "$schema", "id", "definitions", "dependencies", "patternProperties", "additionalItems"}


def _structural(schema: dict[str, Any], path: str, *, root: bool = False) -> Iterator[str]:
    for key in schema:
        if key in _FORBIDDEN:
            yield f"{path}: {key} is not allowed in a CRD schema"
        elif key not in _ALLOWED:
            yield f"{path}: unknown keyword {key!r}"
    typ = schema.get("type")
    if not typ and not (schema.get("x-kubernetes-int-or-string") or schema.get("x-kubernetes-preserve-unknown-fields")):
        yield f"{path}: type is required in a structural schema"
    if typ and typ not in _JSON_TYPES:
        yield f"{path}: type {typ!r} is not one of {sorted(_JSON_TYPES)}"
    if schema.get("uniqueItems"):
        yield f"{path}: uniqueItems cannot be true; use x-kubernetes-list-type: set"
    if schema.get("additionalProperties") is False:
        yield f"{path}: additionalProperties: false is not allowed (unknown fields are pruned)"
    if "properties" in schema and "additionalProperties" in schema:
        yield f"{path}: properties and additionalProperties are mutually exclusive"
    if (typ == "array") != ("items" in schema):
        yield f"{path}: items goes with type array, and type array needs items"
    if "items" in schema and not isinstance(schema["items"], dict):
        yield f"{path}: items must be a single schema"
    if "x-kubernetes-map-type" in schema and typ != "object":
        yield f"{path}: x-kubernetes-map-type is only for objects"
    yield from _list_type_problems(schema, path)
    if "default" in schema:
        for error in _Validator(schema, format_checker=_format_checker).iter_errors(schema["default"]):
            yield f"{path}: default {schema['default']!r} is invalid: {error.message}"
    for index, rule in enumerate(schema.get("x-kubernetes-validations") or ()):
        try:
            compile_rule(rule["rule"])
        except Exception as error:
            yield f"{path}.x-kubernetes-validations[{index}]: does not compile: {error}"
    for name, sub in (schema.get("properties") or {}).items():
        if (
            root
            and name == "metadata"
            and (set(sub) - {"type", "properties"} or set(sub.get("properties") or {}) - {"name", "generateName"})
        ):
            yield f"{path}.properties.metadata: at the root, metadata may only restrict name and generateName"
        yield from _structural(sub, f"{path}.properties.{name}")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _structural(schema["additionalProperties"], f"{path}.additionalProperties")
    if isinstance(schema.get("items"), dict):
        yield from _structural(schema["items"], f"{path}.items")


def _list_type_problems(schema: dict[str, Any], path: str) -> Iterator[str]:
    list_type = schema.get("x-kubernetes-list-type")
    items = schema.get("items") if isinstance(schema.get("items"), dict) else {}
    if list_type is None:
        if "x-kubernetes-list-map-keys" in schema:
            yield f"{path}: x-kubernetes-list-map-keys needs x-kubernetes-list-type: map"
        return
    if schema.get("type") != "array" or list_type not in ("atomic", "set", "map"):
        yield f"{path}: x-kubernetes-list-type {list_type!r} is not valid here"
    if list_type == "set" and items.get("type") in ("object", "array"):
        yield f"{path}: a set's items must be scalars"
    if list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys") or []
        if items.get("type") != "object" or not keys:
            yield f"{path}: a map list needs object items and x-kubernetes-list-map-keys"
        for key in keys:
            sub = (items.get("properties") or {}).get(key)
            if sub is None:
                yield f"{path}: map key {key!r} is not a property of the items"
            elif key not in (items.get("required") or []) and "default" not in sub:
                yield f"{path}: map key {key!r} must be required or have a default"


# -- helpers -------------------------------------------------------------------------------------------


def _has_type(value: Any, schema: dict[str, Any]) -> bool:
    typ = schema.get("type")
    if not typ:
        return True
    if isinstance(value, bool):
        return typ == "boolean"
    return isinstance(value, _JSON_TYPES[typ])


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    for name in ("object", "array", "string", "integer", "number"):
        if isinstance(value, _JSON_TYPES[name]):
            return name
    return type(value).__name__


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _path(parts: Any) -> str:
    text = ""
    for part in parts:
        text = f"{text}[{part}]" if isinstance(part, int) else _join(text, str(part))
    return text
