"""The exceptions gadget-operator raises, as one tree.

    GadgetOperatorError
    ├── SpecError                     a GadgetInstance spec that can never work (field path + reason)
    ├── InvalidInstanceError          an instance ID or name that breaks the daemon's rules
    └── DaemonError                   a call to one node's gadget daemon failed
        ├── DaemonUnreachable         no answer at all (the node is retried with backoff)
        │   ├── DaemonUnavailable     nothing answered: refused, no socket, TLS handshake failed
        │   └── DaemonDeadlineExceeded the call did not finish within its deadline (a hung daemon)
        ├── DaemonRejected            the daemon answered with an error; ``message`` is its own text
        │   ├── InstanceAlreadyExists the ID or name is taken ("already exists")
        │   └── CallerRefused         the daemon (IG's multi-tenancy) refused who called, or no token
        │                             could be had (``tokens``): says nothing about the spec
        └── InstanceNotFound          the instance ID is unknown to the daemon

Every ``DaemonError`` carries the daemon's address so that status messages and logs can say which
node failed without extra bookkeeping.
"""

from __future__ import annotations


class GadgetOperatorError(Exception):
    """Base of every error this package raises on purpose."""


class SpecError(GadgetOperatorError):
    """A spec field is invalid. ``field`` is a JSON path such as ``spec.params.foo``."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class InvalidInstanceError(GadgetOperatorError):
    """An instance ID or name does not follow Inspektor Gadget's rules."""


class DaemonError(GadgetOperatorError):
    """A call to a gadget daemon failed."""

    def __init__(self, message: str, *, address: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.address = address

    def __str__(self) -> str:
        return f"{self.message} ({self.address})" if self.address else self.message


class DaemonUnreachable(DaemonError):
    """The daemon gave no answer; unlike a rejection, this says nothing about the instance."""


class DaemonUnavailable(DaemonUnreachable):
    """The daemon could not be reached at all."""


class DaemonDeadlineExceeded(DaemonUnreachable):
    """The daemon did not answer within the call's deadline."""


class DaemonRejected(DaemonError):
    """The daemon answered the call with an error of its own."""


class InstanceAlreadyExists(DaemonRejected):
    """The daemon already has an instance with this ID or name."""


class CallerRefused(DaemonRejected):
    """The call was refused for who made it (a missing, unknown or unauthorized token), not for what it
    asked: a dry run refused this way is no verdict on the spec."""


class InstanceNotFound(DaemonError):
    """The daemon has no instance with this ID."""
