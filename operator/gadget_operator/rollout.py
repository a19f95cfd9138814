"""Rolling updates: which nodes may start a resource's new spec now.

A spec change never takes a node's running gadget away before the new one is proven there (the
planner keeps the old instance until then). ``RollingUpdate`` also limits the spread: only
``maxSurge`` nodes that run an older spec start the new one at a time; the next ones start as those
are proven, and none start while one of them has failed, so a broken spec stops at the first batch
and everything else keeps the previous one. A node that runs nothing of the resource yet has nothing
to protect and starts the new spec at once. A fixed spec is a new digest, so a new rollout.

Kept in memory only: after a restart the nodes already running the new spec are admitted again as
they are seen, and no new node is admitted before every target node has been seen, so the batch is
never exceeded.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Progress:
    """A rollout as the status shows it."""

    max_surge: int
    updated: int
    updating: int
    waiting: int
    halted: bool

    def describe(self) -> str:
        text = (
            f"rolling update: {self.updated} node(s) updated, {self.updating} updating, "
            f"{self.waiting} waiting with the previous spec (at most {self.max_surge} at once)"
        )
        if self.halted:
            text += "; halted because the new spec failed: fix the spec to resume"
        return text

    def as_status(self) -> dict[str, object]:
        return {
            "maxSurge": self.max_surge,
            "updatedNodes": self.updated,
            "updatingNodes": self.updating,
            "waitingNodes": self.waiting,
            "halted": self.halted,
        }


@dataclass(slots=True)
class Rollout:
    """One resource's rollout of one spec (by digest)."""

    digest: str
    admitted: set[str] = field(default_factory=set)
    """Nodes allowed to start the new spec beside an older one."""
    updated: set[str] = field(default_factory=set)
    """Nodes where the new spec has been proven running; they never count against the batch again."""
    waiting: set[str] = field(default_factory=set)
    """Nodes that run only an older spec and have not been admitted yet."""
    version: int = 0
    """Counts changes of ``admitted`` and ``nodes``, so that what is derived from them is recomputed."""
    nodes: frozenset[str] | None = None
    """Shared store: the nodes the new spec's one instance covers while the rollout has not reached
    every node (None once it has); each step is a new instance, as IG instances are immutable."""

    def updating(self, targets: Collection[str]) -> set[str]:
        return {node for node in self.admitted - self.updated if node in targets}

    def admit(self, node: str, *, batch: int, targets: Collection[str], failed: Collection[str]) -> bool:
        """Whether ``node`` (which runs an older spec) may start the new one now; admits it if so."""
        if node in self.admitted:
            return True
        updating = self.updating(targets)
        if len(updating) >= batch or any(n in failed for n in updating):
            self.waiting.add(node)
            return False
        self.admitted.add(node)
        self.waiting.discard(node)
        self.version += 1
        return True

    def readmit(self, node: str) -> None:
        """``node`` already runs the new spec (seen after a restart, or a node set that was written)."""
        if node not in self.admitted:
            self.admitted.add(node)
            self.waiting.discard(node)
            self.version += 1

    def progress(self, *, batch: int, targets: Collection[str], failed: Collection[str]) -> Progress | None:
        """The status of the rollout, or None when it is over (nothing updating or waiting)."""
        updating = self.updating(targets)
        waiting = {node for node in self.waiting if node in targets}
        if not updating and not waiting:
            return None
        return Progress(
            max_surge=batch,
            updated=sum(1 for node in self.updated if node in targets),
            updating=len(updating),
            waiting=len(waiting),
            halted=bool(waiting) and any(node in failed for node in updating),
        )


class Rollouts:
    """The rollout of each rolling resource's current spec, by resource UID."""

    def __init__(self) -> None:
        self._by_uid: dict[str, Rollout] = {}

    def of(self, uid: str, digest: str, *, rolling: bool) -> Rollout | None:
        """The rollout of spec ``digest`` (a new one when the spec changed); None if not rolling."""
        current = self._by_uid.get(uid)
        if not rolling:
            self._by_uid.pop(uid, None)
            return None
        if current is None or current.digest != digest:
            current = self._by_uid[uid] = Rollout(digest)
        return current

    def get(self, uid: str) -> Rollout | None:
        return self._by_uid.get(uid)

    def forget(self, uid: str) -> None:
        self._by_uid.pop(uid, None)
