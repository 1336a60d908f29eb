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


def test_read_float32_without_torch_equals_read(tmp_path):
    # GGUF export reads through read_float32 (numpy only); every float type must give torch's values exactly.
    tensors = {"h": torch.randn(9, 5, dtype=torch.float16), "b": torch.randn(9, 5).to(torch.bfloat16),
               "f": torch.randn(9, 5), "d": torch.randn(3, dtype=torch.float64)}
    save_file(tensors, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text("{}")
    ckpt = Checkpoint(tmp_path)
    assert {k: ckpt.tensors[k].code for k in tensors} == {"h": "F16", "b": "BF16", "f": "F32", "d": "F64"}
    for k, v in tensors.items():
        got = ckpt.read_float32(k, rows=slice(2, 7) if v.dim() == 2 else None)
        assert got.dtype.name == "float32"
        assert torch.equal(torch.from_numpy(got), (v[2:7] if v.dim() == 2 else v).float())
    torch.save({"x": tensors["b"]}, tmp_path / "pytorch_model.bin")
    (tmp_path / "model.safetensors").unlink()
    ckpt = Checkpoint(tmp_path)
    got = ckpt.read_float32("x", rows=slice(1, 3))
    got[:] = 0  # a copy the caller owns: the cached .bin tensor is unchanged
    assert ckpt.tensors["x"].code == "BF16" and torch.equal(ckpt.read("x"), tensors["b"])


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


# --- convert, info, CLI --------------------------------------------------------------------------------


def test_convert_streams_to_float16_sharded(tmp_path):
    from helpers import make_tiny_llama

    from camelid.checkpoint import convert, verify_manifest

    src = make_tiny_llama(tmp_path / "src", tokenizer=True)
    save_file({"scale": torch.ones(3), "ids": torch.arange(4, dtype=torch.int32)}, src / "extra.safetensors")
    out = convert(src, tmp_path / "fp16", dtype="float16", max_shard_size="30KB")
    config = json.loads((out / "config.json").read_text())
    assert config["torch_dtype"] == "float16" and config["vocab_size"] == 512
    assert len(list(out.glob("model-*.safetensors"))) > 1 and (out / "model.safetensors.index.json").is_file()
    assert (out / "tokenizer.model").is_file()
    verify_manifest(out)
    before, after = Checkpoint(src), Checkpoint(out)
    for name in before.tensors:
        want = before.read(name)
        got = after.read(name)
        if want.dtype.is_floating_point:
            assert got.dtype == torch.float16 and torch.equal(got, want.to(torch.float16)), name
        else:
            assert torch.equal(got, want), name  # integer tensors are copied unchanged


def test_convert_loads_in_transformers(tmp_path):
    from helpers import make_tiny_llama
    from transformers import LlamaForCausalLM

    from camelid.checkpoint import convert

    src = make_tiny_llama(tmp_path / "src", bin_format=True, tie_word_embeddings=True)
    out = convert(src, tmp_path / "bf16", dtype="bfloat16")
    model = LlamaForCausalLM.from_pretrained(out)
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    ref = torch.load(src / "pytorch_model.bin", weights_only=True)
    assert torch.equal(model.model.embed_tokens.weight, ref["model.embed_tokens.weight"].to(torch.bfloat16))


def test_convert_refuses_float16_overflow(tmp_path):
    from camelid.checkpoint import convert

    (tmp_path / "src").mkdir()
    save_file({"w": torch.tensor([1.0, 70000.0])}, tmp_path / "src" / "model.safetensors")
    (tmp_path / "src" / "config.json").write_text("{}")
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match="tensor w: values up to 7e\\+04 overflow float16"):
        convert(tmp_path / "src", out)
    assert not out.exists() and not (tmp_path / "out.partial").exists()


def test_row_slices_cover_every_row():
    from camelid.checkpoint import row_slices

    slices = row_slices((1000, 300), max_elems=7000)
    assert slices[0] == slice(0, 23) and slices[-1].stop == 1000
    assert sum(s.stop - s.start for s in slices) == 1000
    assert row_slices((5,), max_elems=2) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert row_slices(()) == [None]


def test_info_reports_model_and_quantization(tmp_path):
    from helpers import make_tiny_llama

    from camelid.checkpoint import info

    model = make_tiny_llama(tmp_path / "m", tokenizer=True, tie_word_embeddings=True)
    summary = info(model)
    assert summary["architecture"] == "LlamaForCausalLM"
    assert summary["parameters"] == sum(p.numel() for p in load_file(model / "model.safetensors").values())
    assert summary["dtypes"] == {"float32": summary["parameters"]}
    assert summary["size_on_disk"] >= (model / "model.safetensors").stat().st_size
    assert summary["tokenizer"]["class"] == "LlamaTokenizer" and summary["quantization"] is None
    quant = {"bits": 4, "group_size": 128, "sym": True, "desc_act": False, "quant_method": "gptq"}
    (model / "quantize_config.json").write_text(json.dumps(quant))
    assert info(model)["quantization"] == quant
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "quantization_config": {**quant, "bits": 8}}))
    assert info(model)["quantization"]["bits"] == 8  # config.json wins, as in transformers and TGI


def test_cli_info_convert_recover_make_diff(tmp_path, capsys):
    from helpers import make_tiny_llama

    from camelid.cli import main

    base = make_tiny_llama(tmp_path / "base", tokenizer=True)
    assert main(["info", str(base), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["architecture"] == "LlamaForCausalLM"
    assert main(["convert", str(base), str(tmp_path / "fp16"), "--dtype", "float16"]) == 0
    assert main(["make-diff", "--base", str(tmp_path / "fp16"), "--tuned", str(base),
                 "--out", str(tmp_path / "diff")]) == 0
    assert main(["recover", "--base", str(tmp_path / "fp16"), "--diff", str(tmp_path / "diff"),
                 "--out", str(tmp_path / "rec"), "--dtype", "float32", "--max-shard-size", "50KB"]) == 0
    rec, orig = Checkpoint(tmp_path / "rec"), Checkpoint(base)
    assert len({t.file for t in rec.tensors.values()}) > 1
    for name in orig.tensors:
        assert torch.equal(rec.read(name), orig.read(name)), name
    capsys.readouterr()
    assert main(["recover", "--base", str(tmp_path / "nope"), "--diff", str(tmp_path / "diff"),
                 "--out", str(tmp_path / "rec2")]) == 2
    assert "nope" in capsys.readouterr().err and not (tmp_path / "rec2").exists()


def test_hub_repo_offline_is_a_clear_error(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub

    from camelid.checkpoint import info

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(CheckpointError, match="cannot reach the Hugging Face Hub to download allenai/tulu-7b@v1"):
        info("allenai/tulu-7b", revision="v1")
    with pytest.raises(CheckpointError, match="model folder not found"):
        info(str(tmp_path / "missing" / "dir"))
