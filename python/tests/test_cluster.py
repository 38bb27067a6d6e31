"""A job across three nodes: tensors partitioned across them, gathered into
numpy and torch buffers, each rank's own partition read from its local
daemon, and the trainer's loop with its stall statistics."""

from __future__ import annotations

import numpy as np
import pytest

import shardd


def cluster_of(nodes, rank=0, **options):
    return shardd.Cluster([n.tcp for n in nodes], local=(rank, nodes[rank].unix), **options)


def test_partitioned_tensors_gather_into_numpy_and_torch_buffers(nodes, torch):
    cluster = cluster_of(nodes, piece_size=64 << 10)
    cluster.check()
    weights = {f"layers.0.{name}": np.random.default_rng(i).standard_normal(shape).astype(np.float32)
               for i, (name, shape) in enumerate([("q", (256, 300)), ("k", (256, 300)), ("bias", (7,))])}
    for name, w in weights.items():
        manifest = cluster.put_partitioned("job", name, w)
        assert manifest["dtype"] == "f32" and manifest["shape"] == list(w.shape)
        assert len(manifest["parts"]) == (3 if w.nbytes > 8192 else 1)
    layer = cluster.layer("job", "layer0", list(weights))
    out = np.zeros(layer.nbytes, np.uint8)
    views = cluster.gather("job", layer, out)
    for name, w in weights.items():
        assert views[name].dtype == np.float32 and np.array_equal(views[name], w), name
    # Into a torch buffer, by tensor names.
    buf = torch.zeros(layer.nbytes, dtype=torch.uint8)
    tensors = cluster.gather("job", list(weights), buf)
    for name, w in weights.items():
        assert torch.equal(tensors[name], torch.from_numpy(w)), name
        assert tensors[name].untyped_storage().data_ptr() == buf.untyped_storage().data_ptr()
    with pytest.raises(shardd.BufferTooSmall):
        cluster.gather("job", layer, np.zeros(16, np.uint8))


def test_each_rank_reads_its_own_partition_for_an_all_gather(nodes, torch):
    data = torch.arange(300_000, dtype=torch.float32)
    cluster_of(nodes).put_partitioned("job", "w", data)
    pieces = []
    for rank in range(3):
        mine = cluster_of(nodes, rank)
        out = torch.zeros(data.numel())
        read = mine.read_partition("job", "w", out)
        assert read["node"] == rank
        n = (read["end"] - read["start"]) // 4
        pieces.append((read["start"] // 4, out[:n].clone()))
    assembled = torch.cat([p for _, p in sorted(pieces, key=lambda p: p[0])])
    assert torch.equal(assembled, data)
    with pytest.raises(shardd.NotFound):
        cluster_of(nodes).manifest("job", "missing")


def test_the_trainer_gathers_ahead_and_reports_its_stall(nodes, torch):
    cluster = cluster_of(nodes)
    layers = 4
    weights = [torch.randn(64, 64) for _ in range(layers)]
    for i, w in enumerate(weights):
        cluster.put_partitioned("job", f"layers.{i}.w", w)
    trainer = shardd.Trainer(cluster, "job", depth=2)
    for i in range(layers):
        trainer.add_layer(f"layer{i}", [f"layers.{i}.w"])
    buf = torch.zeros(trainer.layer_nbytes, dtype=torch.uint8)
    trainer.lend(torch.zeros_like(buf))
    order = list(range(layers)) + list(reversed(range(layers)))
    for step in range(3):
        for i in order:
            buf, tensors = trainer.gather(f"layer{i}", buf)
            assert torch.equal(tensors[f"layers.{i}.w"], weights[i]), (step, i)
        stats = trainer.end_step()
        assert stats["step"] == step and len(stats["layers"]) == len(order)
        assert stats["replayed"] == (step > 0), stats
    assert trainer.trace() == [f"layer{i}" for i in order]
    assert [s["step"] for s in trainer.steps()] == [0, 1, 2]


def test_a_cluster_authenticates_with_the_key_it_is_given(nodes, monkeypatch):
    from conftest import KEY_FILE

    monkeypatch.delenv("SHARDD_AUTH_KEY_FILE")
    with pytest.raises(shardd.Unauthorized):
        cluster_of(nodes).check()
    cluster = cluster_of(nodes, auth_key_file=str(KEY_FILE))
    cluster.check()
    cluster.put_partitioned("job", "w", np.arange(4096, dtype=np.float32))
