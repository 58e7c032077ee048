"""Matplotlib figures: per-layer learning-rate curves (one line per layer, bottom layers lighter)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def lr_curves(history: tuple[list[str], np.ndarray], path: Path, title: str) -> Path:
    layers, rates = history
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    colours = plt.cm.viridis(np.linspace(0.0, 0.9, max(len(layers), 1)))
    steps = np.arange(len(rates))
    for j, layer in enumerate(layers):
        ax.plot(steps, rates[:, j], color=colours[j], lw=1.4, label=layer)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.set_title(title, fontsize=10)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    ax.grid(alpha=0.3)
    if layers:
        ax.legend(fontsize=7, ncol=2 if len(layers) > 8 else 1, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
