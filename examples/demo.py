"""The main job on the bundled example model (stories260K): what `make run` shows.

Each stage of the camelid path appends its step here as it lands.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODEL = HERE / "stories260K"
OUT = HERE.parent / "out" / "demo"


def main() -> int:
    from camelid.cli import main as camelid

    OUT.mkdir(parents=True, exist_ok=True)
    steps: list[list[str]] = []
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
        # how far the quantized model drifts from the original (KL, top-1 agreement, both perplexities)
        ["eval", "kld", str(OUT / "stories260K-gptq-4bit-g32"), "--reference", str(MODEL),
         "--data", str(HERE / "data" / "tinystories_sample.txt"), "--seq-len", "256"],
    ]
    for step in steps:
        print("$ camelid " + " ".join(step), flush=True)
        rc = camelid(step)
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
