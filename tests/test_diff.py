import errno
import json

import pytest
import torch
from helpers import make_tiny_llama
from safetensors.torch import load_file, save_file

from camelid.checkpoint import Checkpoint, verify_manifest
from camelid.checkpoint.writer import ShardWriter
from camelid.diff import make_diff, recover
from camelid.errors import CamelidError, CheckpointError

torch.set_num_threads(2)


def _weights(path):
    ckpt = Checkpoint(path)
    return {name: ckpt.read(name) for name in ckpt.tensors}


def _assert_same_bits(a: dict, b: dict):
    assert a.keys() == b.keys()
    for name in a:
        x, y = a[name].to(torch.float32), b[name].to(torch.float32)
        assert x.shape == y.shape, name
        assert torch.equal(x.view(torch.int32), y.view(torch.int32)), f"{name} differs"


def _finetune_of(base_dir, out_dir, scale=1e-3):
    """A 'fine-tuned' model: base + small noise."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(123)
    model = LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    model.save_pretrained(out_dir)
    return out_dir


def _no_output(out):
    return not out.exists() and not out.with_name(out.name + ".partial").exists()


@pytest.fixture
def base(tmp_path):
    return make_tiny_llama(tmp_path / "base", max_shard_size="40KB", tokenizer=True)


def test_roundtrip_bit_exact_finetune(tmp_path, base):
    tuned = _finetune_of(base, tmp_path / "tuned")
    diff = make_diff(base, tuned, tmp_path / "diff")
    assert {t.dtype for t in Checkpoint(diff).tensors.values()} == {torch.float32}  # plain fp32 diff
    out = recover(base, diff, tmp_path / "out", dtype="float32")
    _assert_same_bits(_weights(out), _weights(tuned))
    verify_manifest(out)


def test_roundtrip_bit_exact_independent_random(tmp_path, base):
    # Unrelated weights: a plain fp32 diff loses bits here (about 1 element in 3), so make_diff widens.
    tuned = make_tiny_llama(tmp_path / "tuned", seed=7, bin_format=True)
    b, t = _weights(base), _weights(tuned)
    lossy = sum(int(((b[k] + (t[k] - b[k])) != t[k]).sum()) for k in b)
    assert lossy > 0  # the case this test is about really occurs
    with pytest.warns(UserWarning, match="float64"):
        diff = make_diff(base, tuned, tmp_path / "diff")
    out = recover(base, diff, tmp_path / "out", dtype="float32")
    _assert_same_bits(_weights(out), t)


def test_roundtrip_fp16_tuned(tmp_path):
    base = make_tiny_llama(tmp_path / "base", dtype=torch.float16)
    tuned = make_tiny_llama(tmp_path / "tuned", seed=3, dtype=torch.float16)
    diff = make_diff(base, tuned, tmp_path / "diff")
    out = recover(base, diff, tmp_path / "out", dtype="float16")
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float16"
    _assert_same_bits(_weights(out), _weights(tuned))


def test_vocab_grows_32000_to_32001_open_instruct_semantics(tmp_path):
    small = dict(vocab_size=32000, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                 num_attention_heads=2, num_key_value_heads=1)
    base = make_tiny_llama(tmp_path / "base", **small)
    tuned = make_tiny_llama(tmp_path / "tuned", seed=5, **{**small, "vocab_size": 32001}, tokenizer=True)
    b, t = _weights(base), _weights(tuned)
    # The diff as open-instruct defines it: tuned - base, with base's vocabulary matrices extended by
    # the mean of their rows. Built here in memory, independently of make_diff.
    diff = {}
    for k in t:
        bk = b[k]
        if bk.shape != t[k].shape:
            bk = torch.cat([bk, bk.mean(dim=0, keepdim=True)])
        diff[k] = (t[k] - bk).contiguous()
    (tmp_path / "diff").mkdir()
    save_file(diff, tmp_path / "diff" / "model.safetensors")
    for name in ("config.json", "tokenizer.model", "tokenizer_config.json"):
        (tmp_path / "diff" / name).write_bytes((tuned / name).read_bytes())
    out = recover(base, tmp_path / "diff", tmp_path / "out", dtype="float32")
    r = _weights(out)
    assert r["model.embed_tokens.weight"].shape == (32001, 16) and r["lm_head.weight"].shape == (32001, 16)
    for k in t:
        torch.testing.assert_close(r[k], t[k], rtol=0, atol=1e-6)
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 32001  # config from the diff
    assert (out / "tokenizer.model").is_file()
    # make_diff grows the base the same way, so its own round trip is exact (independent random
    # weights, so some tensors are widened to float64).
    with pytest.warns(UserWarning, match="float64"):
        diff2 = make_diff(base, tuned, tmp_path / "diff2")
    out2 = recover(base, diff2, tmp_path / "out2", dtype="float32")
    _assert_same_bits(_weights(out2), t)


def test_recovered_model_gives_tuned_logits(tmp_path, base):
    from transformers import LlamaForCausalLM

    tuned = _finetune_of(base, tmp_path / "tuned", scale=1e-2)
    out = recover(base, make_diff(base, tuned, tmp_path / "diff"), tmp_path / "out", dtype="float32")
    ids = torch.tensor([[1, 5, 9, 200, 31, 7]])
    with torch.no_grad():
        want = LlamaForCausalLM.from_pretrained(tuned).eval()(ids).logits
        got = LlamaForCausalLM.from_pretrained(out).eval()(ids).logits
        base_logits = LlamaForCausalLM.from_pretrained(base).eval()(ids).logits
    assert torch.equal(got, want)
    assert not torch.allclose(base_logits, want)  # the diff really changes the model


def test_check_sum(tmp_path, base):
    tuned = _finetune_of(base, tmp_path / "tuned")
    diff = make_diff(base, tuned, tmp_path / "diff")
    want = sum(v.to(torch.float64).sum().item() for v in _weights(tuned).values())
    recover(base, diff, tmp_path / "ok", dtype="float16", check_sum=want + 0.005)
    out = tmp_path / "bad"
    with pytest.raises(CheckpointError, match="integrity check failed"):
        recover(base, diff, out, check_sum=want + 0.5)
    assert _no_output(out)


# --- bad inputs: a clear error naming the culprit, and no output folder ------------------------------


@pytest.fixture
def pair(tmp_path, base):
    tuned = _finetune_of(base, tmp_path / "tuned")
    return base, make_diff(base, tuned, tmp_path / "diff", max_shard_size="40KB")


def _rewrite_tensor(folder, name, new_name=None, value=None):
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    file = folder / index["weight_map"][name]
    tensors = load_file(file)
    t = tensors.pop(name)
    tensors[new_name or name] = t if value is None else value
    save_file(tensors, file)
    index["weight_map"][new_name or name] = index["weight_map"].pop(name)
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def test_missing_base_folder(tmp_path, pair):
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match="nope"):
        recover(tmp_path / "nope", pair[1], out)
    assert _no_output(out)


def test_missing_config(tmp_path, pair):
    (pair[1] / "config.json").unlink()
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match="diff: missing config.json"):
        recover(pair[0], pair[1], out)
    assert _no_output(out)


def test_missing_shard(tmp_path, pair):
    shard = sorted(pair[1].glob("model-*.safetensors"))[1]
    shard.unlink()
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match=f"missing weight file .*{shard.name}"):
        recover(pair[0], pair[1], out)
    assert _no_output(out)


def test_truncated_shard(tmp_path, pair):
    shard = sorted(pair[1].glob("model-*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:-100])
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match=f"{shard.name}.*truncated"):
        recover(pair[0], pair[1], out)
    assert _no_output(out)


def test_corrupt_header(tmp_path, pair):
    shard = sorted(pair[1].glob("model-*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[8:20] = b"\xff" * 12
    shard.write_bytes(bytes(data))
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match=f"{shard.name}.*corrupt"):
        recover(pair[0], pair[1], out)
    assert _no_output(out)


def test_tensor_name_mismatch(tmp_path, pair):
    _rewrite_tensor(pair[1], "model.norm.weight", new_name="model.final_norm.weight")
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match=r"only in diff: \['model.final_norm.weight'\].*model.norm.weight"):
        recover(pair[0], pair[1], out)
    assert _no_output(out)


def test_tensor_shape_mismatch(tmp_path, pair):
    _rewrite_tensor(pair[1], "model.layers.1.mlp.up_proj.weight", value=torch.zeros(64, 16))
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match=r"model.layers.1.mlp.up_proj.weight: shape \[64, 16\]"):
        recover(pair[0], pair[1], out)
    assert _no_output(out)


def test_vocab_shrinking_is_a_mismatch(tmp_path, pair):
    _rewrite_tensor(pair[1], "model.embed_tokens.weight", value=torch.zeros(100, 32))
    with pytest.raises(CheckpointError, match="model.embed_tokens.weight: shape"):
        recover(pair[0], pair[1], tmp_path / "out")


def test_non_float_tensor(tmp_path, pair):
    _rewrite_tensor(pair[1], "model.norm.weight", value=torch.ones(32, dtype=torch.int32))
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match="model.norm.weight is int32"):
        recover(pair[0], pair[1], out)
    assert _no_output(out)


def test_bin_with_pickle_payload_refused(tmp_path, pair):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "config.json").write_bytes((pair[1] / "config.json").read_bytes())
    state = _weights(pair[1])
    state["extra"] = Payload()
    torch.save(state, evil / "pytorch_model.bin")
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match="pytorch_model.bin: refused"):
        recover(pair[0], evil, out)
    assert _no_output(out)


def test_disk_full_removes_partial_output(tmp_path, pair, monkeypatch):
    real_write = ShardWriter.write
    calls = []

    def write(self, name, chunk):
        calls.append(name)
        if len(calls) > 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, name, chunk)

    monkeypatch.setattr(ShardWriter, "write", write)
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match="disk full"):
        recover(pair[0], pair[1], out)
    assert len(calls) > 5 and _no_output(out)


def test_not_enough_space_fails_before_writing(tmp_path, pair, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6, 1000))
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match="not enough disk space"):
        recover(pair[0], pair[1], out)
    assert _no_output(out)


def test_existing_output_kept(tmp_path, pair):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("mine")
    with pytest.raises(CamelidError, match="already exists"):
        recover(pair[0], pair[1], out)
    assert (out / "keep").read_text() == "mine"
    with pytest.raises(CamelidError, match="camelid did not write it"):  # --overwrite replaces only our output
        recover(pair[0], pair[1], out, overwrite=True)
    assert (out / "keep").read_text() == "mine"
    (out / "keep").unlink()
    out.rmdir()
    recover(pair[0], pair[1], out)
    (out / "extra").write_text("x")
    recover(pair[0], pair[1], out, overwrite=True)  # a folder camelid wrote (SHA256SUMS.json) is replaced
    assert not (out / "extra").exists() and (out / "config.json").exists()


def test_fp32_finetune_that_crosses_zero(tmp_path):
    # fp16 base, fp32 tuned after many small updates: ~1% of weights shrink by more than half, which a
    # plain fp32 diff cannot carry exactly. exact=True widens; exact=False keeps fp32 and says so.
    base = make_tiny_llama(tmp_path / "base", dtype=torch.float16)
    b = _weights(base)
    torch.manual_seed(1)
    t = {}
    for k, v in b.items():
        w = v.float()
        for _ in range(10):
            w = w + 2e-3 * torch.randn_like(w)
        t[k] = w.contiguous()
    tuned = tmp_path / "tuned"
    tuned.mkdir()
    save_file(t, tuned / "model.safetensors")
    (tuned / "config.json").write_bytes((base / "config.json").read_bytes())

    with pytest.warns(UserWarning, match="float64"):
        exact = make_diff(base, tuned, tmp_path / "exact")
    _assert_same_bits(_weights(recover(base, exact, tmp_path / "r1", dtype="float32")), t)

    with pytest.warns(UserWarning, match="will not recover bit for bit"):
        plain = make_diff(base, tuned, tmp_path / "plain", exact=False)
    assert {i.dtype for i in Checkpoint(plain).tensors.values()} == {torch.float32}
    r = _weights(recover(base, plain, tmp_path / "r2", dtype="float32"))
    for k in t:
        torch.testing.assert_close(r[k], t[k], rtol=0, atol=1e-8)
