"""The main job on the bundled example model (stories260K): what `make run` shows.

Each stage of the camelid path appends its step here as it lands.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODEL = HERE / "stories260K"
OUT = HERE.parent / "out" / "demo"


def _weight_sum(model: Path) -> float:
    """Alpaca-style integrity value of the original, so `recover --check-sum` can verify the round trip."""
    from camelid.checkpoint import open_checkpoint

    ckpt = open_checkpoint(model)
    return sum(ckpt.read(name).double().sum().item() for name in ckpt.tensors)


def main() -> int:
    from camelid.cli import main as camelid

    OUT.mkdir(parents=True, exist_ok=True)
    fp16, diff, recovered = OUT / "stories260K-fp16", OUT / "stories260K-diff", OUT / "stories260K-recovered"
    steps: list[list[str]] = [
        ["info", str(MODEL)],
        ["convert", str(MODEL), str(fp16), "--dtype", "float16", "--overwrite"],
        # Diff round trip: treat the fp16 copy as the "base" and the fp32 original as the "tuned" model.
        ["make-diff", "--base", str(fp16), "--tuned", str(MODEL), "--out", str(diff), "--overwrite"],
        ["recover", "--base", str(fp16), "--diff", str(diff), "--out", str(recovered), "--dtype", "float32",
         "--check-sum", f"{_weight_sum(MODEL):.4f}", "--overwrite"],
    ]
    # Run: greedy from BOS (reproduces llama2.c's reference output), then perplexity on bundled TinyStories.
    steps += [
        ["generate", str(MODEL), "", "--template", "none", "--temperature", "0", "--repetition-penalty", "1",
         "--max-new-tokens", "200", "--stream"],
        ["eval", "ppl", str(MODEL), "--data", str(HERE / "data" / "tinystories_sample.txt"), "--seq-len", "256"],
    ]
    # Quantize: GPTQ 4-bit, group 32 (dim 64); the MLP (172 wide) cannot be packed and stays fp16.
    steps += [
        ["quantize", str(MODEL), str(OUT / "stories260K-gptq-4bit-g32"), "--bits", "4", "--group-size", "32",
         "--act-order", "--dataset", str(HERE / "data" / "tinystories_sample.txt"), "--seq-len", "128",
         "--nsamples", "32", "--overwrite"],
        # the quantized folder: its GPTQ config and the kernel each layer will run on
        ["info", str(OUT / "stories260K-gptq-4bit-g32")],
        ["generate", str(OUT / "stories260K-gptq-4bit-g32"), "Once upon a time", "--template", "none",
         "--temperature", "0", "--repetition-penalty", "1", "--max-new-tokens", "60"],
        # how far the quantized model drifts from the original (KL, top-1 agreement, both perplexities)
        ["eval", "kld", str(OUT / "stories260K-gptq-4bit-g32"), "--reference", str(MODEL),
         "--data", str(HERE / "data" / "tinystories_sample.txt"), "--seq-len", "256"],
    ]
    # Release: the matrix of examples/release-matrix.toml as branches of one folder, each measured
    # (size, KL, top-1, ppl) on TinyStories text the calibration windows did not use, with a model card.
    steps += [
        ["release", str(MODEL), str(OUT / "stories260K-GPTQ"), "--matrix", str(HERE / "release-matrix.toml"),
         "--dataset", str(HERE / "data" / "tinystories_sample.txt"), "--seq-len", "64", "--nsamples", "8",
         "--eval-windows", "4", "--name", "stories260K", "--creator", "Andrej Karpathy",
         "--original-repo", "karpathy/tinyllamas", "--license", "mit", "--quiet"],
        ["generate", str(OUT / "stories260K-GPTQ"), "Once upon a time", "--revision", "gptq-8bit--1g-actorder_True",
         "--template", "none", "--temperature", "0", "--repetition-penalty", "1", "--max-new-tokens", "30"],
    ]
    for step in steps:
        print("$ camelid " + " ".join(step), flush=True)
        rc = camelid(step)
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
