"""shardd.deepspeed.SwapHandle against what DeepSpeed's swappers expect of
their async I/O handle, modelled on DeepSpeed's own aio unit tests.

Every case runs on shardd's handle and, where DeepSpeed's async_io op
builds here, on DeepSpeed's own handle too: the same calls must give the
same results, the one through the daemon and the other through files."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

import shardd
import shardd.deepspeed as sdd

torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch)")

BLOCK_SIZE = 1024
QUEUE_DEPTH = 2
IO_SIZE = 4 * BLOCK_SIZE
IO_PARALLEL = 2


def _deepspeed_op():
    """DeepSpeed's own async_io op, or why it cannot be used here."""
    try:
        from deepspeed.ops.op_builder import AsyncIOBuilder
    except Exception as e:  # noqa: BLE001 - any failure to import is a reason to skip
        return None, f"deepspeed is not installed ({type(e).__name__}: {e})"
    try:
        builder = AsyncIOBuilder()
        if not builder.is_compatible():
            return None, "DeepSpeed's async_io op cannot build here (libaio-dev missing?)"
        return builder.load(verbose=False), None
    except Exception as e:  # noqa: BLE001
        return None, f"DeepSpeed's async_io op did not build: {e}"


class Kind:
    """How a case makes a handle, stores a reference file and reads back
    what a handle wrote."""

    def __init__(self, name, daemon, tmp_path):
        self.name = name
        self.tmp = tmp_path / "nvme"
        self.tmp.mkdir()
        if name == "shardd":
            self.client = shardd.Client(daemon.unix)
            self.namespace = "test.rank0"
        else:
            op, reason = _deepspeed_op()
            if op is None:
                pytest.skip(reason)
            self.op = op

    def handle(self, single_submit=False, overlap_events=False):
        if self.name == "shardd":
            return sdd.SwapHandle(
                BLOCK_SIZE,
                QUEUE_DEPTH,
                single_submit,
                overlap_events,
                IO_PARALLEL,
                client=self.client,
                namespace=self.namespace,
                root=str(self.tmp),
            )
        return self.op.aio_handle(BLOCK_SIZE, QUEUE_DEPTH, single_submit, overlap_events, IO_PARALLEL)

    def path(self, name):
        return str(self.tmp / name)

    def store(self, name, data: bytes):
        if self.name == "shardd":
            self.client.put(self.namespace, sdd.swap_key(self.path(name), str(self.tmp)), data)
        else:
            with open(self.path(name), "wb") as f:
                f.write(data)

    def stored(self, name) -> bytes:
        if self.name == "shardd":
            key = sdd.swap_key(self.path(name), str(self.tmp))
            return bytes(self.client.get(self.namespace, key).view(np.uint8))
        with open(self.path(name), "rb") as f:
            return f.read()

    def close(self):
        if self.name == "shardd":
            self.client.close()


@pytest.fixture(params=["shardd", "deepspeed"])
def kind(request, daemon, tmp_path):
    k = Kind(request.param, daemon, tmp_path)
    yield k
    k.close()


def _buffer(h, kind_of_buffer, nbytes, data=None):
    if kind_of_buffer == "unpinned":
        t = torch.zeros(nbytes, dtype=torch.uint8)
    else:
        t = h.new_cpu_locked_tensor(nbytes, torch.empty(0, dtype=torch.uint8))
        t.zero_()
    if data is not None:
        t.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    return t


BUFFERS = ["unpinned", "locked"]


def test_the_accessors_report_the_handle_settings(kind):
    for single_submit in (True, False):
        for overlap_events in (True, False):
            h = kind.handle(single_submit, overlap_events)
            assert h.get_single_submit() == single_submit
            assert h.get_overlap_events() == overlap_events
            assert h.get_intra_op_parallelism() == IO_PARALLEL
            assert h.get_block_size() == BLOCK_SIZE
            assert h.get_queue_depth() == QUEUE_DEPTH
            assert h.get_alignment() == IO_PARALLEL * 512


@pytest.mark.parametrize("buf", BUFFERS)
def test_sync_and_async_reads_fill_the_buffer(kind, buf):
    ref = os.urandom(IO_SIZE)
    kind.store("ref.swp", ref)
    h = kind.handle()
    out = _buffer(h, buf, IO_SIZE)
    assert h.sync_pread(out, kind.path("ref.swp"), 0) == 1
    assert bytes(out.numpy()) == ref
    out.zero_()
    assert h.async_pread(out, kind.path("ref.swp"), 0) == 0
    assert h.wait() == 1
    assert bytes(out.numpy()) == ref


@pytest.mark.parametrize("buf", BUFFERS)
def test_sync_and_async_writes_store_the_buffer(kind, buf):
    ref = os.urandom(IO_SIZE)
    h = kind.handle()
    src = _buffer(h, buf, IO_SIZE, ref)
    assert h.sync_pwrite(src, kind.path("a.swp"), 0) == 1
    assert kind.stored("a.swp") == ref
    assert h.async_pwrite(src, kind.path("b.swp"), 0) == 0
    assert h.wait() == 1
    # Once wait() returned the handle is done with the buffer.
    src.zero_()
    assert kind.stored("b.swp") == ref


@pytest.mark.parametrize("count", [2, 3])
def test_wait_counts_every_operation_in_flight(kind, count):
    refs = [os.urandom(IO_SIZE) for _ in range(count)]
    h = kind.handle(True, True)
    srcs = [_buffer(h, "locked", IO_SIZE, r) for r in refs]
    for i, src in enumerate(srcs):
        assert h.async_pwrite(src, kind.path(f"w{i}.swp"), 0) == 0
    assert h.wait() == count
    outs = [_buffer(h, "unpinned", IO_SIZE) for _ in range(count)]
    for i, out in enumerate(outs):
        assert h.async_pread(out, kind.path(f"w{i}.swp"), 0) == 0
    assert h.wait() == count
    assert [bytes(o.numpy()) for o in outs] == refs
    for i in range(count):
        assert kind.stored(f"w{i}.swp") == refs[i]


@pytest.mark.parametrize("partitions", [[1, 1, 1], [1, 1, 2], [1, 2, 1], [2, 1, 1]])
def test_writes_and_reads_at_offsets(kind, partitions):
    size = sum(partitions) * BLOCK_SIZE
    data = os.urandom(size)
    h = kind.handle(True, True)
    src = _buffer(h, "locked", size, data)
    offsets = np.cumsum([0] + partitions[:-1]) * BLOCK_SIZE
    for offset, blocks in zip(offsets, partitions):
        part = src.narrow(0, int(offset), blocks * BLOCK_SIZE)
        assert h.async_pwrite(part, kind.path("o.swp"), int(offset)) == 0
        assert h.wait() == 1
        assert kind.stored("o.swp") == data[: int(offset) + blocks * BLOCK_SIZE]
    out = _buffer(h, "locked", size)
    for offset, blocks in zip(offsets, partitions):
        dst = out.narrow(0, 0, blocks * BLOCK_SIZE)
        assert h.sync_pread(dst, kind.path("o.swp"), int(offset)) == 1
        assert bytes(dst.numpy()) == data[int(offset) : int(offset) + blocks * BLOCK_SIZE]


def test_a_write_over_the_start_of_a_file_keeps_its_tail(kind):
    data = bytearray(os.urandom(4 * BLOCK_SIZE))
    h = kind.handle()
    assert h.sync_pwrite(_buffer(h, "unpinned", len(data), data), kind.path("t.swp"), 0) == 1
    head = os.urandom(BLOCK_SIZE)
    assert h.sync_pwrite(_buffer(h, "unpinned", BLOCK_SIZE, head), kind.path("t.swp"), 0) == 1
    data[:BLOCK_SIZE] = head
    assert kind.stored("t.swp") == bytes(data)


def test_a_read_of_a_missing_file_fails_at_once(kind):
    h = kind.handle()
    out = _buffer(h, "unpinned", IO_SIZE)
    assert h.async_pread(out, kind.path("missing.swp"), 0) == -1
    assert h.sync_pread(out, kind.path("missing.swp"), 0) == -1


def test_a_size_not_divisible_by_the_parallelism_fails_at_once(kind):
    kind.store("odd.swp", os.urandom(IO_SIZE))
    h = kind.handle()
    assert h.async_pread(torch.zeros(IO_SIZE - 1, dtype=torch.uint8), kind.path("odd.swp"), 0) == -1
    assert h.async_pwrite(torch.zeros(IO_SIZE - 1, dtype=torch.uint8), kind.path("odd2.swp"), 0) == -1


def test_locked_tensors_are_pinned_until_freed(kind):
    h = kind.handle()
    for dtype in (torch.uint8, torch.bfloat16, torch.float32):
        t = h.new_cpu_locked_tensor(1000, torch.empty(0, dtype=dtype))
        assert t.dtype == dtype and t.numel() == 1000 and t.device.type == "cpu"
        assert h.is_pinned(t)
        assert h.is_pinned(t.narrow(0, 100, 100))
        assert h.free_cpu_locked_tensor(t)
    assert not h.is_pinned(torch.zeros(1000))


# -- shardd's handle only: what DeepSpeed's handle would abort the process on,
# and what happens to the swap in the daemon.


@pytest.fixture
def swap(daemon, tmp_path):
    nvme = tmp_path / "nvme"
    nvme.mkdir()
    with shardd.Client(daemon.unix) as client:
        h = sdd.SwapHandle(
            BLOCK_SIZE, QUEUE_DEPTH, False, False, IO_PARALLEL, client=client, namespace="job.rank0", root=str(nvme)
        )
        yield h, client, nvme
        h.close()


def test_a_short_read_fails_without_touching_the_buffer(swap):
    h, client, nvme = swap
    path = str(nvme / "short.swp")
    assert h.sync_pwrite(torch.ones(IO_SIZE, dtype=torch.uint8), path) == 1
    out = torch.zeros(2 * IO_SIZE, dtype=torch.uint8)
    assert h.async_pread(out, path, 0) == -1
    assert h.async_pread(torch.zeros(IO_SIZE, dtype=torch.uint8), path, BLOCK_SIZE) == -1
    assert int(out.sum()) == 0
    # A read queued behind a write that turns out too short fails at wait().
    assert h.async_pwrite(torch.ones(BLOCK_SIZE, dtype=torch.uint8), str(nvme / "later.swp")) == 0
    assert h.async_pread(out, str(nvme / "later.swp")) == 0
    with pytest.raises(sdd.SwapFailed) as failed:
        h.wait()
    assert [f[0] for f in failed.value.failures] == ["read"]
    assert "later.swp" in str(failed.value)


def test_swap_files_are_write_back_shards_and_no_file_is_written(swap):
    h, client, nvme = swap
    data = torch.arange(IO_SIZE // 4, dtype=torch.float32)
    path = nvme / "zero_stage_3" / "optimizer" / "rank0" / "7.tensor.swp"
    assert h.async_pwrite(data, str(path)) == 0
    assert h.wait() == 1
    stat = client.stat("job.rank0", "zero_stage_3/optimizer/rank0/7.tensor.swp")
    assert stat["meta"].nbytes == IO_SIZE
    assert list(nvme.rglob("*")) == []


def test_failed_operations_are_named_by_wait(daemon, tmp_path):
    client = shardd.Client(daemon.unix, request_timeout=5.0)
    h = sdd.SwapHandle(client=client, namespace="job.rank0", root=str(tmp_path))
    data = torch.ones(IO_SIZE, dtype=torch.uint8)
    assert h.sync_pwrite(data, str(tmp_path / "ok.swp")) == 1
    daemon.stop()
    assert h.async_pwrite(data, str(tmp_path / "lost.swp")) == 0
    with pytest.raises(sdd.SwapFailed) as failed:
        h.wait()
    assert failed.value.failures[0][:2] == ("write", str(tmp_path / "lost.swp"))
    assert h.wait() == 0
    client.close()


def test_keys_and_namespaces_of_swap_files():
    assert sdd.swap_key("/nvme/zero_stage_3/optimizer/rank0/3.tensor.swp", "/nvme") == (
        "zero_stage_3/optimizer/rank0/3.tensor.swp"
    )
    assert sdd.swap_key("/elsewhere/a b#1.swp", "/nvme") == "elsewhere/a_b_1.swp"
    long = "/nvme/" + "d/" * 200 + "x.swp"
    key = sdd.swap_key(long, "/nvme")
    assert len(key) <= 256 and key.endswith("x.swp")
    assert key != sdd.swap_key(long.replace("x.swp", "y.swp"), "/nvme")
    assert sdd.rank_namespace("job42", 3) == "job42.rank3"
    with pytest.raises(ValueError):
        sdd.rank_namespace("j" * 60, 0)


def test_the_handle_learns_the_step_order_so_the_arena_keeps_what_is_read_next(daemon, tmp_path):
    # Three 48 MiB swap files read in a cycle through a 128 MiB arena: least
    # recently used eviction misses every read; once the handle has seen the
    # order twice it registers it, and the arena keeps the file read soonest.
    mib = 1 << 20
    with shardd.Client(daemon.unix) as client:
        h = sdd.SwapHandle(client=client, namespace="cyclic.rank0", root=str(tmp_path))
        files = [str(tmp_path / f"{i}_param.tensor.swp") for i in range(3)]
        buf = torch.zeros(48 * mib, dtype=torch.uint8)
        for i, path in enumerate(files):
            buf.fill_(i + 1)
            assert h.sync_pwrite(buf, path) == 1
        deadline = time.monotonic() + 30
        while client.status()["arena"]["dirty_bytes"] and time.monotonic() < deadline:
            time.sleep(0.02)

        def a_round() -> int:
            hits = client.status()["arena"]["hits"]
            for i, path in enumerate(files):
                assert h.sync_pread(buf, path) == 1
                assert int(buf[0]) == int(buf[-1]) == i + 1
            return client.status()["arena"]["hits"] - hits

        before = [a_round(), a_round()]
        assert sdd.learned_order("cyclic.rank0") == [f"{i}_param.tensor.swp" for i in range(3)]
        after = [a_round() for _ in range(4)]
        assert before[1] == 0, f"least recently used eviction misses a cycle larger than the arena: {before}"
        assert all(hits >= 1 for hits in after), f"hits per round with the learned order: {after}"
        h.close()
