"""Matplotlib figures: per-layer learning-rate curves (one line per layer, bottom layers lighter).

Figures are made with matplotlib's Figure class, not pyplot: no global figure registry to close
(a figure left open in a long search driver is memory held), no GUI backend to rule out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure


def _colours(n: int) -> np.ndarray:
    return colormaps["viridis"](np.linspace(0.0, 0.9, max(n, 1)))


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def lr_curves(history: tuple[list[str], np.ndarray], path: Path, title: str) -> Path:
    layers, rates = history
    fig = Figure(figsize=(8, 4.5), dpi=110)
    ax = fig.subplots()
    colours = _colours(len(layers))
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
    return _save(fig, path)


def lr_bars(layers: list[str], rates: np.ndarray, path: Path, title: str) -> Path:
    """Each layer's rate at one step (the write-up's bar chart at the end of warm-up)."""
    fig = Figure(figsize=(8, 4), dpi=110)
    ax = fig.subplots()
    ax.bar(np.arange(len(layers)), rates, color=_colours(len(layers)))
    ax.set_xticks(np.arange(len(layers)), layers, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def results_bars(table, path: Path, title: str) -> Path:
    """Horizontal bars: mean CV RMSE per row (best checkpoint, last/SWA), fold sd as error bars."""
    n = len(table)
    fig = Figure(figsize=(9, 1.2 + 0.55 * n), dpi=110)
    ax = fig.subplots()
    y = np.arange(n)
    ax.barh(y - 0.18, table["rmse_best"], 0.36, xerr=table["rmse_best_sd"], label="best checkpoint", color="#3b75af",
            capsize=2)
    ax.barh(y + 0.18, table["rmse_last"], 0.36, xerr=table["rmse_last_sd"], label="last / SWA weights",
            color="#9ecae1", capsize=2)
    if table["reference"].notna().any():
        ax.scatter(table["reference"], y, marker="D", color="#d62728", zorder=3, label="reference (roberta-base)")
    ax.set_yticks(y, [str(label)[:60] for label in table["label"]], fontsize=7)
    ax.invert_yaxis()
    low = float(np.nanmin(np.r_[table["rmse_best"], table["rmse_last"], table["reference"].dropna()]))
    high = float(np.nanmax(np.r_[table["rmse_best"] + table["rmse_best_sd"].fillna(0),
                                 table["rmse_last"] + table["rmse_last_sd"].fillna(0), table["reference"].dropna()]))
    ax.set_xlim(max(0.0, low - 0.1 * (high - low + 1e-3) - 0.02), high + 0.02)
    ax.set_xlabel("RMSE (lower is better)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)
