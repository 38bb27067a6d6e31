"""DeepSpeed's NVMe swap through the shardd daemon.

With ``offload_param`` / ``offload_optimizer`` on device ``nvme``, each
DeepSpeed rank swaps parameters and optimizer state to files of its own
through the async I/O handle its swappers build from
``AsyncIOBuilder().load().aio_handle(...)``. :func:`install` makes those
swappers build a :class:`SwapHandle` instead: the same methods with the
same results, but each swap file is a shard in the node's daemon, written
back from its memory without syncing (swap data is scratch data) and read
from it straight into DeepSpeed's buffers. Two lines, before ``deepspeed.initialize`` (or
``zero.Init``)::

    import shardd.deepspeed
    shardd.deepspeed.install(endpoint="unix:///run/shardd/shardd.sock", namespace="job42")

Nothing is written under the configured ``nvme_path`` (DeepSpeed still
creates its empty swap folders there).

Swap files map to shards: one namespace per job and rank
(``{namespace}.rank{rank}``), the key from the file's path below
``nvme_path`` (``zero_stage_3/optimizer/rank0/12.tensor.swp``). A write
at offset 0 of a whole file is one write-back put; a write at another
offset, or one shorter than what the file holds, reads the shard, changes
those bytes and puts it again (a file keeps its tail, as ``pwrite`` does).
A read fills the whole buffer from ``file_offset`` or fails.

Operations run on a few threads while the caller goes on; operations on one
file run in the order they were submitted, across handles. ``wait()``
returns the number of operations completed since the last ``wait`` and
raises :class:`SwapFailed`, naming every operation that failed, if any did
(DeepSpeed's own handle only prints such errors).
"""

from __future__ import annotations

import ctypes
import hashlib
import mmap
import os
import re
import shutil
import sys
import threading
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from . import Client, _buffers
from .errors import Error, NotFound

__all__ = ["SwapHandle", "SwapFailed", "install", "uninstall", "learned_order", "DEFAULT_ENDPOINT"]

DEFAULT_ENDPOINT = "unix://./shardd.sock"

#: O_DIRECT's alignment, as DeepSpeed's handle reports it (per thread).
_DIRECT_ALIGNMENT = 512
#: Longest key the daemon takes.
_MAX_KEY_LEN = 256
#: Modules of DeepSpeed that bind ``AsyncIOBuilder`` at import time and
#: build swap handles from it.
SWAPPER_MODULES = (
    "deepspeed.runtime.swap_tensor.partitioned_param_swapper",
    "deepspeed.runtime.swap_tensor.partitioned_optimizer_swapper",
    "deepspeed.runtime.swap_tensor.pipelined_optimizer_swapper",
)


class SwapFailed(Error):
    """Swap operations failed; ``failures`` lists ``(operation, file,
    reason)`` for each."""

    def __init__(self, failures: List[Tuple[str, str, str]]):
        self.failures = failures
        lines = "; ".join(f"{op} {path}: {reason}" for op, path, reason in failures)
        super().__init__(f"{len(failures)} swap operation(s) failed: {lines}")


# -- where swap files go -------------------------------------------------

_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9._:/-]")
_BAD_NAMESPACE_CHARS = re.compile(r"[^A-Za-z0-9._-]")


def _rank() -> int:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank()
    except ImportError:  # pragma: no cover - torch is there when DeepSpeed is
        pass
    return int(os.environ.get("RANK", "0"))


def rank_namespace(namespace: str, rank: Optional[int] = None) -> str:
    """The namespace of one rank's swap: ``{namespace}.rank{rank}``."""
    rank = _rank() if rank is None else rank
    name = _BAD_NAMESPACE_CHARS.sub("_", f"{namespace}.rank{rank}")
    if len(name) > 64:
        raise ValueError(f"namespace {namespace!r} is too long for a swap namespace (at most 55 characters)")
    return name


def swap_key(path: Any, root: Optional[str] = None) -> str:
    """The key of the swap file at ``path``: its path below ``root`` (else
    its absolute path), with characters a key cannot hold replaced; too
    long a path keeps its end and a hash of the whole."""
    full = os.path.abspath(os.fspath(path))
    rel = None
    if root is not None:
        root = os.path.abspath(os.fspath(root))
        if full == root or full.startswith(root.rstrip("/") + "/"):
            rel = os.path.relpath(full, root)
    key = _BAD_KEY_CHARS.sub("_", (rel or full).lstrip("/"))
    if len(key) > _MAX_KEY_LEN:
        digest = hashlib.sha256(full.encode()).hexdigest()[:16]
        key = f"{digest}/{key[-(_MAX_KEY_LEN - 17):].lstrip('/')}"
    return key


# -- memory DeepSpeed reads into and writes from -------------------------


class _LockedMemory:
    """Page-aligned memory of a locked tensor, locked in RAM when the
    process may lock that much."""

    def __init__(self, nbytes: int):
        self.map = mmap.mmap(-1, max(nbytes, 1))
        self.address = ctypes.addressof(ctypes.c_char.from_buffer(self.map))
        self.nbytes = nbytes
        self.locked = _libc().mlock(ctypes.c_void_p(self.address), ctypes.c_size_t(max(nbytes, 1))) == 0

    def free(self) -> None:
        if self.locked:
            _libc().munlock(ctypes.c_void_p(self.address), ctypes.c_size_t(max(self.nbytes, 1)))
            self.locked = False


_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC


_warned_unlocked = False


def _warn_unlocked(nbytes: int) -> None:
    global _warned_unlocked
    if not _warned_unlocked:
        _warned_unlocked = True
        warnings.warn(
            f"shardd.deepspeed: could not lock {nbytes} bytes of swap buffers in RAM (RLIMIT_MEMLOCK); "
            "they work unlocked, but may be paged out: raise the limit (ulimit -l, or LimitMEMLOCK= in a unit)",
            RuntimeWarning,
            stacklevel=3,
        )


def _raw_bytes(buffer: Any, writable: bool) -> np.ndarray:
    """The bytes of a contiguous tensor, array or buffer, as a uint8 array
    over the same memory."""
    mem = _buffers.memory(buffer, writable=writable)
    return _buffers.array_over(mem.address, mem.nbytes, mem.owner, np.dtype(np.uint8), None, readonly=not writable)


# -- the handle ----------------------------------------------------------


class _Files:
    """Per-file ordering of operations, shared by every handle of a
    process: an operation on a file starts once the one before it ended."""

    def __init__(self):
        self.lock = threading.Lock()
        self.last: Dict[Tuple[str, str], Future] = {}

    def chain(self, file: Tuple[str, str], done: Future) -> Optional[Future]:
        with self.lock:
            before = self.last.get(file)
            self.last[file] = done
        done.add_done_callback(lambda f: self._forget(file, f))
        return before

    def _forget(self, file: Tuple[str, str], done: Future) -> None:
        with self.lock:
            if self.last.get(file) is done:
                del self.last[file]

    def pending(self, file: Tuple[str, str]) -> Optional[Future]:
        with self.lock:
            return self.last.get(file)


_FILES = _Files()


class _StepOrder:
    """Learns the order in which a rank reads its swap files, once it
    repeats, and registers it with the daemon as the namespace's schedule:
    the arena's schedule policy then evicts the file whose next read is
    furthest away instead of the least recently used one, which a cyclic
    order larger than the arena defeats (every read misses).

    The order is the shortest tail of the reads submitted so far that
    occurs twice in a row and holds every file read so far (a shorter
    repetition early in a step is not taken for the step). Learned once
    per namespace and process; recording stops after ``limit`` reads."""

    def __init__(self, limit: int = 65536):
        self.lock = threading.Lock()
        self.limit = limit
        self.reads: Dict[str, List[str]] = {}
        self.seen: Dict[str, Dict[str, List[int]]] = {}
        self.learned: Dict[str, List[str]] = {}

    def read(self, namespace: str, key: str) -> Optional[List[str]]:
        """Records a read; returns the order when this read completes it."""
        with self.lock:
            if namespace in self.learned:
                return None
            reads = self.reads.setdefault(namespace, [])
            if len(reads) >= self.limit:
                return None
            seen = self.seen.setdefault(namespace, {})
            earlier = seen.setdefault(key, [])
            reads.append(key)
            n = len(reads)
            earlier.append(n - 1)
            for previous in reversed(earlier[:-1]):
                period = n - 1 - previous
                if 2 * period > n:
                    break
                if reads[n - period :] == reads[n - 2 * period : n - period] and len(set(reads[n - period :])) == len(seen):
                    order = reads[n - period :]
                    self.learned[namespace] = order
                    del self.reads[namespace], self.seen[namespace]
                    return order
            return None

    def order(self, namespace: str) -> Optional[List[str]]:
        """The order learned for ``namespace``, if any."""
        with self.lock:
            return self.learned.get(namespace)


_STEP_ORDER = _StepOrder()


def learned_order(namespace: str) -> Optional[List[str]]:
    """The swap-in order of one step that this process learned for a rank's
    namespace (``{namespace}.rank{rank}``) and registered with the daemon,
    or None before it repeated."""
    return _STEP_ORDER.order(namespace)


class SwapHandle:
    """DeepSpeed's async I/O handle (``aio_handle``), over a shardd daemon.

    The constructor takes DeepSpeed's arguments (``block_size``,
    ``queue_depth``, ``single_submit``, ``overlap_events``,
    ``intra_op_parallelism``), reported back by the ``get_*`` accessors;
    ``queue_depth`` bounds the operations running at once (at most 8
    threads). ``client`` is a :class:`shardd.Client` (else one is made for
    ``endpoint``), ``namespace`` this rank's namespace, ``root`` the
    ``nvme_path`` that keys are relative to.

    >>> h = SwapHandle(client=client, namespace="job.rank0")
    >>> h.async_pwrite(buffer, "/nvme/zero_stage_3/optimizer/rank0/3.tensor.swp")
    0
    >>> h.wait()
    1
    """

    def __init__(
        self,
        block_size: int = 1024 * 1024,
        queue_depth: int = 128,
        single_submit: bool = False,
        overlap_events: bool = False,
        intra_op_parallelism: int = 1,
        *,
        client: Optional[Client] = None,
        endpoint: str = DEFAULT_ENDPOINT,
        namespace: str,
        root: Optional[str] = None,
    ):
        if intra_op_parallelism < 1:
            raise ValueError(f"intra_op_parallelism must be at least 1, not {intra_op_parallelism}")
        self._block_size = int(block_size)
        self._queue_depth = int(queue_depth)
        self._single_submit = bool(single_submit)
        self._overlap_events = bool(overlap_events)
        self._parallelism = int(intra_op_parallelism)
        self._owns_client = client is None
        self._client = client if client is not None else Client(endpoint)
        self._namespace = namespace
        self._root = root
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, min(self._queue_depth, 8)), thread_name_prefix="shardd-swap"
        )
        self._lock = threading.Lock()
        self._pending: List[Tuple[str, str, Future]] = []
        self._locked: Dict[int, Tuple[Any, _LockedMemory]] = {}

    # DeepSpeed's accessors.
    def get_block_size(self) -> int:
        return self._block_size

    def get_queue_depth(self) -> int:
        return self._queue_depth

    def get_single_submit(self) -> bool:
        return self._single_submit

    def get_overlap_events(self) -> bool:
        return self._overlap_events

    def get_intra_op_parallelism(self) -> int:
        return self._parallelism

    def get_alignment(self) -> int:
        return self._parallelism * _DIRECT_ALIGNMENT

    @property
    def namespace(self) -> str:
        """The namespace this handle's files go to."""
        return self._namespace

    def key(self, filename: Any) -> str:
        """The key of a swap file."""
        return swap_key(filename, self._root)

    # -- reads -----------------------------------------------------------

    def async_pread(self, buffer: Any, filename: Any, file_offset: int = 0) -> int:
        """Starts filling ``buffer`` from ``filename`` at ``file_offset``;
        0 once started, -1 (and why, on standard error) if it cannot be."""
        return self._submit_read(buffer, filename, file_offset)

    def sync_pread(self, buffer: Any, filename: Any, file_offset: int = 0) -> int:
        """Fills ``buffer`` from ``filename`` at ``file_offset``; the
        number of operations completed (1), or -1."""
        if self._submit_read(buffer, filename, file_offset) != 0:
            return -1
        return self.wait()

    def pread(self, buffer: Any, filename: Any, validate: bool = False, async_op: bool = False, file_offset: int = 0):
        """``async_pread`` or ``sync_pread`` (``validate`` is ignored: every
        shard is checked against its checksum)."""
        return (self.async_pread if async_op else self.sync_pread)(buffer, filename, file_offset)

    def read(self, buffer: Any, filename: Any, validate: bool = False, file_offset: int = 0) -> int:
        """Fills ``buffer`` from ``filename``, which must hold exactly that
        many bytes; 0, or -1."""
        file = (self._namespace, self.key(filename))
        self._after_writes(file)
        try:
            length = self._client.stat(*file)["meta"].nbytes
        except NotFound:
            return self._refuse("read", filename, "no such swap file")
        if length != _buffers.memory(buffer, writable=True).nbytes:
            return self._refuse("read", filename, f"the file holds {length} bytes, the buffer {_nbytes(buffer)}")
        return 0 if self.sync_pread(buffer, filename, file_offset) == 1 else -1

    # -- writes ----------------------------------------------------------

    def async_pwrite(self, buffer: Any, filename: Any = None, file_offset: int = 0, *, fd: Optional[int] = None) -> int:
        """Starts writing ``buffer`` into ``filename`` at ``file_offset``;
        0 once started, -1 if it cannot be. ``buffer`` must not change
        until ``wait`` returns."""
        if fd is not None or isinstance(filename, int):
            raise TypeError(
                "shardd.deepspeed swaps named files only; a write to an open file descriptor "
                "(DeepSpeed's fast checkpoint writer) goes to the file system"
            )
        return self._submit_write(buffer, filename, file_offset)

    def sync_pwrite(self, buffer: Any, filename: Any, file_offset: int = 0) -> int:
        """Writes ``buffer`` into ``filename`` at ``file_offset``; the
        number of operations completed (1), or -1."""
        if self._submit_write(buffer, filename, file_offset) != 0:
            return -1
        return self.wait()

    def pwrite(self, buffer: Any, filename: Any, validate: bool = False, async_op: bool = False, file_offset: int = 0):
        """``async_pwrite`` or ``sync_pwrite``."""
        return (self.async_pwrite if async_op else self.sync_pwrite)(buffer, filename, file_offset)

    def write(self, buffer: Any, filename: Any, validate: bool = False, file_offset: int = 0) -> int:
        """Writes ``buffer`` into ``filename`` and waits; 0, or -1."""
        return 0 if self.sync_pwrite(buffer, filename, file_offset) == 1 else -1

    # -- completion ------------------------------------------------------

    def wait(self) -> int:
        """Waits for every operation started since the last ``wait``;
        returns how many there were. Raises :class:`SwapFailed` if any
        failed (after all have ended)."""
        with self._lock:
            pending, self._pending = self._pending, []
        failures = []
        for op, path, done in pending:
            try:
                done.result()
            except Exception as e:  # noqa: BLE001 - reported together below
                failures.append((op, path, str(e)))
        if failures:
            raise SwapFailed(failures)
        return len(pending)

    # -- locked buffers --------------------------------------------------

    def new_cpu_locked_tensor(self, num_elem: int, example_tensor: Any):
        """A new CPU tensor of ``num_elem`` elements of ``example_tensor``'s
        type, in page-aligned memory locked in RAM (unlocked, with one
        warning, beyond the process's memlock limit)."""
        import torch

        dtype = example_tensor.dtype
        nbytes = int(num_elem) * torch.empty(0, dtype=dtype).element_size()
        memory = _LockedMemory(nbytes)
        if not memory.locked:
            _warn_unlocked(nbytes)
        tensor = torch.frombuffer(memory.map, dtype=dtype, count=int(num_elem)) if num_elem else torch.empty(0, dtype=dtype)
        with self._lock:
            self._locked[tensor.data_ptr()] = (tensor, memory)
        return tensor

    def free_cpu_locked_tensor(self, tensor: Any) -> bool:
        """Gives back a tensor from :meth:`new_cpu_locked_tensor`; whether
        it was one."""
        with self._lock:
            entry = self._locked.pop(tensor.data_ptr(), None)
        if entry is None:
            return False
        entry[1].free()
        return True

    def is_pinned(self, buffer: Any) -> bool:
        """Whether ``buffer`` is pinned memory or a locked tensor of this
        handle (DeepSpeed then uses it for I/O without a bounce copy)."""
        if getattr(buffer, "is_pinned", None) is not None and buffer.is_pinned():
            return True
        start = buffer.data_ptr()
        with self._lock:
            return any(m.address <= start < m.address + max(m.nbytes, 1) for _, m in self._locked.values())

    def close(self) -> None:
        """Waits for what is running and frees the handle's threads."""
        self._pool.shutdown(wait=True)
        if self._owns_client:
            self._client.close()

    def __del__(self):
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)

    # -- inside ----------------------------------------------------------

    def _refuse(self, op: str, filename: Any, reason: str) -> int:
        # DeepSpeed's handle prints why and returns -1; so does this one.
        print(f"shardd.deepspeed: {op} {os.fspath(filename)}: {reason}", file=sys.stderr)
        return -1

    def _checked_length(self, op: str, buffer: Any, filename: Any, writable: bool) -> Optional[int]:
        try:
            nbytes = _buffers.memory(buffer, writable=writable).nbytes
        except Error as e:
            self._refuse(op, filename, str(e))
            return None
        if nbytes % self._parallelism:
            self._refuse(op, filename, f"{nbytes} bytes is not a multiple of intra_op_parallelism {self._parallelism}")
            return None
        return nbytes

    def _after_writes(self, file: Tuple[str, str]) -> None:
        before = _FILES.pending(file)
        if before is not None:
            try:
                before.result()
            except Exception:  # noqa: BLE001 - its own wait() reports it
                pass

    def _submit_read(self, buffer: Any, filename: Any, file_offset: int) -> int:
        nbytes = self._checked_length("read", buffer, filename, writable=True)
        if nbytes is None:
            return -1
        if file_offset < 0:
            return self._refuse("read", filename, f"negative offset {file_offset}")
        file = (self._namespace, self.key(filename))
        if _FILES.pending(file) is None:
            # Nothing is writing it: whether it can be read is known now.
            try:
                length = self._client.stat(*file)["meta"].nbytes
            except NotFound:
                return self._refuse("read", filename, "no such swap file")
            if file_offset + nbytes > length:
                return self._refuse(
                    "read", filename, f"file_offset + buffer nbytes > file bytes {file_offset + nbytes} > {length}"
                )
        order = _STEP_ORDER.read(*file)
        if order is not None:
            try:
                self._client.set_schedule(self._namespace, order)
            except Error as e:
                warnings.warn(f"shardd: cannot register the swap order of {self._namespace}: {e}")
        return self._start("read", filename, file, lambda: self._read(file, buffer, file_offset, nbytes))

    def _read(self, file: Tuple[str, str], buffer: Any, file_offset: int, nbytes: int) -> None:
        if nbytes == 0:
            return
        self._client.fetch_into(*file, buffer, range=(file_offset, nbytes))

    def _submit_write(self, buffer: Any, filename: Any, file_offset: int) -> int:
        nbytes = self._checked_length("write", buffer, filename, writable=False)
        if nbytes is None:
            return -1
        if file_offset < 0:
            return self._refuse("write", filename, f"negative offset {file_offset}")
        file = (self._namespace, self.key(filename))
        return self._start("write", filename, file, lambda: self._write(file, buffer, file_offset, nbytes))

    def _write(self, file: Tuple[str, str], buffer: Any, file_offset: int, nbytes: int) -> None:
        namespace, key = file
        try:
            length = self._client.stat(namespace, key)["meta"].nbytes
        except NotFound:
            length = 0
        if file_offset == 0 and length <= nbytes:
            self._client.put(namespace, key, buffer, durable=False, scratch=True)
            return
        # A write into the middle of a file, or over its start only: the
        # file keeps its other bytes (a hole reads as zeros).
        whole = np.zeros(max(length, file_offset + nbytes), dtype=np.uint8)
        if length:
            self._client.fetch_into(namespace, key, whole[:length])
        whole[file_offset : file_offset + nbytes] = _raw_bytes(buffer, writable=False)
        self._client.put(namespace, key, whole, durable=False, scratch=True)

    def _start(self, op: str, filename: Any, file: Tuple[str, str], work) -> int:
        done: Future = Future()
        before = _FILES.chain(file, done)

        def run():
            if before is not None:
                try:
                    before.result()
                except Exception:  # noqa: BLE001 - reported by its own wait()
                    pass
            try:
                work()
            except BaseException as e:  # noqa: BLE001 - handed to wait()
                done.set_exception(e)
            else:
                done.set_result(None)

        with self._lock:
            self._pending.append((op, os.fspath(filename), done))
        self._pool.submit(run)
        return 0


def _nbytes(buffer: Any) -> int:
    return _buffers.memory(buffer, writable=False).nbytes


# -- making DeepSpeed's swappers use it ----------------------------------


class _Op:
    """What ``AsyncIOBuilder().load()`` returns: ``aio_handle(...)`` makes
    a :class:`SwapHandle`."""

    def __init__(self, settings: "_Settings"):
        self._settings = settings

    def aio_handle(
        self,
        block_size: int = 1024 * 1024,
        queue_depth: int = 128,
        single_submit: bool = False,
        overlap_events: bool = False,
        intra_op_parallelism: int = 1,
    ) -> SwapHandle:
        return SwapHandle(
            block_size,
            queue_depth,
            single_submit,
            overlap_events,
            intra_op_parallelism,
            client=self._settings.client(),
            namespace=rank_namespace(self._settings.namespace),
            root=self._settings.root,
        )


class _Settings:
    def __init__(self, endpoint: str, namespace: str, root: Optional[str], options: dict):
        self.endpoint = endpoint
        self.namespace = namespace
        self.root = root
        self.options = options
        self._client: Optional[Client] = None
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def client(self) -> Client:
        """One connection per process, made when the first handle is."""
        with self._lock:
            if self._client is None or self._pid != os.getpid():
                self._client = Client(self.endpoint, **self.options)
                self._pid = os.getpid()
            return self._client


def _swap_files(client: Client, namespace: str, folder: Any) -> Dict[str, str]:
    """The swap files of ``folder`` in the daemon: name -> key."""
    prefix = swap_key(folder, _settings.root if _settings else None) + "/"
    try:
        shards = client.ls(namespace, prefix)
    except NotFound:  # nothing swapped yet
        return {}
    return {m.key[len(prefix) :]: m.key for m in shards if "/" not in m.key[len(prefix) :]}


def _copytree(src, dst, symlinks=False, ignore=None, *args, dirs_exist_ok=False, **kwargs):
    """shutil.copytree, except where DeepSpeed copies a swap folder kept in
    the daemon: into a checkpoint (its shards are written out as files), or
    back from one (the files become the swap folder's shards again)."""
    original = _installed.get("shutil.copytree", shutil.copytree)
    settings = _settings
    if settings is None:
        return original(src, dst, symlinks, ignore, *args, dirs_exist_ok=dirs_exist_ok, **kwargs)
    client = settings.client()
    namespace = rank_namespace(settings.namespace)
    saving = _swap_files(client, namespace, src)
    if saving:
        names = sorted(saving)
        skipped = set(ignore(os.fspath(src), names)) if ignore else set()
        os.makedirs(dst, exist_ok=dirs_exist_ok)
        for name in names:
            if name not in skipped:
                client.get_file(namespace, saving[name], os.path.join(dst, name))
        return dst
    if os.path.isdir(src) and _swap_files(client, namespace, dst):
        prefix = swap_key(dst, settings.root) + "/"
        for name in sorted(os.listdir(src)):
            path = os.path.join(src, name)
            if os.path.isfile(path):
                client.put_file(namespace, prefix + name, path, durable=False, scratch=True)
        return dst
    return original(src, dst, symlinks, ignore, *args, dirs_exist_ok=dirs_exist_ok, **kwargs)


_installed: Dict[str, Any] = {}
_settings: Optional[_Settings] = None


def install(
    endpoint: str = DEFAULT_ENDPOINT,
    namespace: str = "deepspeed",
    *,
    nvme_path: Optional[str] = None,
    **client_options: Any,
) -> None:
    """Makes DeepSpeed's parameter, optimizer and pipelined-optimizer
    swappers swap through the daemon at ``endpoint``, into the namespace
    ``{namespace}.rank{rank}``. Call it before ``deepspeed.initialize`` or
    ``zero.Init``. ``nvme_path`` (the one in the DeepSpeed configuration)
    makes keys shorter; ``client_options`` go to :class:`shardd.Client`.

    >>> shardd.deepspeed.install(endpoint="unix:///run/shardd/shardd.sock", namespace="job42")
    """
    import importlib

    global _settings
    _settings = _Settings(endpoint, namespace, nvme_path, client_options)
    settings = _settings
    rank_namespace(namespace, 0)  # a bad name fails here, not in DeepSpeed

    class AsyncIOBuilder:
        """DeepSpeed's op builder, as the swappers use it."""

        NAME = "async_io"

        def is_compatible(self, verbose: bool = False) -> bool:
            return True

        def load(self, verbose: bool = True) -> _Op:
            return _Op(settings)

    for name in SWAPPER_MODULES:
        module = importlib.import_module(name)
        _installed.setdefault(name, module.AsyncIOBuilder)
        module.AsyncIOBuilder = AsyncIOBuilder
    # DeepSpeed copies the optimizer's swap folder into a checkpoint, and
    # back at load, with shutil.copytree (imported where it is called).
    _installed.setdefault("shutil.copytree", shutil.copytree)
    shutil.copytree = _copytree


def uninstall() -> None:
    """Gives DeepSpeed's swappers their own handle back."""
    import importlib

    global _settings
    for name, original in list(_installed.items()):
        if name == "shutil.copytree":
            shutil.copytree = original
        else:
            importlib.import_module(name).AsyncIOBuilder = original
        del _installed[name]
    _settings = None
