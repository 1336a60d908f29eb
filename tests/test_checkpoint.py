import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from camelid.checkpoint import Checkpoint, TensorSpec, atomic_output_dir, save_sharded
from camelid.errors import CamelidError, CheckpointError


def _specs(tensors):
    return [TensorSpec(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()]


def test_sharded_roundtrip_streams_row_chunks(tmp_path):
    tensors = {f"w{i}": torch.randn(64, 32, dtype=torch.float16) for i in range(5)}
    tensors["b"] = torch.arange(7, dtype=torch.int32)
    chunks = [(k, part) for k, v in tensors.items() for part in v.split(16)]
    (tmp_path / "config.json").write_text("{}")
    paths = save_sharded(tmp_path, _specs(tensors), chunks, max_shard_size=64 * 32 * 2 * 2)
    assert len(paths) == 3
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tensors)
    ckpt = Checkpoint(tmp_path)
    for k, v in tensors.items():
        assert torch.equal(ckpt.read(k), v)
        assert torch.equal(load_file(tmp_path / index["weight_map"][k])[k], v)  # the real library reads it
    assert torch.equal(ckpt.read("w1", rows=slice(3, 9)), tensors["w1"][3:9])


def test_writer_rejects_unplanned_and_missing(tmp_path):
    specs = [TensorSpec("a", torch.float32, (4,))]
    with pytest.raises(CheckpointError, match="not planned"):
        save_sharded(tmp_path, specs, [("z", torch.zeros(4))])
    with pytest.raises(CheckpointError, match="fewer tensors"):
        save_sharded(tmp_path, specs + [TensorSpec("b", torch.float32, (4,))], [("a", torch.zeros(4))],
                     max_shard_size=8)
    assert not list(tmp_path.glob("*.tmp"))


def test_truncated_safetensors_named(tmp_path):
    save_file({"w": torch.randn(100, 100)}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text("{}")
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors.*truncated"):
        Checkpoint(tmp_path)


def test_bin_with_pickled_object_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"w": torch.zeros(2), "x": Evil()}, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="pytorch_model.bin.*refused"):
        Checkpoint(tmp_path)


def test_bin_plain_tensors_load(tmp_path):
    torch.save({"w": torch.arange(6.0).reshape(2, 3)}, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text("{}")
    assert torch.equal(Checkpoint(tmp_path).read("w"), torch.arange(6.0).reshape(2, 3))


def test_atomic_output_dir_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_output_dir(out) as work:
        (work / "x").write_text("half")
        raise RuntimeError("boom")
    assert not out.exists() and not (tmp_path / "out.partial").exists()
    with atomic_output_dir(out) as work:
        (work / "x").write_text("whole")
    assert (out / "x").read_text() == "whole"
    with pytest.raises(CamelidError, match="already exists"), atomic_output_dir(out):
        pass
