"""Make the 4-bit GPTQ model that benchmarks/serve.py serves, with GPTQModel (the reference quantizer).

    CAMELID_SHARED_DATA=/work/shared/data python benchmarks/gptqmodel_quantize.py MODEL OUT

4 bits, group size 128, symmetric, no act order; calibration: 64 windows of 256 tokens of wikitext-2-v1
valid (the split TheBloke's cards name). camelid.load then runs it with camelid's int4 kernel.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main() -> int:
    src, out = sys.argv[1], sys.argv[2]
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    from gptqmodel import GPTQModel, QuantizeConfig
    from transformers import AutoTokenizer

    data = Path(os.environ.get("CAMELID_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    text = (data / "eval" / "wikitext2" / "wikitext-2-v1.valid.tokens.txt").read_text()
    ids = AutoTokenizer.from_pretrained(src)(text[:400_000])["input_ids"]
    calib = [{"input_ids": ids[i * 256 : (i + 1) * 256], "attention_mask": [1] * 256} for i in range(64)]
    config = QuantizeConfig(bits=4, group_size=128, desc_act=False, sym=True, offload_to_disk=False)
    model = GPTQModel.load(src, config)
    model.quantize(calib, batch_size=4)
    model.save(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
