"""The exceptions shardd raises, one per thing that can go wrong.

Every one derives from :class:`Error` and, where Python has a matching
builtin, from that too: a missing shard is a :class:`KeyError`, a timeout a
:class:`TimeoutError`, a lost connection a :class:`ConnectionError`, a bad
argument a :class:`ValueError`::

    try:
        client.get("job", "layers.0.weight")
    except shardd.NotFound:
        ...

``status`` is the daemon's status name (``"not_found"``, ``"busy"``, ...)
when the daemon answered with an error, else ``None``; ``current_version``
is the stored version with :class:`VersionConflict`.
"""

from ._native import Error

__all__ = [
    "Error",
    "NotFound",
    "VersionConflict",
    "NoSpace",
    "ChecksumMismatch",
    "TooLarge",
    "Unauthorized",
    "BadRequest",
    "Busy",
    "ShuttingDown",
    "Internal",
    "UnsupportedVersion",
    "DriveError",
    "InvalidEndpoint",
    "InvalidName",
    "ConnectError",
    "Disconnected",
    "ProtocolError",
    "Timeout",
    "LeaseLost",
    "ZeroCopyUnavailable",
    "BufferTooSmall",
    "TensorError",
    "FormatError",
    "Changed",
]

Error.status = None
Error.current_version = None


class NotFound(Error, KeyError):
    """No such shard (or tensor)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return Error.__str__(self)


class VersionConflict(Error):
    """The version is not newer than the stored one, or not the one expected;
    ``current_version`` is the stored version."""


class NoSpace(Error):
    """The daemon's drives have no room for the shard."""


class ChecksumMismatch(Error):
    """Bytes do not match the shard's CRC32C; nothing returned may be used."""


class TooLarge(Error, ValueError):
    """A length above a limit of the daemon."""


class Unauthorized(Error, PermissionError):
    """Not allowed."""


class BadRequest(Error, ValueError):
    """The request is malformed or names something invalid."""


class Busy(Error):
    """The daemon is at a limit right now; retry later."""


class ShuttingDown(Error):
    """The daemon is stopping and takes no new requests."""


class Internal(Error):
    """The daemon failed (see its log)."""


class UnsupportedVersion(Error):
    """The daemon and this client share no protocol version."""


class DriveError(Error, OSError):
    """A drive of the daemon failed reading or writing the shard (status
    ``io_error``); its other drives and its memory tier keep serving."""


class InvalidEndpoint(Error, ValueError):
    """The endpoint is not ``unix://PATH`` or ``tcp://HOST:PORT``."""


class InvalidName(Error, ValueError):
    """A namespace or key that is not valid (see docs/PROTOCOL.md, Names)."""


class ConnectError(Error, ConnectionError):
    """The daemon cannot be reached: is it running, is the address right?"""


class Disconnected(Error, ConnectionError):
    """The connection broke or was closed; make a new client."""


class ProtocolError(Error):
    """The daemon sent something this client does not understand."""


class Timeout(Error, TimeoutError):
    """A request took longer than its timeout."""


class LeaseLost(Error):
    """A view can no longer be read: it was released, its connection
    ended and the daemon dropped its lease, or its lease ran out (the
    daemon's ``server.lease_timeout``). Fetch the shard again."""


class ZeroCopyUnavailable(Error):
    """Zero-copy views need a Unix-socket connection to a daemon that shares
    its arena; use ``get`` or ``fetch_into``."""


class BufferTooSmall(Error, ValueError):
    """The destination cannot hold the shard or layer."""


class TensorError(Error):
    """A partitioned tensor is not what the request needs (another node
    count, torn by a concurrent put, ...)."""


class FormatError(Error, ValueError):
    """A file is not what it should be (a ``.safetensors`` file that does
    not parse, a tensor name that is no valid key)."""


class Changed(Error):
    """A shard was replaced while it was read, again and again; read it again."""
