"""shardd for PyTorch trainers: tensors in and out of the node's shardd daemon
(NVMe drives and pinned memory), with no copies the data does not need.

Example::

    import torch, shardd

    with shardd.Client("unix:///run/shardd/shardd.sock") as client:
        client.put("job", "layers.0.weight", torch.randn(4096, 4096))
        weight = client.get_tensor("job", "layers.0.weight")     # a new tensor
        client.fetch_into("job", "layers.0.weight", pinned)       # into yours
        with client.view("job", "layers.0.weight") as view:       # in place
            total = view.tensor().sum()

Arrays and tensors cross as memory: numpy arrays, contiguous CPU torch
tensors (pinned or not) and any object with the buffer protocol. Their
element type and shape are stored with the shard. ``get`` returns numpy
arrays (bf16 and fp8 through ``ml_dtypes`` when it is installed),
``get_tensor`` torch tensors; torch is imported only by the calls that
return tensors.

Modules: :mod:`shardd.errors` (the exceptions), :mod:`shardd.cluster`
(several nodes: partitioned tensors, layer gather, the trainer loop),
:mod:`shardd.safetensors` (import and export of ``.safetensors`` files),
:mod:`shardd.dcp` (``torch.distributed.checkpoint`` storage),
:mod:`shardd.bench` (``python -m shardd.bench``).
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Iterable, Optional, Sequence, Tuple, Union

import numpy as np

from . import _buffers
from ._native import Client as _NativeClient
from ._native import ShardMeta, View as _NativeView, __version__
from .errors import *  # noqa: F401,F403
from .errors import BadRequest, BufferTooSmall, Error, NotFound

from .errors import __all__ as _error_names

__all__ = [
    "Client",
    "View",
    "Region",
    "PreparedFetch",
    "RegisteredRegion",
    "ShardArray",
    "ShardMeta",
    "Cluster",
    "Layer",
    "Trainer",
    "tensors_in",
    "import_safetensors",
    "export_safetensors",
    "DEFAULT_ENDPOINT",
    "__version__",
    *_error_names,
]

#: The daemon's default socket when it runs from the current directory.
DEFAULT_ENDPOINT = "unix://./shardd.sock"


class ShardArray(np.ndarray):
    """A numpy array that came from a shard; ``meta`` is the shard's
    :class:`ShardMeta`. Where numpy has no type for the shard's elements
    (bf16 or fp8 without ``ml_dtypes``), the array holds their bits as
    unsigned integers of the same width, and ``meta.dtype`` names them."""

    meta: Optional[ShardMeta]

    def __array_finalize__(self, obj):
        self.meta = getattr(obj, "meta", None)


def _as_shard_array(array: np.ndarray, meta: ShardMeta) -> ShardArray:
    out = array.view(ShardArray)
    out.meta = meta
    return out


def _durability(durable: bool, scratch: bool) -> str:
    if scratch and durable:
        raise ValueError("a scratch put is not durable: pass durable=False with scratch=True")
    return "scratch" if scratch else ("durable" if durable else "write_back")


class Client:
    """One connection to a shardd daemon: ``unix://PATH`` on the same node
    (zero-copy views and fetches out of the daemon's arena), or
    ``tcp://HOST:PORT``. Safe to use from many threads at once (their
    requests are pipelined on the one connection); the interpreter is
    released while a request waits. Use it as a context manager, or call
    :meth:`close`.

    Options: ``connect_timeout`` (seconds, default 10), ``request_timeout``
    (None: no limit), ``io_timeout`` (60), ``verify_checksums`` (check whole
    shards fetched over the socket, default True), ``verify_views`` (also
    those read from the arena, default False), ``zero_copy`` (map the
    arena, default True), ``max_fetch_alloc`` (largest ``get`` in bytes),
    ``client_name``.

    >>> client = shardd.Client("unix://./shardd.sock", request_timeout=30)
    """

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, **options: Any):
        self._native = _NativeClient(endpoint, **options)

    # -- connection ------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """The endpoint this client is connected to."""
        return self._native.endpoint

    @property
    def server(self) -> str:
        """The daemon's name and version, e.g. ``"shardd 0.1.0"``."""
        return self._native.server

    @property
    def zero_copy(self) -> bool:
        """Whether views and fetches read in place from the daemon's arena."""
        return self._native.zero_copy

    @property
    def zero_copy_refused(self) -> Optional[str]:
        """Why the arena the daemon offered was not mapped, if it was not."""
        return self._native.zero_copy_refused

    def is_connected(self) -> bool:
        """Whether the connection is up."""
        return self._native.is_connected()

    def close(self) -> None:
        """Closes the connection (views made from it keep their lease until
        they are gone). Later calls raise :class:`Disconnected`.

        >>> client.close()
        """
        self._native.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def ping(self) -> float:
        """A round trip to the daemon, in seconds.

        >>> client.ping() < 1
        True
        """
        return self._native.ping()

    # -- shards ----------------------------------------------------------

    def put(
        self,
        namespace: str,
        key: str,
        data: Any,
        *,
        durable: bool = True,
        scratch: bool = False,
        version: Optional[int] = None,
        dtype: Optional[str] = None,
        shape: Optional[Sequence[int]] = None,
    ) -> ShardMeta:
        """Stores ``data`` as the shard ``namespace/key`` and returns what is
        stored. ``data`` is a numpy array, a contiguous CPU torch tensor or
        any bytes-like object; its element type and shape are recorded
        (``dtype``/``shape`` override them, e.g. for raw bytes). With
        ``durable=False`` the daemon acknowledges once the bytes are in its
        memory and writes them to the drive in the background; with
        ``scratch=True`` as well, that write is never synced: it survives the
        daemon's crash but not a power loss (data a run recreates from its
        checkpoint, such as swap). ``version`` must be newer than the stored
        one (default: the next one).

        >>> client.put("job", "layers.0.weight", np.ones((2, 3), np.float32)).version
        1
        """
        mem = _buffers.memory(data, writable=False)
        dtype = dtype or mem.dtype or "raw"
        shape = list(shape) if shape is not None else (mem.shape if mem.dtype else [])
        return self._native.put(
            namespace,
            key,
            mem.address,
            mem.nbytes,
            mem.owner,
            dtype,
            [int(d) for d in shape],
            _durability(durable, scratch),
            version,
        )

    def get(self, namespace: str, key: str) -> ShardArray:
        """The whole shard as a new numpy array of its element type and shape
        (:class:`ShardArray`; ``.meta`` is its metadata). Raises
        :class:`NotFound` (a ``KeyError``) if there is no such shard.

        >>> client.get("job", "layers.0.weight").shape
        (2, 3)
        """
        meta, raw = self._native.get(namespace, key)
        array = _buffers.shaped(raw, _buffers.numpy_dtype(meta.dtype), meta.shape)
        return _as_shard_array(array, meta)

    def get_tensor(self, namespace: str, key: str):
        """The whole shard as a new torch tensor of its element type and shape.

        >>> client.get_tensor("job", "layers.0.weight").dtype
        torch.float32
        """
        import torch

        meta, raw = self._native.get(namespace, key)
        tensor = torch.from_numpy(raw).view(_buffers.torch_dtype(meta.dtype))
        if meta.shape and int(np.prod(meta.shape, dtype=np.int64)) == tensor.numel():
            tensor = tensor.reshape(meta.shape)
        return tensor

    def fetch_into(
        self,
        namespace: str,
        key: str,
        out: Any,
        offset: int = 0,
        *,
        range: Optional[Tuple[int, int]] = None,
    ) -> ShardMeta:
        """Fills ``out`` (any writable buffer: a numpy array, a CPU torch
        tensor, pinned memory, a bytearray) with the shard, starting
        ``offset`` bytes into ``out``, with no intermediate copy: from the
        daemon's arena on the same node (one copy), else straight from the
        socket. ``range=(start, length)`` reads that part of the shard only.
        Returns the shard's metadata. Raises :class:`BufferTooSmall` if
        ``out`` cannot hold it.

        >>> out = torch.empty(2, 3).pin_memory()
        >>> client.fetch_into("job", "layers.0.weight", out).nbytes
        24
        """
        mem = _buffers.memory(out, writable=True)
        if offset < 0 or offset > mem.nbytes:
            raise BufferTooSmall(f"offset {offset} lies outside the {mem.nbytes}-byte destination")
        meta, _ = self._native.fetch_into(
            namespace, key, mem.address + offset, mem.nbytes - offset, mem.owner, range
        )
        return meta

    def fetch_many_into(self, namespace: str, items: Sequence[Tuple], out: Any) -> list:
        """Fetches many shards of ``namespace`` in one request into ``out``
        (any writable buffer, as :meth:`fetch_into`): each item is ``(key,
        offset, nbytes)`` or ``(key, offset, nbytes, (start, length))`` (a
        range of the shard), its bytes going to ``out[offset:offset +
        nbytes]``. Places must lie in ``out`` and not overlap. Returns, in
        order, each member's :class:`ShardMeta`, or the exception it would
        have raised (returned, not raised: one missing shard does not fail
        the others).

        >>> out = np.empty(8192, np.uint8)
        >>> [type(r).__name__ for r in client.fetch_many_into("job", [("a", 0, 4096), ("gone", 4096, 4096)], out)]
        ['ShardMeta', 'NotFound']
        """
        mem = _buffers.memory(out, writable=True)
        return self._native.fetch_many_into(namespace, _batch_items(items), mem.address, mem.nbytes, mem.owner)

    def register_region(self, region: "Region") -> "RegisteredRegion":
        """Registers ``region`` on this connection, so that
        :meth:`fetch_into_region` can fill it. Over a Unix socket the daemon
        maps the region and writes the bytes itself; over TCP this client
        writes each payload into it as it arrives.

        >>> registered = client.register_region(shardd.Region(1 << 20))
        """
        return RegisteredRegion(self._native.register_region(region._native), region)

    def put_from_region(
        self,
        registered: "RegisteredRegion",
        namespace: str,
        items: Sequence[Tuple],
        *,
        durable: bool = True,
        scratch: bool = False,
    ) -> list:
        """Stores many shards of ``namespace`` in one request, each item
        ``(key, offset, nbytes)`` or ``(key, offset, nbytes, dtype, shape)``
        read from ``region[offset:offset + nbytes]``: by the daemon itself
        over a Unix socket (no bytes cross the socket), sent from the region
        over TCP. The ranges must not change until this returns. Returns
        each member's :class:`ShardMeta` or exception, as
        :meth:`fetch_many_into`.

        >>> region.numpy("f32", (2, 3))[:] = 1.0
        >>> client.put_from_region(registered, "job", [("w", 0, 24, "f32", (2, 3))])[0].shape
        [2, 3]
        """
        out = []
        for item in items:
            if len(item) == 3:
                key, offset, nbytes = item
                dtype, shape = "raw", ()
            elif len(item) == 5:
                key, offset, nbytes, dtype, shape = item
            else:
                raise BadRequest(f"a put item is (key, offset, nbytes[, dtype, shape]), not {item!r}")
            if int(offset) < 0 or int(nbytes) < 0:
                raise BadRequest(f"offset and nbytes must not be negative: {item!r}")
            out.append((str(key), int(offset), int(nbytes), str(dtype), [int(d) for d in shape]))
        return self._native.put_from_region(registered._native, namespace, out, _durability(durable, scratch))

    def fetch_into_region(self, registered: "RegisteredRegion", namespace: str, items: Sequence[Tuple]) -> list:
        """Fetches many shards of ``namespace`` in one request into a
        registered region, each item ``(key, offset, nbytes)`` or ``(key,
        offset, nbytes, (start, length))`` at ``offset`` in the region.
        Returns each member's :class:`ShardMeta` or exception, as
        :meth:`fetch_many_into`. An arena hit on the same node is one copy,
        made by the daemon; no bytes cross the socket.

        >>> region = shardd.Region(1 << 20)
        >>> registered = client.register_region(region)
        >>> client.fetch_into_region(registered, "job", [("layers.0.weight", 0, 24)])[0].nbytes
        24
        >>> region.numpy("f32", (2, 3), offset=0)
        """
        return self._native.fetch_into_region(registered._native, namespace, _batch_items(items))

    def prepare_fetch_into_region(
        self, registered: "RegisteredRegion", namespace: str, items: Sequence[Tuple]
    ) -> "PreparedFetch":
        """Keeps a :meth:`fetch_into_region` of ``items`` on the daemon, to
        run again with :meth:`fetch_prepared` as often as wanted: a layer
        gathered every step is sent once, and each step's request is a few
        bytes. Each run fetches the shards as they are then. The daemon
        forgets it when the returned object is gone, or with the connection.

        >>> layer = client.prepare_fetch_into_region(registered, "job", [("layers.0.weight", 0, 24)])
        >>> client.fetch_prepared(layer)[0].nbytes
        24
        """
        native = self._native.prepare_fetch_into_region(registered._native, namespace, _batch_items(items))
        return PreparedFetch(native, registered)

    def fetch_prepared(self, prepared: "PreparedFetch") -> list:
        """Runs a fetch kept by :meth:`prepare_fetch_into_region`: each
        member's :class:`ShardMeta` or exception, as
        :meth:`fetch_into_region`."""
        return self._native.fetch_prepared(prepared._native)

    def view(self, namespace: str, key: str, *, range: Optional[Tuple[int, int]] = None) -> "View":
        """A zero-copy, read-only view of the shard in the daemon's arena (same
        node): ``.numpy()`` and ``.tensor()`` make arrays over it without
        copying. The daemon keeps the bytes in place until the view and
        every array made from it are gone, or until the end of a ``with``
        block. Raises :class:`ZeroCopyUnavailable` over TCP.

        >>> with client.view("job", "layers.0.weight") as v:
        ...     float(v.numpy().sum())
        6.0
        """
        return View(self._native.view(namespace, key, range))

    def stat(self, namespace: str, key: str) -> dict:
        """Metadata of a shard and its state in the daemon's memory:
        ``{"meta": ShardMeta, "resident": bool, "dirty": bool,
        "flush_error": str | None}``.

        >>> client.stat("job", "layers.0.weight")["resident"]
        True
        """
        return self._native.stat(namespace, key)

    def ls(self, namespace: str, prefix: str = "") -> list:
        """Every shard of ``namespace`` whose key starts with ``prefix``, in
        key order (:class:`ShardMeta` each).

        >>> [m.key for m in client.ls("job", "layers.")]
        ['layers.0.weight']
        """
        return self._native.ls(namespace, prefix)

    def rm(self, namespace: str, key: str, version: Optional[int] = None) -> int:
        """Removes a shard (only if ``version`` is the stored one, when
        given); returns the version removed.

        >>> client.rm("job", "layers.0.weight")
        1
        """
        return self._native.rm(namespace, key, version)

    def put_file(
        self, namespace: str, key: str, path, *, durable: bool = True, scratch: bool = False, version: Optional[int] = None
    ) -> ShardMeta:
        """Stores the file at ``path`` as one (raw) shard, straight from a
        mapping of the file: no copy of it in memory. The file must not be
        truncated while it is read.

        >>> client.put_file("job", "blob", "weights.bin").nbytes
        1073741824
        """
        from . import _native

        return _native.put_file(self._native, namespace, key, os.fspath(path), _durability(durable, scratch), version)

    def get_file(self, namespace: str, key: str, path) -> ShardMeta:
        """Writes a shard into the file at ``path``, in pieces through buffers
        that are reused; the file appears only once complete and checked.

        >>> client.get_file("job", "blob", "copy.bin").version
        1
        """
        from . import _native

        return _native.get_file(self._native, namespace, key, os.fspath(path))

    # -- the daemon's memory ---------------------------------------------

    def prefetch(self, namespace: str, keys: Iterable[Union[str, Tuple[str, int, Optional[int]]]]) -> dict:
        """Hints that shards will be needed soon, most urgent first: each item
        is a key (urgency by position) or ``(key, order, deadline_unix_ms)``.
        The daemon loads them into its arena in the background.

        >>> client.prefetch("job", ["layers.1.weight", "layers.2.weight"])["queued"]
        2
        """
        items = []
        for position, item in enumerate(keys):
            if isinstance(item, str):
                items.append((item, position, None))
            else:
                key, order, deadline = item
                items.append((key, int(order), None if deadline is None else int(deadline)))
        return self._native.prefetch(namespace, items)

    def evict(self, namespace: str, keys: Iterable[str], *, drop: bool = False) -> dict:
        """Frees the daemon's in-memory copies of shards (the drive keeps
        them), or with ``drop=True`` deletes the shards.

        >>> client.evict("job", ["layers.0.weight"])["evicted"]
        ['layers.0.weight']
        """
        return self._native.evict(namespace, list(keys), drop)

    def set_schedule(self, namespace: str, keys: Iterable[str]) -> None:
        """Registers the order a training step uses shards in (a key may occur
        twice: forward and backward); the daemon then evicts the shard used
        furthest in the future. An empty order removes it.

        >>> client.set_schedule("job", ["layers.0.weight", "layers.1.weight", "layers.0.weight"])
        """
        self._native.set_schedule(namespace, list(keys))

    def verify(self, namespace: str, key: str, version: Optional[int] = None) -> dict:
        """Has the daemon check its in-memory copy of a shard against its
        checksum again (a copy that fails is dropped and read again from
        the drive): ``{"version": int | None, "outcome": "Intact" |
        "Dropped" | "Lost" | "NotResident"}``.

        >>> client.verify("job", "layers.0.weight")
        {'version': 1, 'outcome': 'Intact'}
        """
        return self._native.verify(namespace, key, version)

    def status(self) -> dict:
        """The daemon's state, as ``shardctl status --json`` prints it.

        >>> client.status()["arena"]["resident_shards"]
        3
        """
        return self._native.status()


def _batch_items(items: Sequence[Tuple]) -> list:
    out = []
    for item in items:
        if len(item) == 3:
            key, offset, nbytes = item
            shard_range = None
        elif len(item) == 4:
            key, offset, nbytes, shard_range = item
        else:
            raise BadRequest(f"a batch item is (key, offset, nbytes[, (start, length)]), not {item!r}")
        if int(offset) < 0 or int(nbytes) < 0:
            raise BadRequest(f"offset and nbytes must not be negative: {item!r}")
        start_len = None if shard_range is None else (int(shard_range[0]), int(shard_range[1]))
        out.append((str(key), int(offset), int(nbytes), start_len))
    return out


class Region:
    """Memory that fetches fill in place (:meth:`Client.fetch_into_region`):
    page aligned, in memory, locked there with ``pinned=True`` (pinned
    memory, ready for a copy to a GPU). Use it as your own buffer:
    :meth:`numpy` and :meth:`tensor` make arrays over it without copying,
    e.g. the destination of a layer gather. Read what a fetch placed once
    the fetch has returned.

    >>> region = shardd.Region(64 << 20, pinned=True)
    >>> region.tensor("bf16", (4096, 4096)).shape
    torch.Size([4096, 4096])
    """

    def __init__(self, nbytes: int, *, pinned: bool = False):
        from . import _native

        self._native = _native.Region(int(nbytes), pinned)

    @property
    def nbytes(self) -> int:
        """Bytes (a whole number of pages)."""
        return self._native.nbytes

    @property
    def pinned(self) -> bool:
        """Whether its pages are locked in memory."""
        return self._native.pinned

    def _span(self, dtype: str, shape, offset: int) -> Tuple[int, int]:
        itemsize = _buffers.numpy_dtype(dtype).itemsize
        count = int(np.prod(shape, dtype=np.int64)) if shape is not None else (self.nbytes - offset) // itemsize
        nbytes = count * itemsize
        if offset < 0 or offset + nbytes > self.nbytes:
            raise BufferTooSmall(f"{nbytes} bytes at offset {offset} do not fit the region's {self.nbytes}")
        return self._native.address + offset, nbytes

    def numpy(self, dtype: str = "u8", shape=None, *, offset: int = 0) -> np.ndarray:
        """A writable numpy array of ``dtype`` (a shardd element type name)
        and ``shape`` over the region from ``offset``, without a copy (the
        whole rest of the region, flat, without a shape).

        >>> region.numpy("f32", (2, 3)).sum()
        """
        address, nbytes = self._span(dtype, shape, offset)
        return _buffers.array_over(address, nbytes, self, _buffers.numpy_dtype(dtype), shape, readonly=False)

    def tensor(self, dtype: str = "u8", shape=None, *, offset: int = 0):
        """A torch tensor over the region from ``offset``, without a copy
        (it keeps the region alive).

        >>> region.tensor("f32", (2, 3)).sum()
        """
        import torch

        address, nbytes = self._span(dtype, shape, offset)
        raw = _buffers.array_over(address, nbytes, self, np.dtype(np.uint8), None, readonly=False)
        tensor = torch.from_numpy(raw).view(_buffers.torch_dtype(dtype))
        return tensor.reshape(shape) if shape is not None else tensor


class RegisteredRegion:
    """A :class:`Region` registered on one client's connection
    (:meth:`Client.register_region`); the registration ends with it, or
    with the connection."""

    def __init__(self, native, region: Region):
        self._native = native
        self.region = region

    @property
    def placed_by_daemon(self) -> bool:
        """Whether the daemon writes into the region itself (Unix socket)."""
        return self._native.placed_by_daemon


class PreparedFetch:
    """A fetch into a region kept on the daemon
    (:meth:`Client.prepare_fetch_into_region`), run by
    :meth:`Client.fetch_prepared`; forgotten once this object is gone."""

    def __init__(self, native, registered: RegisteredRegion):
        self._native = native
        self.registered = registered

    def __len__(self) -> int:
        return len(self._native)


class View:
    """A shard read in place in the daemon's arena (:meth:`Client.view`).

    Arrays made from it (:meth:`numpy`, :meth:`tensor`) are read-only and
    hold the daemon's lease until they are all gone; leaving a ``with``
    block, or :meth:`release`, gives the lease back at once, after which
    such arrays must not be read (they no longer hold the shard). A view
    whose connection ended, or whose lease ran out (the daemon's
    ``server.lease_timeout``, 10 minutes by default), can no longer be read:
    :meth:`check` raises :class:`LeaseLost`.
    """

    def __init__(self, native: _NativeView):
        self._native = native

    @property
    def meta(self) -> ShardMeta:
        """The shard's metadata."""
        return self._native.meta

    @property
    def nbytes(self) -> int:
        """Bytes in the view."""
        return self._native.nbytes

    @property
    def offset(self) -> int:
        """Offset in the shard of the first byte (for a range)."""
        return self._native.offset

    def _whole(self) -> bool:
        return self.offset == 0 and self.nbytes == self.meta.nbytes

    def numpy(self) -> np.ndarray:
        """A read-only numpy array over the bytes: the shard's element type
        and shape for a whole shard, else uint8.

        >>> view.numpy().flags.writeable
        False
        """
        self._native.check()
        native = self._native
        if self._whole():
            dtype, shape = _buffers.numpy_dtype(self.meta.dtype), self.meta.shape
        else:
            dtype, shape = np.dtype(np.uint8), None
        return _buffers.array_over(native.address, native.nbytes, native, dtype, shape, readonly=True)

    def tensor(self):
        """A torch tensor over the bytes, without a copy (torch has no
        read-only tensors: do not write to it).

        >>> view.tensor().shape
        torch.Size([2, 3])
        """
        import torch

        self._native.check()
        raw = _buffers.array_over(
            self._native.address, self._native.nbytes, self._native, np.dtype(np.uint8), None, readonly=True
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*not writable.*")
            tensor = torch.from_numpy(raw)
        if not self._whole():
            return tensor
        tensor = tensor.view(_buffers.torch_dtype(self.meta.dtype))
        if self.meta.shape and int(np.prod(self.meta.shape, dtype=np.int64)) == tensor.numel():
            tensor = tensor.reshape(self.meta.shape)
        return tensor

    def check(self) -> None:
        """Raises :class:`LeaseLost` if the bytes are no longer the shard's.

        >>> view.check()
        """
        self._native.check()

    def release(self) -> None:
        """Gives the daemon's lease back now.

        >>> view.release()
        """
        self._native.release()

    def __enter__(self) -> "View":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<shardd.View {self.meta.namespace}/{self.meta.key} v{self.meta.version}, {self.nbytes} bytes>"


from .cluster import Cluster, Layer, Trainer, tensors_in  # noqa: E402  (uses the names above)
from .safetensors import export_safetensors, import_safetensors  # noqa: E402
