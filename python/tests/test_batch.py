"""Many shards in one request, and regions the daemon fills in place."""

from __future__ import annotations

import numpy as np
import pytest

import shardd


def put_layer(client, count=6):
    arrays = [np.arange(1000 + 997 * i, dtype=np.float32) * (i + 1) for i in range(count)]
    for i, array in enumerate(arrays):
        client.put("job", f"layers.0.t{i}", array)
    return arrays


def test_a_batch_fills_each_place_and_reports_each_member(any_client):
    arrays = put_layer(any_client)
    out = np.zeros(1 << 20, np.uint8)
    items, at = [], 0
    for i, array in enumerate(arrays):
        items.append((f"layers.0.t{i}", at, array.nbytes))
        at += -(-array.nbytes // 4096) * 4096
    items.append(("missing", at, 4096))
    items.append(("layers.0.t1", at + 4096, 40, (8, 40)))
    results = any_client.fetch_many_into("job", items, out)
    for i, array in enumerate(arrays):
        offset = items[i][1]
        assert isinstance(results[i], shardd.ShardMeta), results[i]
        assert results[i].nbytes == array.nbytes
        assert np.array_equal(out[offset : offset + array.nbytes].view(np.float32), array)
    assert isinstance(results[len(arrays)], shardd.NotFound)
    assert isinstance(results[-1], shardd.ShardMeta)
    assert bytes(out[at + 4096 : at + 4136]) == arrays[1].tobytes()[8:48]


def test_a_malformed_batch_raises(client):
    put_layer(client, 1)
    out = np.zeros(8192, np.uint8)
    with pytest.raises(shardd.BadRequest, match="overlaps"):
        client.fetch_many_into("job", [("layers.0.t0", 0, 4096), ("layers.0.t0", 100, 4096)], out)
    with pytest.raises(shardd.BadRequest, match="batch item"):
        client.fetch_many_into("job", [("layers.0.t0", 0)], out)


def test_a_region_is_filled_by_the_daemon_and_read_as_arrays(any_client, request):
    arrays = put_layer(any_client, 3)
    region = shardd.Region(1 << 20)
    assert region.nbytes == 1 << 20
    registered = any_client.register_region(region)
    assert registered.placed_by_daemon == (request.node.callspec.params["any_client"] == "unix")
    items = [(f"layers.0.t{i}", i * 65536, arrays[i].nbytes) for i in range(3)]
    items.append(("missing", 3 * 65536, 16))
    results = any_client.fetch_into_region(registered, "job", items)
    for i, array in enumerate(arrays):
        assert isinstance(results[i], shardd.ShardMeta), results[i]
        view = region.numpy("f32", (array.size,), offset=i * 65536)
        assert np.array_equal(view, array)
    assert isinstance(results[3], shardd.NotFound)
    with pytest.raises(shardd.BufferTooSmall):
        region.numpy("f32", (1 << 20,))


def test_a_prepared_fetch_runs_again_with_the_shards_as_they_are_now(any_client):
    arrays = put_layer(any_client, 2)
    region = shardd.Region(1 << 20)
    registered = any_client.register_region(region)
    items = [(f"layers.0.t{i}", i * 65536, arrays[i].nbytes) for i in range(2)]
    items.append(("missing", 2 * 65536, 16))
    layer = any_client.prepare_fetch_into_region(registered, "job", items)
    assert len(layer) == 3
    for step in range(2):
        if step == 1:
            # Replaced between two runs: the next run brings the new bytes.
            arrays[1] = arrays[1] + 1.0
            any_client.put("job", "layers.0.t1", arrays[1])
            region.numpy("u8", (1 << 20,))[:] = 0
        results = any_client.fetch_prepared(layer)
        for i, array in enumerate(arrays):
            assert isinstance(results[i], shardd.ShardMeta), results[i]
            assert np.array_equal(region.numpy("f32", (array.size,), offset=i * 65536), array)
        assert results[1].version == step + 1
        assert isinstance(results[2], shardd.NotFound)
    with pytest.raises(shardd.BadRequest, match="not within the buffer"):
        any_client.prepare_fetch_into_region(registered, "job", [("x", 1 << 20, 8)])


def test_a_region_is_a_torch_tensor_without_a_copy(client, torch):
    tensor = torch.arange(4096, dtype=torch.float32)
    client.put("job", "w", tensor)
    region = shardd.Region(1 << 16)
    registered = client.register_region(region)
    [meta] = client.fetch_into_region(registered, "job", [("w", 0, tensor.numel() * 4)])
    assert meta.nbytes == 16384
    out = region.tensor("f32", (4096,))
    assert torch.equal(out, tensor)
    out[0] = 7.0  # the caller's own memory
    assert region.numpy("f32", (1,))[0] == 7.0


def test_shards_are_stored_from_a_region(any_client):
    region = shardd.Region(1 << 20)
    weights = region.numpy("f32", (64, 64))
    weights[:] = np.arange(4096, dtype=np.float32).reshape(64, 64)
    bias = region.numpy("u8", (100,), offset=65536)
    bias[:] = 7
    registered = any_client.register_region(region)
    results = any_client.put_from_region(
        registered,
        "job",
        # The last one's shape does not match its length: refused alone.
        [("w", 0, weights.nbytes, "f32", (64, 64)), ("b", 65536, 100), ("bad", 0, 24, "f32", (5, 5))],
    )
    assert results[0].shape == [64, 64] and results[0].dtype == "f32"
    assert results[1].nbytes == 100
    assert isinstance(results[2], shardd.BadRequest), results[2]
    with pytest.raises(shardd.BadRequest, match="not within the region"):
        any_client.put_from_region(registered, "job", [("x", 1 << 20, 8)])
    assert np.array_equal(any_client.get("job", "w"), weights)
    assert bytes(any_client.get("job", "b")) == bytes([7] * 100)
