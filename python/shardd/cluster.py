"""Several nodes, one daemon each, as one store: tensors partitioned across
the nodes (ZeRO-Infinity's bandwidth-centric partitioning), layers gathered
from every node at once into one buffer, and the training loop's gathers
with prefetching ahead.

The ZeRO-Infinity loop, with layer ``i + 1`` gathered while layer ``i``
computes::

    cluster = shardd.Cluster(["tcp://node0:7070", "tcp://node1:7070"],
                             local=(rank, "unix:///run/shardd/shardd.sock"))
    trainer = shardd.Trainer(cluster, "job")
    for i in range(layers):
        trainer.add_layer(f"layer{i}", [f"layers.{i}.weight"])
    buf = torch.empty(trainer.layer_nbytes, dtype=torch.uint8)
    trainer.lend(torch.empty_like(buf))              # the one filled ahead
    for step in range(steps):
        for i in order:
            buf, tensors = trainer.gather(f"layer{i}", buf)
            y = x @ tensors[f"layers.{i}.weight"]     # views into buf
        print(trainer.end_step()["stall_pct"])

GPU trainers read their own partition with :meth:`Cluster.read_partition`
(from the local daemon, zero copy) and assemble the layer with their own
``torch.distributed`` all-gather.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _buffers
from ._native import Cluster as _NativeCluster
from ._native import Layer
from ._native import Trainer as _NativeTrainer

__all__ = ["Cluster", "Layer", "Trainer", "tensors_in"]


def tensors_in(buf: Any, gathered: Sequence[dict]) -> Dict[str, Any]:
    """Views of the gathered tensors inside ``buf`` (no copy): torch tensors
    if ``buf`` is one, else numpy arrays; each of its element type and
    shape.

    >>> gathered = [{"name": "w", "offset": 0, "nbytes": 16, "dtype": "f32", "shape": [2, 2]}]
    >>> tensors_in(torch.zeros(16, dtype=torch.uint8), gathered)["w"].shape
    torch.Size([2, 2])
    """
    out = {}
    if _buffers._is_tensor(buf):
        flat = buf.reshape(-1).view(__import__("torch").uint8)
        for t in gathered:
            part = flat[t["offset"] : t["offset"] + t["nbytes"]].view(_buffers.torch_dtype(t["dtype"]))
            out[t["name"]] = part.reshape(t["shape"]) if t["shape"] else part
        return out
    flat = _buffers.memory(buf, writable=False).owner.reshape(-1).view(np.uint8)
    for t in gathered:
        part = flat[t["offset"] : t["offset"] + t["nbytes"]]
        out[t["name"]] = _buffers.shaped(part, _buffers.numpy_dtype(t["dtype"]), t["shape"] or None)
    return out


class Cluster:
    """The daemons of a job in rank order: ``endpoints[i]`` is node ``i``'s
    (``tcp://HOST:PORT`` or ``unix://PATH``), as the launcher's hostfile or
    ``torchrun`` gives them; every rank passes the same list. ``local=(rank,
    "unix:///run/shardd/shardd.sock")`` reaches this node's daemon through
    its socket, reading its partitions in place.

    Options: ``connections_per_node`` (2), ``connect_timeout`` (5 s),
    ``request_timeout`` (30 s), ``partition_align`` (4096), ``piece_size``
    (partitions larger than this are fetched as ranges over all of a node's
    connections, 16 MiB).

    >>> cluster = shardd.Cluster(["unix://./shardd.sock"])
    >>> len(cluster)
    1
    """

    def __init__(self, endpoints: Sequence[str], *, local: Optional[Tuple[int, str]] = None, **options: Any):
        self._native = _NativeCluster(list(endpoints), local=local, **options)
        self._local = local[0] if local else None
        self._layers: Dict[Tuple[str, Tuple[str, ...]], Layer] = {}

    def __len__(self) -> int:
        return len(self._native)

    def check(self) -> None:
        """Connects to every node once: raises now for a wrong address or a
        daemon that is down.

        >>> cluster.check()
        """
        self._native.check()

    def put_partitioned(
        self, namespace: str, tensor: str, data: Any, *, dtype: Optional[str] = None, shape: Optional[Sequence[int]] = None
    ) -> dict:
        """Splits ``data`` (an array, a CPU tensor or bytes) into one
        partition per node and stores each on its node, then the tensor's
        manifest on node 0; returns the manifest (``version``, ``dtype``,
        ``shape``, ``nbytes``, ``parts``: ``(node, start, end)`` bytes).

        >>> cluster.put_partitioned("job", "layers.0.w", torch.randn(64, 64))["parts"]
        [(0, 0, 8192), (1, 8192, 16384)]
        """
        mem = _buffers.memory(data, writable=False)
        dtype = dtype or mem.dtype or "raw"
        shape = list(shape) if shape is not None else (mem.shape if mem.dtype else [mem.nbytes])
        return self._native.put_partitioned(
            namespace, tensor, mem.address, mem.nbytes, mem.owner, dtype, [int(d) for d in shape]
        )

    def manifest(self, namespace: str, tensor: str) -> dict:
        """The manifest of a partitioned tensor (:class:`NotFound` if none).

        >>> cluster.manifest("job", "layers.0.w")["shape"]
        [64, 64]
        """
        return self._native.manifest(namespace, tensor)

    def layer(self, namespace: str, name: str, tensors: Sequence[str]) -> Layer:
        """Resolves a layer: reads its tensors' manifests once and places the
        tensors in a gather buffer (``.nbytes`` bytes).

        >>> cluster.layer("job", "layer0", ["layers.0.w", "layers.0.b"]).nbytes
        16640
        """
        return self._native.layer(namespace, name, list(tensors))

    def gather(self, namespace: str, tensors: Union[Layer, Sequence[str]], out: Any) -> Dict[str, Any]:
        """Fetches every partition of ``tensors`` (names, resolved once and
        remembered, or a :class:`Layer`) from all nodes at once straight into
        ``out`` (a writable CPU tensor or array of at least the layer's
        bytes); returns views of each tensor in ``out`` by name.

        >>> cluster.gather("job", ["layers.0.w"], torch.empty(16384, dtype=torch.uint8))["layers.0.w"].shape
        torch.Size([64, 64])
        """
        if isinstance(tensors, Layer):
            layer = tensors
        else:
            names = tuple(tensors)
            layer = self._layers.get((namespace, names))
            if layer is None:
                layer = self._layers[(namespace, names)] = self.layer(namespace, ",".join(names), names)
        mem = _buffers.memory(out, writable=True)
        gathered = self._native.gather(layer, mem.address, mem.nbytes, mem.owner)
        return tensors_in(out, gathered)

    def read_partition(self, namespace: str, tensor: str, out: Any, *, node: Optional[int] = None) -> dict:
        """Reads one node's partition of ``tensor`` (by default the local
        node's) into the start of ``out``; returns the manifest with the
        partition's ``start`` and ``end`` bytes in the tensor. Each rank
        reading its own and a ``torch.distributed`` all-gather assemble
        the tensor.

        >>> cluster.read_partition("job", "layers.0.w", torch.empty(4096))["start"]
        8192
        """
        if node is None:
            if self._local is None:
                raise ValueError("no local node: pass node=, or make the cluster with local=(rank, socket)")
            node = self._local
        mem = _buffers.memory(out, writable=True)
        return self._native.read_partition(namespace, tensor, node, mem.address, mem.nbytes, mem.owner)

    def status_of(self, node: int) -> dict:
        """Node ``node``'s daemon's status.

        >>> cluster.status_of(1)["shards"]
        4
        """
        return self._native.status_of(node)


class Trainer:
    """Gathers a job's layers step after step: the order of a step is
    recorded on the first step (or declared) and replayed, prefetch hints
    keep the next layers loading on every node, and with a buffer lent the
    next layer is gathered in the background while the current one is in
    use. :meth:`end_step` says how long the step waited for data.

    Options: ``prefetch`` (True), ``depth`` (layers hinted ahead, 2),
    ``budget_bytes`` (4 GiB), ``demote_after_use`` (False),
    ``register_schedule`` (True), ``gather_ahead`` (True).

    >>> trainer = shardd.Trainer(cluster, "job", depth=2)
    """

    def __init__(self, cluster: Cluster, namespace: str, **options: Any):
        self._native = _NativeTrainer(cluster._native, namespace, **options)
        self.layers: Dict[str, Layer] = {}

    def add_layer(self, name: str, tensors: Sequence[str]) -> Layer:
        """Adds layer ``name`` made of the partitioned ``tensors``.

        >>> trainer.add_layer("layer0", ["layers.0.w", "layers.0.b"]).nbytes
        16640
        """
        layer = self._native.add_layer(name, list(tensors))
        self.layers[name] = layer
        return layer

    @property
    def layer_nbytes(self) -> int:
        """Bytes of the largest layer added: the size of gather buffers.

        >>> buf = torch.empty(trainer.layer_nbytes, dtype=torch.uint8)
        """
        return max((layer.nbytes for layer in self.layers.values()), default=0)

    def lend(self, buf: Any) -> None:
        """Lends a buffer (of :attr:`layer_nbytes`) for gathering ahead.

        >>> trainer.lend(torch.empty_like(buf))
        """
        mem = _buffers.memory(buf, writable=True)
        self._native.lend(mem.address, mem.nbytes, (buf, mem.owner))

    def declare_order(self, order: Sequence[str]) -> None:
        """Declares the layers of a step in order of use (a layer used forward
        and backward appears twice) instead of recording the first step.

        >>> trainer.declare_order(["layer0", "layer1", "layer1", "layer0"])
        """
        self._native.declare_order(list(order))

    def gather(self, name: str, buf: Any) -> Tuple[Any, Dict[str, Any]]:
        """Gathers layer ``name``. Returns the buffer that holds it (``buf``,
        or a lent buffer filled ahead, ``buf`` then being kept for a later
        layer) and views of its tensors in that buffer by name.

        >>> buf, tensors = trainer.gather("layer0", buf)
        >>> tensors["layers.0.w"].shape
        torch.Size([64, 64])
        """
        mem = _buffers.memory(buf, writable=True)
        (back, _), gathered = self._native.gather(name, mem.address, mem.nbytes, (buf, mem.owner))
        return back, tensors_in(back, gathered)

    def end_step(self) -> dict:
        """Ends a step: ``{"step", "elapsed", "stall", "stall_pct",
        "replayed", "layers": [(name, stall_seconds, bytes)]}``.

        >>> trainer.end_step()["stall_pct"] < 5
        True
        """
        return self._native.end_step()

    def steps(self) -> List[dict]:
        """Every finished step.

        >>> len(trainer.steps())
        3
        """
        return self._native.steps()

    def trace(self) -> Optional[List[str]]:
        """The trusted order of a step, while there is one.

        >>> trainer.trace()
        ['layer0', 'layer1', 'layer1', 'layer0']
        """
        return self._native.trace()
