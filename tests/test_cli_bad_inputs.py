"""Bad input, per command: exit code 2, one line on stderr naming the culprit, no traceback, and nothing
touched (OUT, OUT.partial and every input hash the same before and after)."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from helpers import STORIES
from safetensors.torch import load_file, save_file

from camelid.cli import main

CAL = Path(__file__).resolve().parents[1] / "examples" / "data" / "tinystories_sample.txt"


def _header_file(path: Path, header: object) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Inputs for every case: a copy of stories260K and broken variants of it."""
    root = tmp_path_factory.mktemp("bad")
    shutil.copytree(STORIES, root / "model")
    shutil.copytree(STORIES, root / "par" / "model")
    (root / "par" / "notes.txt").write_text("unrelated")

    def variant(name: str) -> Path:
        shutil.copytree(STORIES, root / name)
        return root / name

    data = (STORIES / "model.safetensors").read_bytes()
    (variant("truncated") / "model.safetensors").write_bytes(data[: len(data) // 2])
    _header_file(variant("strshape") / "model.safetensors",
                 {"w": {"dtype": "F32", "shape": "abc", "data_offsets": [0, 0]}})
    _header_file(variant("jsonlist") / "model.safetensors", [1, 2, 3])
    pickled = variant("pickle")
    (pickled / "model.safetensors").unlink()
    (pickled / "pytorch_model.bin").write_bytes(
        b"\x80\x04\x95\x1d\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x8c\x06system\x93\x8c\x04true\x85R.")
    for name, qcfg in (("qstring", "gptq"), ("qlist", [4, 128])):
        cfg = json.loads((variant(name) / "config.json").read_text())
        (root / name / "config.json").write_text(json.dumps({**cfg, "quantization_config": qcfg}))
    nan = variant("nan")
    w = load_file(nan / "model.safetensors")
    w["model.layers.0.self_attn.q_proj.weight"][3, 5] = float("nan")
    save_file(w, nan / "model.safetensors", metadata={"format": "pt"})
    (root / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (root / "afile").write_text("not a folder")
    (root / "foreign").mkdir()
    (root / "foreign" / "mine.txt").write_text("someone's work")
    (root / "foreign.partial").mkdir()  # a partial folder camelid did not make
    (root / "foreign.partial" / "theirs.txt").write_text("keep")
    return root


M, OUT = "{root}/model", "{root}/out"
Q = ["--dataset", "file", "--dataset-path", str(CAL), "--nsamples", "2", "--seq-len", "32"]
CASES = [
    # convert
    (["convert", M, M, "--overwrite"], "overlap"),
    (["convert", "{root}/par/model", "{root}/par", "--overwrite"], "overlap"),
    (["convert", M, M + "/inside"], "overlap"),
    (["convert", M, "{root}/afile", "--overwrite"], "not a folder"),
    (["convert", M, "{root}/foreign", "--overwrite"], "camelid did not write it"),
    (["convert", M, "{root}/afile/out"], "cannot create"),
    (["convert", M, OUT, "--max-shard-size", "infGB"], "--max-shard-size"),
    (["convert", M, OUT, "--max-shard-size", "0"], "--max-shard-size"),
    (["convert", "{root}/truncated", OUT], "truncated"),
    (["convert", "{root}/strshape", OUT], "corrupt safetensors header entry for tensor w"),
    (["convert", "{root}/jsonlist", OUT], "corrupt safetensors header"),
    (["convert", "{root}/pickle", OUT], "refused to load"),
    # info
    (["info", "{root}/strshape"], "corrupt safetensors header entry"),
    (["info", "{root}/jsonlist"], "corrupt safetensors header"),
    (["info", "{root}/qstring"], "quantization_config"),
    (["info", "{root}/qlist"], "quantization_config"),
    # quantize
    (["quantize", M, M, "--overwrite", "--group-size", "32", *Q], "overlap"),
    (["quantize", M, "{root}", "--overwrite", "--group-size", "32", *Q], "overlap"),
    (["quantize", M, "{root}/foreign", "--group-size", "32", *Q], "already exists"),
    (["quantize", M, OUT, "--seq-len", "0"], "--seq-len"),
    (["quantize", M, OUT, "--seq-len", "-4"], "--seq-len"),
    (["quantize", M, OUT, "--nsamples", "0"], "--nsamples"),
    (["quantize", M, OUT, "--nsamples", "-1"], "--nsamples"),
    (["quantize", M, OUT, "--group-size", "0"], "--group-size"),
    (["quantize", M, OUT, "--group-size", "7", *Q], "--group-size 7 quantizes none"),
    (["quantize", M, OUT, *Q], "--group-size 128 quantizes none"),
    (["quantize", M, OUT, "--group-size", "32", "--method", "rtn", "--group-size", "128"], "quantizes none"),
    (["quantize", M, OUT, "--group-size", "32", "--seq-len", "4096"], "longer than the model's context"),
    (["quantize", M, OUT, "--damp", "nan"], "--damp"),
    (["quantize", M, OUT, "--damp", "1"], "--damp"),
    (["quantize", M, OUT, "--max-shard-size", "infGB"], "--max-shard-size"),
    (["quantize", M, OUT, "--bits", "5"], "--bits"),
    (["quantize", M, OUT, "--method", "awq", "--bits", "3"], "AutoAWQ GEMM format, which is 4-bit"),
    (["quantize", M, OUT, "--method", "awq", "--act-order"], "--act-order is a GPTQ option"),
    (["quantize", "{root}/nan", OUT, "--group-size", "32", "--method", "rtn"],
     "model.layers.0.self_attn.q_proj.weight has 1 NaN"),
    (["quantize", "{root}/nan", OUT, "--group-size", "32", *Q], "model.layers.0.self_attn.q_proj.weight has 1 NaN"),
    (["quantize", "{root}/pickle", OUT], "refused to load"),
    (["quantize", M, "{root}/foreign", "--overwrite", "--group-size", "32", *Q], "camelid did not write it"),
    # generate / chat
    (["generate", M, "hi", "--max-new-tokens", "-5"], "--max-new-tokens"),
    (["generate", M, "hi", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["generate", M, "hi", "--temperature", "nan"], "--temperature"),
    (["generate", M, "hi", "--temperature", "-1"], "--temperature"),
    (["generate", M, "hi", "--temperature", "1e-300"], "temperature"),
    (["generate", M, "hi", "--repetition-penalty", "0"], "--repetition-penalty"),
    (["generate", M, "hi", "--repetition-penalty", "inf"], "--repetition-penalty"),
    (["generate", M, "hi", "--top-p", "0"], "--top-p"),
    (["generate", M, "hi", "--top-k", "-1"], "--top-k"),
    (["generate", M, "caf\udcc3\udca9 \udcff"], "not UTF-8"),
    (["generate", "{root}/truncated", "hi"], "truncated"),
    (["generate", "{root}/pickle", "hi"], "refused to load"),
    (["generate", "{root}/strshape", "hi"], "corrupt safetensors header"),
    (["generate", "{root}/qstring", "hi"], "quantization_config"),
    (["chat", "{root}/truncated", "--template", "tulu"], "truncated"),
    # eval
    (["eval", "ppl", M, "--data", "{root}/binary.txt", "--seq-len", "64"], "not UTF-8"),
    (["eval", "ppl", M, "--data", "{root}/binary.txt", "--doc-sep", "x", "--seq-len", "64"], "not UTF-8"),
    (["eval", "ppl", M, "--data", "{root}/missing.txt"], "not found"),
    (["eval", "ppl", M, "--data", str(CAL), "--seq-len", "1"], "--seq-len"),
    (["eval", "ppl", "{root}/pickle", "--data", str(CAL)], "refused to load"),
    (["eval", "kld", M, "--reference", "{root}/truncated", "--data", str(CAL)], "truncated"),
    # serve (checked before the model loads or the port opens)
    (["serve", M, "--port", "70000"], "--port"),
    (["serve", M, "--port", "-1"], "--port"),
    (["serve", M, "--threads", "0"], "--threads"),
    (["serve", M, "--max-concurrent-requests", "0"], "--max-concurrent-requests"),
    (["serve", "{root}/truncated"], "truncated"),
    # recover / make-diff
    (["recover", "--base", M, "--diff", M, "--out", M, "--overwrite"], "overlap"),
    (["recover", "--base", M, "--diff", M, "--out", OUT, "--check-sum", "nan"], "--check-sum"),
    (["make-diff", "--base", M, "--tuned", M, "--out", "{root}", "--overwrite"], "overlap"),
]


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("argv,culprit", CASES, ids=[f"{i}-{c[0][0]}" for i, c in enumerate(CASES)])
def test_bad_input(root, capsys, argv, culprit):
    args = [a.format(root=root) for a in argv]
    before = _snapshot(root)
    try:
        rc = main(args)
    except SystemExit as e:  # argparse's own exit, for a value its `type=` check refused
        rc = e.code
    err = capsys.readouterr().err
    # progress bars (tqdm, on stderr, redrawn with \r) are not error lines: a NaN weight is found mid-run
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip() and "%|" not in ln]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("camelid: error: "), err
    assert culprit in lines[0] and "Traceback" not in err
    assert _snapshot(root) == before  # nothing written, nothing removed: no OUT, no OUT.partial


def test_unexpected_error_is_one_line_exit_1(root, capsys, monkeypatch):
    """A bug (here: an injected one) is exit 1 with one line; --debug shows the traceback."""
    import camelid.checkpoint

    def broken(*a, **k):
        raise ZeroDivisionError("injected\nsecond line")

    monkeypatch.setattr(camelid.checkpoint, "info", broken)
    assert main(["info", str(root / "model")]) == 1
    err = capsys.readouterr().err
    assert err.strip() == ("camelid: error: unexpected ZeroDivisionError: injected "
                           "(rerun with --debug for the traceback)")
    with pytest.raises(ZeroDivisionError):
        main(["--debug", "info", str(root / "model")])


def test_legacy_bin_is_read_by_every_command(tmp_path, capsys):
    """A plain-tensor .bin in the pre-1.6 (non-zip) format: info, convert and generate all accept it."""
    legacy = tmp_path / "legacy"
    shutil.copytree(STORIES, legacy)
    tensors = load_file(legacy / "model.safetensors")
    (legacy / "model.safetensors").unlink()
    torch.save(tensors, legacy / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    assert main(["info", str(legacy), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tensors"] == len(tensors)
    assert main(["convert", str(legacy), str(tmp_path / "fp16")]) == 0
    assert main(["generate", str(legacy), "Once", "--template", "none", "--temperature", "0",
                 "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.strip()


def test_chat_refuses_a_non_utf8_line_and_goes_on(root, capsys, monkeypatch):
    import io

    stdin = io.TextIOWrapper(io.BytesIO(b"caf\xc3\xa9 \xff\nOnce upon a time\n\n"))
    monkeypatch.setattr("sys.stdin", stdin)
    assert main(["chat", str(root / "model"), "--template", "tulu", "--max-new-tokens", "3",
                 "--temperature", "0"]) == 0
    err = capsys.readouterr().err
    assert "that line is not UTF-8 text (byte 0xff at offset 6); nothing sent" in err
