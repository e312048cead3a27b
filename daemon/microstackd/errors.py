"""Operator-facing errors.

Every failure a person can cause or fix has its own class; the class docstring
is the text the operator sees when no more specific message is given. Errors
say whose side broke the rules: ``Local…`` for this node, ``Peer…`` for the
other side. ``wire/status.py`` maps each class to one gRPC status code (``code`` below)
and back, by name, through the ``microstackd-error`` trailer; nothing below
``api/`` and ``peers/`` knows about gRPC.
"""

from __future__ import annotations


class MicrostackError(Exception):
    """microstackd failed."""

    #: The gRPC status code name this error maps to (see wire/status.py).
    code = "INTERNAL"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or self.__class__.__name__).strip())

    @property
    def message(self) -> str:
        return str(self.args[0])


class InvalidArgument(MicrostackError):
    """A request field is malformed."""

    code = "INVALID_ARGUMENT"


class WrongPassword(MicrostackError):
    """The control node rejected the cluster password: it is wrong, or the
    connection is being intercepted."""

    code = "UNAUTHENTICATED"


class PeerAuthenticationFailed(MicrostackError):
    """The control node could not prove it knows the cluster password: wrong
    password, or a machine in the middle. Nothing was sent that depends on
    the password."""

    code = "UNAUTHENTICATED"


class BootstrapProtocolError(MicrostackError):
    """The peer broke the bootstrap protocol."""

    code = "INVALID_ARGUMENT"


class TooManyAttempts(MicrostackError):
    """Too many failed attempts from this address; wait and try again."""

    code = "RESOURCE_EXHAUSTED"


class ControlBusy(MicrostackError):
    """The control node is bootstrapping as many nodes as it takes at once;
    this node waits its turn and tries again."""

    code = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str | None = None, retry_after: float = 1.0) -> None:
        super().__init__(message)
        #: Seconds until the control expects to take this node's bootstrap.
        self.retry_after = retry_after


class BootstrapBusy(MicrostackError):
    """Too many bootstrap exchanges are open from this address; the joiner waits and retries."""

    code = "RESOURCE_EXHAUSTED"


class AlreadyInitialised(MicrostackError):
    """This node is already part of a cluster."""

    code = "FAILED_PRECONDITION"


class NotInitialised(MicrostackError):
    """This node is not part of a cluster yet: run `microstackctl init`."""

    code = "FAILED_PRECONDITION"


class AlreadyRunning(MicrostackError):
    """Another microstackd is using this state directory."""

    code = "FAILED_PRECONDITION"


class NotControl(MicrostackError):
    """This node is not the control node of a cluster."""

    code = "FAILED_PRECONDITION"


class NameTaken(MicrostackError):
    """A node with this name is already in the cluster."""

    code = "ALREADY_EXISTS"


class PermissionDenied(MicrostackError):
    """The caller may not make this call."""

    code = "PERMISSION_DENIED"


class NotFound(MicrostackError):
    """No such node."""

    code = "NOT_FOUND"


class ControlUnreachable(MicrostackError):
    """The control node cannot be reached."""

    code = "UNAVAILABLE"


class StorageError(MicrostackError):
    """The state directory could not be written (is the disk full?)."""

    code = "INTERNAL"


class DiskFull(StorageError):
    """The disk holding the state directory is full."""


class EnrolmentFailed(MicrostackError):
    """The enrolment failed."""

    code = "ABORTED"


class ServiceFailed(MicrostackError):
    """A service of this node failed to start or stop."""

    code = "ABORTED"


class ConfigError(MicrostackError):
    """A role's configuration could not be rendered or written."""

    code = "FAILED_PRECONDITION"


class NodeUnreachable(MicrostackError):
    """A member node cannot be reached."""

    code = "UNAVAILABLE"


class TokenRejected(MicrostackError):
    """The join token is not valid."""

    code = "UNAUTHENTICATED"


class ShuttingDown(MicrostackError):
    """microstackd is shutting down; re-attach once it is back (`microstackctl watch`)."""

    code = "UNAVAILABLE"


class CloudError(MicrostackError):
    """An operation on the control's OpenStack cloud failed (Nova, Neutron, Glance)."""

    code = "FAILED_PRECONDITION"


class NodeNotEmpty(MicrostackError):
    """The compute still hosts instances: move them away first, or remove it by force."""

    code = "FAILED_PRECONDITION"


class VersionSkew(MicrostackError):
    """This node's microstackd version is outside the cluster's skew window:
    the message says which side to upgrade (docs/api.md, "Versions")."""

    code = "FAILED_PRECONDITION"


class BadArchive(MicrostackError):
    """The backup archive is not a whole microstackd backup: cut short,
    damaged, or not one at all. Nothing was changed."""

    code = "INVALID_ARGUMENT"


class RestoreRefused(MicrostackError):
    """A backup cannot be restored here (this node is in a cluster already,
    or the archive was made for another address, name or version); the
    message says what to do. Nothing was changed."""

    code = "FAILED_PRECONDITION"
