"""The card's picture: size on disk against KL divergence to the source, one point per branch."""

from __future__ import annotations

from pathlib import Path


def size_vs_kl(branches: list[dict], path: Path, title: str) -> Path:
    """PNG of size (GB) vs mean KL (log scale when the values span a decade), one labelled point per
    variant (`label`, `size_bytes`, `measured.kld_mean`)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    sizes = [b["size_bytes"] / 1e9 for b in branches]
    kls = [max(b["measured"]["kld_mean"], 1e-6) for b in branches]
    ax.scatter(sizes, kls, color="tab:blue", zorder=3)
    for b, x, y in zip(branches, sizes, kls, strict=True):
        ax.annotate(b["label"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    if max(kls) / min(kls) > 10:
        ax.set_yscale("log")
    ax.set_xlabel("size of the weight files (GB)")
    ax.set_ylabel("mean KL divergence to the source (nats/token)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3, zorder=0)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", metadata={"Software": None})  # no build-machine details in the file
    plt.close(fig)
    tmp.replace(path)
    return path
