"""Kubernetes conditions (metav1.Condition shape) with the lastTransitionTime rule.

``lastTransitionTime`` moves only when a condition's ``status`` flips; a changed reason or message
alone keeps it. That is what ``kubectl wait``, kstatus and Argo CD expect.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

MAX_CONDITION_MESSAGE = 8192
"""The CRD caps condition messages at 32768 characters; a longer one gets the status write refused."""


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@functools.lru_cache(maxsize=4096)  # the same few "since" times are formatted on every render
def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with a ``Z``, second precision, as the API server writes times."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str = ""


def merge_conditions(
    previous: Iterable[Mapping[str, Any]], wanted: Iterable[Condition], *, generation: int, now: datetime
) -> list[dict[str, Any]]:
    """The ``conditions`` list for ``wanted``, keeping each unflipped condition's transition time."""
    before = {str(item.get("type")): item for item in previous if isinstance(item, Mapping)}
    merged = []
    for condition in wanted:
        status = "True" if condition.status else "False"
        old = before.get(condition.type)
        kept = old is not None and old.get("status") == status and old.get("lastTransitionTime")
        merged.append(
            {
                "type": condition.type,
                "status": status,
                "observedGeneration": generation,
                "lastTransitionTime": kept or format_time(now),
                "reason": condition.reason,
                "message": clip(condition.message, MAX_CONDITION_MESSAGE),
            }
        )
    return merged
