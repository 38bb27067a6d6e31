"""``.safetensors`` files in and out of shardd, streamed in bounded memory by
the native client (the file is mapped, never read whole into memory).

Importing stores each tensor as the shard ``prefix + name`` with its element
type and shape, and the file's header beside them; exporting the same
shards writes the same file back, byte for byte (the same as ``shardctl
import FILE NS`` and ``shardctl export NS FILE``)::

    shardd.import_safetensors(client, "model.safetensors", "job", prefix="model/")
    shardd.export_safetensors(client, "job", "copy.safetensors", prefix="model/")
"""

from __future__ import annotations

import os
from typing import Optional, Sequence, Union

from . import _native

__all__ = ["import_safetensors", "export_safetensors"]


def import_safetensors(
    client,
    path: Union[str, os.PathLike],
    namespace: str,
    prefix: str = "",
    partitions=None,
) -> dict:
    """Stores every tensor of the ``.safetensors`` file at ``path`` as the shard
    ``prefix + name`` of ``namespace`` on ``client``'s daemon, then the
    file's header; returns ``{"tensors": int, "nbytes": int}``. With
    ``partitions=cluster`` (a :class:`shardd.Cluster`), each tensor is
    instead partitioned across the cluster's nodes (as
    :meth:`Cluster.put_partitioned` does), ready for layer gathers; ``client``
    may then be None. The file must not be truncated while it is read.

    >>> shardd.import_safetensors(client, "model.safetensors", "job", prefix="model/")["tensors"]
    104
    """
    if partitions is not None:
        return _native.import_safetensors_partitioned(partitions._native, os.fspath(path), namespace, prefix)
    return _native.import_safetensors(client._native, os.fspath(path), namespace, prefix)


def export_safetensors(
    client,
    namespace: str,
    path: Union[str, os.PathLike],
    keys: Optional[Sequence[str]] = None,
    prefix: str = "",
) -> dict:
    """Writes the shards of ``namespace`` whose keys start with ``prefix`` (or
    only ``keys``) to the ``.safetensors`` file at ``path``, each named by its
    key without ``prefix``; returns ``{"tensors", "nbytes",
    "original_header"}``. Shards imported from a file, unchanged in type,
    shape and length, give that file back byte for byte. The file appears
    only once complete and checked against the shards' checksums.

    >>> shardd.export_safetensors(client, "job", "copy.safetensors", prefix="model/")["original_header"]
    True
    """
    return _native.export_safetensors(client._native, namespace, os.fspath(path), prefix, list(keys) if keys else None)
