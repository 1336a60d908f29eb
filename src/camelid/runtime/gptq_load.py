"""Build a Transformers model whose GPTQ linears are camelid modules (filled in by the next commit)."""

from __future__ import annotations

from camelid.errors import CamelidError


def load_gptq(model_dir, qcfg, device, dtype, kernel):
    raise CamelidError(f"{model_dir}: GPTQ checkpoints are not supported by this build yet")
