"""``torch.distributed.checkpoint`` storage in shardd: every tensor item of a
checkpoint is a shard (with its element type and shape), every other item
a raw shard, and the checkpoint's metadata a shard written last, by the
coordinator, once every rank's items are stored: a checkpoint is visible
(loadable) only when complete.

::

    import torch.distributed.checkpoint as dcp
    from shardd.dcp import ShardWriter, ShardReader

    dcp.save(model.state_dict(), storage_writer=ShardWriter("unix:///run/shardd/shardd.sock", "job", "step-100"))
    state = model.state_dict()
    dcp.load(state, storage_reader=ShardReader("unix:///run/shardd/shardd.sock", "job", "step-100"))

Keys: ``{checkpoint}/metadata`` and ``{checkpoint}/data/{rank}/{n}``. Each
rank writes to the daemon it is given (its node's), and the metadata
records where each item went; readers read each item from there. Reads
land directly in the planner's tensors where an item is a whole stored
tensor and its destination is contiguous.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Union

import torch
from torch.distributed.checkpoint.metadata import Metadata, MetadataIndex, StorageMeta
from torch.distributed.checkpoint.planner import (
    LoadItemType,
    LoadPlan,
    LoadPlanner,
    SavePlan,
    SavePlanner,
    WriteItemType,
)
from torch.distributed.checkpoint.storage import StorageReader, StorageWriter, WriteResult
from torch.futures import Future

from . import Client
from .errors import NotFound

__all__ = ["ShardWriter", "ShardReader"]

#: Puts (or fetches) of one rank in flight at once.
_PARALLEL = 4
#: Prefix of checkpoint ids that name shardd storage: ``shardd:NAME``.
_SCHEME = "shardd:"


@dataclasses.dataclass(frozen=True)
class _Stored:
    """Where a checkpoint item is: the daemon it went to, and its key."""

    endpoint: str
    key: str
    nbytes: int


def _checkpoint_name(checkpoint_id: Union[str, os.PathLike, None], default: Optional[str]) -> str:
    if checkpoint_id is None:
        if default is None:
            raise ValueError("no checkpoint name: pass checkpoint= or a checkpoint_id")
        return default
    name = os.fspath(checkpoint_id)
    return name[len(_SCHEME):] if name.startswith(_SCHEME) else name


class _Connections:
    """One client per endpoint, made when first needed."""

    def __init__(self, first: Union[str, Client], options: Dict[str, Any]):
        self.options = options
        self.clients: Dict[str, Client] = {}
        if isinstance(first, Client):
            self.clients[first.endpoint] = first
            self.endpoint = first.endpoint
        else:
            self.endpoint = first

    def get(self, endpoint: Optional[str] = None) -> Client:
        endpoint = endpoint or self.endpoint
        client = self.clients.get(endpoint)
        if client is None:
            client = self.clients[endpoint] = Client(endpoint, **self.options)
        return client


class ShardWriter(StorageWriter):
    """Saves a checkpoint into shardd: ``client`` is a :class:`shardd.Client`
    or an endpoint (this rank's daemon), ``namespace`` the job's namespace,
    ``checkpoint`` its name (or pass ``checkpoint_id="shardd:NAME"`` to
    ``dcp.save``). ``durable=False`` acknowledges items once in the daemon's
    memory (the metadata is always written durably, last). Extra keyword
    arguments go to :class:`shardd.Client`.

    >>> dcp.save(model.state_dict(), storage_writer=ShardWriter("unix:///run/shardd/shardd.sock", "job", "step-100"))
    """

    def __init__(
        self,
        client: Union[str, Client],
        namespace: str,
        checkpoint: Optional[str] = None,
        *,
        durable: bool = True,
        **options: Any,
    ):
        super().__init__()
        self.connections = _Connections(client, options)
        self.namespace = namespace
        self.default = checkpoint
        self.name = checkpoint
        self.durable = durable
        self.is_coordinator = False

    def reset(self, checkpoint_id: Union[str, os.PathLike, None] = None) -> None:
        self.name = _checkpoint_name(checkpoint_id, self.default)

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        self.is_coordinator = is_coordinator

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        return plan

    def prepare_global_plan(self, plans: List[SavePlan]) -> List[SavePlan]:
        # Each rank's items get their own key space.
        return [dataclasses.replace(plan, storage_data=rank) for rank, plan in enumerate(plans)]

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future:
        client = self.connections.get()
        rank = plan.storage_data if plan.storage_data is not None else 0

        def write(n, item, data):
            key = f"{self.name}/data/{rank}/{n}"
            if item.type == WriteItemType.BYTE_IO:
                payload = data.getbuffer() if isinstance(data, io.BytesIO) else bytes(data)
            else:
                payload = data.detach()
                if payload.device.type != "cpu":
                    payload = payload.cpu()
                payload = payload.contiguous()
            meta = client.put(self.namespace, key, payload, durable=self.durable)
            return WriteResult(index=item.index, size_in_bytes=meta.nbytes,
                               storage_data=_Stored(client.endpoint, key, meta.nbytes))

        # The planner is asked in order, here; the puts run side by side.
        with ThreadPoolExecutor(_PARALLEL) as pool:
            pending = [pool.submit(write, n, item, planner.resolve_data(item)) for n, item in enumerate(plan.items)]
            results = [p.result() for p in pending]
        future: Future = Future()
        future.set_result(results)
        return future

    def finish(self, metadata: Metadata, results: List[List[WriteResult]]) -> None:
        metadata.storage_data = {r.index: r.storage_data for rank in results for r in rank}
        # Last, and durable: the checkpoint exists from here on.
        body = pickle.dumps(metadata)
        self.connections.get().put(self.namespace, f"{self.name}/metadata", body, durable=True)

    def storage_meta(self) -> Optional[StorageMeta]:
        return StorageMeta(checkpoint_id=f"{_SCHEME}{self.name}")

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: Union[str, os.PathLike]) -> bool:
        return os.fspath(checkpoint_id).startswith(_SCHEME)


class ShardReader(StorageReader):
    """Loads a checkpoint saved by :class:`ShardWriter` (the same arguments).
    A checkpoint whose metadata is not stored (not finished) raises
    :class:`shardd.NotFound`.

    >>> dcp.load(state, storage_reader=ShardReader("unix:///run/shardd/shardd.sock", "job", "step-100"))
    """

    def __init__(self, client: Union[str, Client], namespace: str, checkpoint: Optional[str] = None, **options: Any):
        super().__init__()
        self.connections = _Connections(client, options)
        self.namespace = namespace
        self.default = checkpoint
        self.name = checkpoint
        self.storage_data: Dict[MetadataIndex, _Stored] = {}

    def reset(self, checkpoint_id: Union[str, os.PathLike, None] = None) -> None:
        self.name = _checkpoint_name(checkpoint_id, self.default)
        self.storage_data = {}

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        key = f"{self.name}/metadata"
        try:
            body = self.connections.get().get(self.namespace, key).tobytes()
        except NotFound:
            raise NotFound(
                f"checkpoint {self.namespace}/{self.name} not found: no metadata (it was never saved, "
                f"or its save did not finish)"
            ) from None
        metadata = pickle.loads(body)
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        return metadata

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        self.storage_data = metadata.storage_data

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: List[LoadPlan]) -> List[LoadPlan]:
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future:
        def fetch(item, target):
            """The item's bytes: into ``target`` when they are all of a stored
            tensor and it can take them in place, else returned."""
            stored: _Stored = self.storage_data[item.storage_index]
            client = self.connections.get(stored.endpoint)
            if item.type == LoadItemType.BYTE_IO:
                return client.get(self.namespace, stored.key).tobytes()
            in_place = (
                all(o == 0 for o in item.storage_offsets)
                and target.device.type == "cpu"
                and target.is_contiguous()
                and target.numel() * target.element_size() == stored.nbytes
            )
            if in_place:
                client.fetch_into(self.namespace, stored.key, target)
                return None
            source = client.get_tensor(self.namespace, stored.key)
            for dim, (offset, length) in enumerate(zip(item.storage_offsets, item.lengths)):
                source = source.narrow(dim, offset, length)
            if target.size() != source.size():
                raise ValueError(
                    f"checkpoint item {stored.key} has shape {tuple(source.size())}, "
                    f"its destination {tuple(target.size())}"
                )
            return source

        # The planner is asked in order, here; the reads run side by side.
        with ThreadPoolExecutor(_PARALLEL) as pool:
            pending = []
            for item in plan.items:
                target = None if item.type == LoadItemType.BYTE_IO else planner.resolve_tensor(item).detach()
                pending.append((item, target, pool.submit(fetch, item, target)))
            for item, target, done in pending:
                got = done.result()
                if target is None:
                    planner.load_bytes(item, io.BytesIO(got))
                    continue
                if got is not None:
                    target.copy_(got)
                planner.commit_tensor(item, target)
        future: Future = Future()
        future.set_result(None)
        return future

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: Union[str, os.PathLike]) -> bool:
        return os.fspath(checkpoint_id).startswith(_SCHEME)
