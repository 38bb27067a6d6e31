"""torch.distributed.checkpoint into shardd: a model's state_dict saved and
loaded back equal, with one rank and with two (gloo, a tensor sharded
between them); a checkpoint whose save did not finish cannot be loaded."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import shardd


def model(torch, seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)).to(torch.bfloat16)


def test_a_state_dict_saves_and_loads_back_equal(daemon, torch):
    dcp = pytest.importorskip("torch.distributed.checkpoint")
    from shardd.dcp import ShardReader, ShardWriter

    saved = model(torch, 1)
    state = {"model": saved.state_dict(), "step": 100, "note": {"lr": 0.1}}
    dcp.save(state, storage_writer=ShardWriter(daemon.unix, "job", "step-100"))

    loaded = model(torch, 2)
    target = {"model": loaded.state_dict(), "step": 0, "note": {"lr": 0.0}}
    dcp.load(target, storage_reader=ShardReader(daemon.unix, "job", "step-100"))
    for name, value in saved.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    assert target["step"] == 100 and target["note"] == {"lr": 0.1}
    # Items are shards with their element type and shape.
    with shardd.Client(daemon.unix) as client:
        items = [m for m in client.ls("job", "step-100/data/") if m.dtype == "bf16"]
        assert sorted(tuple(m.shape) for m in items) == [(8,), (8, 64), (64,), (64, 32)]
    # checkpoint_id="shardd:NAME" names it too.
    dcp.load(target, storage_reader=ShardReader(daemon.unix, "job"), checkpoint_id="shardd:step-100")


def test_a_checkpoint_that_did_not_finish_cannot_be_loaded(daemon, torch):
    dcp = pytest.importorskip("torch.distributed.checkpoint")
    from shardd.dcp import ShardReader, ShardWriter

    class Interrupted(ShardWriter):
        def finish(self, metadata, results):
            raise RuntimeError("the trainer died before the checkpoint was complete")

    state = {"w": torch.ones(4, 4)}
    # torch wraps a rank's failure in a CheckpointException (a BaseException).
    with pytest.raises(BaseException, match="died before"):
        dcp.save(state, storage_writer=Interrupted(daemon.unix, "job", "broken"))
    with shardd.Client(daemon.unix) as client:
        assert client.ls("job", "broken/data/"), "the items were written"
    with pytest.raises(BaseException, match="not found: no metadata"):
        dcp.load({"w": torch.zeros(4, 4)}, storage_reader=ShardReader(daemon.unix, "job", "broken"))


WORKER = textwrap.dedent(
    """
    import sys
    import torch, torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor
    from shardd.dcp import ShardReader, ShardWriter

    rank, world, init, endpoint = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    full = torch.arange(64 * 16, dtype=torch.float32).reshape(64, 16)
    state = {"sharded": distribute_tensor(full, mesh, [Shard(0)]), "replicated": torch.full((5,), 7.0)}
    dcp.save(state, storage_writer=ShardWriter(endpoint, "job", "two-ranks"))
    target = {"sharded": distribute_tensor(torch.zeros(64, 16), mesh, [Shard(0)]), "replicated": torch.zeros(5)}
    dcp.load(target, storage_reader=ShardReader(endpoint, "job", "two-ranks"))
    assert torch.equal(target["sharded"].full_tensor(), full), "sharded"
    assert torch.equal(target["replicated"], torch.full((5,), 7.0)), "replicated"
    dist.destroy_process_group()
    print(f"rank {rank} ok", flush=True)
    # torch's gloo threads now and then abort the interpreter's teardown
    # ("terminate called without an active exception") after all the work
    # is done: the worker ends here, its result printed.
    import os
    os._exit(0)
    """
)


def test_two_ranks_save_their_shards_and_load_them_back(daemon, torch, tmp_path):
    pytest.importorskip("torch.distributed.checkpoint")
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("this torch has no gloo backend")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    init = f"file://{tmp_path / 'rendezvous'}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    ranks = [
        subprocess.Popen([sys.executable, str(script), str(rank), "2", init, daemon.unix], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in ranks]
    for rank, (p, out) in enumerate(zip(ranks, outputs)):
        assert p.returncode == 0, f"rank {rank}:\n{out}"
        assert f"rank {rank} ok" in out
    with shardd.Client(daemon.unix) as client:
        ranks_written = {m.key.split("/")[2] for m in client.ls("job", "two-ranks/data/")}
        assert ranks_written == {"0", "1"}, "each rank wrote its own shard"
