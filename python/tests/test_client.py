"""The client as a trainer's script uses it: round trips of every element
type, fetches into caller memory, zero-copy views and their leases, and the
errors a user sees."""

from __future__ import annotations

import gc
import mmap
import threading
import time

import numpy as np
import pytest

import shardd

ml_dtypes = pytest.importorskip("ml_dtypes", reason="ml_dtypes is not installed (pip install ml_dtypes)")

NUMPY_TYPES = {
    "bool": np.bool_,
    "u8": np.uint8,
    "i8": np.int8,
    "u16": np.uint16,
    "i16": np.int16,
    "u32": np.uint32,
    "i32": np.int32,
    "u64": np.uint64,
    "i64": np.int64,
    "f16": np.float16,
    "f32": np.float32,
    "f64": np.float64,
    "bf16": ml_dtypes.bfloat16,
    "f8e4m3": ml_dtypes.float8_e4m3fn,
    "f8e5m2": ml_dtypes.float8_e5m2,
}


def sample(dtype, shape=(3, 5, 7), seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype) == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(np.dtype(dtype), np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    return rng.standard_normal(shape).astype(np.float32).astype(dtype)


@pytest.mark.parametrize("name", sorted(NUMPY_TYPES))
def test_every_numpy_element_type_round_trips(any_client, name):
    data = sample(NUMPY_TYPES[name])
    meta = any_client.put("job", f"t.{name}", data)
    assert (meta.dtype, meta.shape, meta.nbytes) == (name, [3, 5, 7], data.nbytes)
    got = any_client.get("job", f"t.{name}")
    assert got.dtype == data.dtype and got.shape == data.shape
    assert got.tobytes() == data.tobytes()
    assert got.meta.version == 1


def test_every_torch_element_type_round_trips(any_client, torch):
    types = ["bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float16",
             "bfloat16", "float32", "float64", "float8_e4m3fn", "float8_e5m2"]
    for i, name in enumerate(types):
        dtype = getattr(torch, name)
        data = torch.randn(4, 6).to(dtype) if dtype.is_floating_point else torch.randint(0, 100, (4, 6)).to(dtype)
        any_client.put("job", f"torch.{name}", data)
        back = any_client.get_tensor("job", f"torch.{name}")
        assert back.dtype == dtype and back.shape == data.shape, name
        assert back.view(torch.uint8).equal(data.view(torch.uint8)), name
        # The same bytes are a numpy array too (bf16 and fp8 through ml_dtypes).
        assert any_client.get("job", f"torch.{name}").tobytes() == data.view(torch.uint8).numpy().tobytes()


def test_bytes_like_objects_are_raw_shards(any_client):
    for i, data in enumerate([b"hello", bytearray(b"world!"), memoryview(b"abcdef")[1:4], b""]):
        meta = any_client.put("job", f"raw{i}", data)
        assert (meta.dtype, meta.shape) == ("raw", [])
        assert any_client.get("job", f"raw{i}").tobytes() == bytes(data)
    # A shape given for raw bytes is recorded.
    meta = any_client.put("job", "shaped", bytes(range(24)), dtype="u8", shape=[4, 6])
    assert any_client.get("job", "shaped").shape == (4, 6)


def test_fetch_into_places_bytes_in_caller_memory_at_an_offset(any_client):
    data = sample(np.float32, (64, 1024))
    any_client.put("job", "w", data)
    out = np.zeros(data.size + 16, np.float32)
    meta = any_client.fetch_into("job", "w", out, offset=64)
    assert meta.nbytes == data.nbytes
    assert np.array_equal(out[16:], data.ravel()) and not out[:16].any()
    part = bytearray(10)
    any_client.fetch_into("job", "w", part, range=(4, 10))
    assert bytes(part) == data.tobytes()[4:14]


def test_fetch_into_a_torch_tensor_in_locked_memory(any_client, torch):
    data = torch.randn(256, 256)
    any_client.put("job", "w", data)
    # Page-locked memory, as pinned buffers are, seen as a tensor.
    region = mmap.mmap(-1, data.numel() * 4)
    _lock(region)
    locked = torch.frombuffer(region, dtype=torch.float32).view(256, 256)
    any_client.fetch_into("job", "w", locked)
    assert torch.equal(locked, data)
    del locked
    region.close()


def test_fetch_into_a_pinned_torch_tensor(any_client, torch):
    if not torch.cuda.is_available():
        pytest.skip("torch pins host memory only with a CUDA device, and this machine has none")
    data = torch.randn(256, 256)
    any_client.put("job", "w", data)
    pinned = torch.empty(256, 256).pin_memory()
    any_client.fetch_into("job", "w", pinned)
    assert torch.equal(pinned, data)


def test_a_view_reads_in_place_and_its_lease_ends_with_its_arrays(client, torch):
    data = sample(np.float32, (512, 1024), seed=3)  # 2 MiB: two chunks
    client.put("job", "w", data)
    view = client.view("job", "w")
    array = view.numpy()
    assert not array.flags.writeable
    assert np.array_equal(array, data)
    tensor = view.tensor()
    assert torch.equal(tensor, torch.from_numpy(data))
    total = array[10:20].sum()  # a slice keeps the lease too
    part = array[10:20]
    assert client.status()["arena"]["leased_shards"] == 1
    del view, array, tensor
    gc.collect()
    assert client.evict("job", ["w"])["busy"] == ["w"], "a slice of the array still holds the lease"
    assert part.sum() == total
    del part
    gc.collect()
    _eventually(lambda: client.status()["arena"]["leased_shards"] == 0)
    assert client.evict("job", ["w"])["evicted"] == ["w"]


def test_a_view_in_a_with_block_gives_its_lease_back_at_the_end(client):
    client.put("job", "w", sample(np.int32, (1000,)))
    with client.view("job", "w") as view:
        assert view.numpy()[0] == client.get("job", "w")[0]
        assert client.status()["arena"]["leased_shards"] == 1
    _eventually(lambda: client.status()["arena"]["leased_shards"] == 0)
    with pytest.raises(shardd.LeaseLost):
        view.check()
    with pytest.raises(shardd.LeaseLost):
        view.numpy()


def test_closing_a_client_gives_its_dropped_views_back_at_once(client, daemon):
    client.put("job", "w", sample(np.float32, (1024,)))
    for _ in range(5):
        with shardd.Client(daemon.unix) as reader:
            with reader.view("job", "w") as view:
                assert view.numpy()[0] == client.get("job", "w")[0]
        # A process that exits now leaves nothing leased behind.
        answer = client.evict("job", ["w"])
        assert answer["evicted"] == ["w"] and not answer["busy"], answer


def test_many_threads_share_one_client(any_client):
    data = [sample(np.float32, (1000,), seed=i) for i in range(8)]
    errors = []

    def work(i):
        try:
            for round in range(20):
                any_client.put("job", f"k{i}", data[i])
                assert np.array_equal(any_client.get("job", f"k{i}"), data[i])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_listing_stat_prefetch_evict_schedule_and_removal(client):
    for i in range(3):
        client.put("job", f"layers.{i}.w", sample(np.float32, (100,), seed=i))
    assert [m.key for m in client.ls("job", "layers.")] == ["layers.0.w", "layers.1.w", "layers.2.w"]
    stat = client.stat("job", "layers.1.w")
    assert stat["resident"] and stat["meta"].dtype == "f32"
    assert client.evict("job", ["layers.1.w"])["evicted"] == ["layers.1.w"]
    answer = client.prefetch("job", ["layers.1.w", ("layers.2.w", 5, None), "nope"])
    assert answer["not_found"] == ["nope"]
    client.set_schedule("job", ["layers.0.w", "layers.1.w", "layers.2.w"])
    assert client.verify("job", "layers.0.w") == {"version": 1, "outcome": "Intact"}
    assert client.rm("job", "layers.0.w") == 1
    assert client.status()["shards"] == 2


def test_write_back_and_scratch_puts_are_served_at_once_and_reach_the_drive(client, tmp_path):
    data = sample(np.float32, (300_000,), seed=7)
    client.put("job", "wb", data, durable=False)
    client.put("job", "swap", data, durable=False, scratch=True)
    path = tmp_path / "swap.bin"
    path.write_bytes(data.tobytes())
    client.put_file("job", "swap.file", path, durable=False, scratch=True)
    for key in ("wb", "swap", "swap.file"):
        assert np.array_equal(client.get("job", key).view(np.float32), data)
    deadline = time.monotonic() + 10
    while client.status()["arena"]["dirty_bytes"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert client.status()["arena"]["dirty_bytes"] == 0, "every flush finished"
    assert client.status()["arena"]["write_back_puts"] == 3
    with pytest.raises(ValueError, match="durable=False"):
        client.put("job", "x", data, scratch=True)


def test_errors_say_what_went_wrong(daemon, client):
    with pytest.raises(KeyError) as missing:
        client.get("job", "missing")
    assert isinstance(missing.value, shardd.NotFound) and "job/missing not found" in str(missing.value)
    with pytest.raises(shardd.BadRequest, match="complex64"):
        client.put("job", "c", np.zeros(4, np.complex64))
    with pytest.raises(shardd.BadRequest):
        client.put("job", "bad", np.zeros(3, np.uint8), dtype="f32", shape=[3])
    with pytest.raises(shardd.InvalidName):
        client.put("job", "bad key", b"x")
    client.put("job", "w", np.zeros(100, np.float32))
    with pytest.raises(shardd.BufferTooSmall):
        client.fetch_into("job", "w", np.zeros(10, np.float32))
    with pytest.raises(shardd.BadRequest, match="read-only"):
        client.fetch_into("job", "w", b"\0" * 400)
    with pytest.raises(shardd.VersionConflict) as conflict:
        client.put("job", "w", np.zeros(100, np.float32), version=1)
    assert conflict.value.current_version == 1
    with pytest.raises(shardd.InvalidEndpoint):
        shardd.Client("http://nowhere")
    daemon.stop()
    with pytest.raises(ConnectionError):
        client.get("job", "w")
    with pytest.raises(shardd.ConnectError):
        shardd.Client(daemon.unix)


def test_a_closed_client_says_so(daemon):
    client = shardd.Client(daemon.unix)
    client.close()
    with pytest.raises(shardd.Disconnected, match="closed"):
        client.ping()


def _lock(region: mmap.mmap) -> None:
    """mlock()s an anonymous mapping (the memlock limit allows a few MiB)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    address = ctypes.addressof(ctypes.c_char.from_buffer(region))
    assert libc.mlock(ctypes.c_void_p(address), ctypes.c_size_t(len(region))) == 0, ctypes.get_errno()


def _eventually(check, timeout=5.0):
    import time

    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_tcp_needs_the_key_and_takes_it_from_an_argument_or_the_environment(daemon, monkeypatch):
    from conftest import KEY_FILE

    monkeypatch.delenv("SHARDD_AUTH_KEY_FILE")
    with pytest.raises(shardd.Unauthorized, match="needs a key"):
        shardd.Client(daemon.tcp)
    with shardd.Client(daemon.tcp, auth_key_file=str(KEY_FILE)) as c:
        c.put("job", "k", b"authenticated")
    monkeypatch.setenv("SHARDD_AUTH_KEY_FILE", str(KEY_FILE))
    with shardd.Client(daemon.tcp) as c:
        assert c.get("job", "k").tobytes() == b"authenticated"
    # A key file others may read is refused before anything is sent.
    KEY_FILE.chmod(0o644)
    try:
        with pytest.raises(shardd.Unauthorized, match="chmod 600"):
            shardd.Client(daemon.tcp)
    finally:
        KEY_FILE.chmod(0o600)
    # The Unix socket needs no key.
    monkeypatch.delenv("SHARDD_AUTH_KEY_FILE")
    with shardd.Client(daemon.unix) as c:
        assert c.get("job", "k").tobytes() == b"authenticated"
