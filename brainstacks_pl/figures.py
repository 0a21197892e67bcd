"""Labelled matplotlib figures for TensorBoard: forgetting matrix, routing, null-space spectra.

Each function returns a ``matplotlib.figure.Figure`` (built without ``pyplot``, so no global
figure state) with domains on the axes, the value written in each cell and a colour bar;
``log_figure`` hands it to ``SummaryWriter.add_figure``. docs/design.md ("Reading the
TensorBoard images") says how to read each one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["matrix_figure", "forgetting_figure", "routing_figure", "spectrum_figure", "similarity_figure", "log_figure"]


def _heatmap(
    ax,
    matrix: np.ndarray,
    rows: Sequence[str],
    cols: Sequence[str],
    fmt: str,
    vmin=None,
    vmax=None,
    cmap: str = "viridis",
    annotate: bool = True,
):
    """One labelled heatmap on ``ax``; NaN cells are left blank. Returns the image (for a colour bar)."""
    masked = np.ma.masked_invalid(np.asarray(matrix, dtype=float))
    image = ax.imshow(masked, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(cols)), labels=list(cols), rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), labels=list(rows))
    if annotate:
        lo, hi = image.get_clim()
        for i in range(masked.shape[0]):
            for j in range(masked.shape[1]):
                if masked.mask is not np.ma.nomask and masked.mask[i, j]:
                    continue
                value = float(masked[i, j])
                dark = (value - lo) / max(hi - lo, 1e-12) < 0.5  # viridis: dark at the low end
                ax.text(
                    j, i, format(value, fmt), ha="center", va="center", fontsize=8, color="white" if dark else "black"
                )
    return image


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def matrix_figure(
    matrix: np.ndarray,
    rows: Sequence[str],
    cols: Sequence[str],
    title: str,
    xlabel: str,
    ylabel: str,
    colorbar: str,
    fmt: str = ".3f",
    vmin=None,
    vmax=None,
    cmap: str = "viridis",
):
    """A heatmap of ``matrix`` [len(rows), len(cols)] with labelled axes, cell values and a colour bar."""
    fig = _figure(2.8 + 0.9 * max(len(cols), 3), 1.4 + 0.5 * max(len(rows), 3))
    ax = fig.add_subplot()
    image = _heatmap(ax, matrix, rows, cols, fmt, vmin, vmax, cmap)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.colorbar(image, ax=ax, label=colorbar)
    return fig


def forgetting_figure(matrices: dict[str, np.ndarray], after: Sequence[str], evaluated: Sequence[str]):
    """One panel per mode (ungated, isolated, as-frozen), on one colour scale. Rows: the domain
    just trained; columns: the domain evaluated; cells: its validation loss."""
    finite = [m[np.isfinite(m)] for m in matrices.values()]
    values = np.concatenate(finite) if finite else np.array([])
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    fig = _figure(2.4 + len(matrices) * (0.4 + 0.75 * max(len(evaluated), 2)), 1.8 + 0.45 * max(len(after), 2))
    axes = np.atleast_1d(fig.subplots(1, len(matrices), sharey=True))
    image = None
    for ax, (mode, matrix) in zip(axes, matrices.items()):
        image = _heatmap(ax, matrix, after, evaluated, ".3f", lo, hi if hi > lo else lo + 1e-6)
        ax.set_title(mode.replace("_", "-"), fontsize=10)
        ax.set_xlabel("domain evaluated")
    axes[0].set_ylabel("after training domain")
    fig.suptitle("forgetting matrix: validation loss of each domain (columns) after each domain (rows)", fontsize=10)
    fig.colorbar(image, ax=list(axes), label="validation loss (lower is better)")
    return fig


def routing_figure(report: dict[str, Any]):
    """Per source domain (rows), how often each domain is switched on (columns): oracle | router."""
    domains, sources = report["domains"], list(report["per_source"])
    fig = _figure(2.4 + 1.6 * max(len(domains), 2), 1.6 + 0.5 * max(len(sources), 2))
    axes = fig.subplots(1, 2, sharey=True)
    image = None
    for ax, who, label in zip(axes, ("oracle", "router"), ("outcome discovery (oracle)", "trained router")):
        matrix = np.zeros((len(sources), len(domains)))
        for i, source in enumerate(sources):
            for name, share in report["per_source"][source].get(who, {}).items():
                for j, domain in enumerate(domains):
                    matrix[i, j] += share if domain in name.split("+") else 0.0
        image = _heatmap(ax, matrix, sources, domains, ".0%", 0.0, 1.0)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("domain switched on")
    axes[0].set_ylabel("source domain of the prompt")
    fig.suptitle("routing on validation prompts: share of prompts with each domain on", fontsize=10)
    fig.colorbar(image, ax=list(axes), label="share of the source's prompts")
    return fig


def spectrum_figure(spectra: dict[str, Sequence[float]], domain: str):
    """Rows: layers; columns: singular value index; cells: log10(s_i / s_1) of the protected deltas."""
    names = list(spectra)
    width = max((len(v) for v in spectra.values()), default=1) or 1
    matrix = np.full((len(names), width), np.nan)
    for row, values in enumerate(spectra.values()):
        values = np.asarray(values, dtype=float)
        if values.size and values[0] > 0:
            matrix[row, : values.size] = np.log10(values / values[0] + 1e-12)
    fig = _figure(3.0 + min(width, 64) * 0.12, 1.4 + 0.22 * max(len(names), 2))
    ax = fig.add_subplot()
    image = _heatmap(
        ax, matrix, names, [str(i) if i % 8 == 0 else "" for i in range(width)], ".1f", cmap="magma", annotate=False
    )
    ax.tick_params(axis="y", labelsize=6)
    ax.set_title(f"null space before {domain}: singular value spectrum per layer", fontsize=10)
    ax.set_xlabel("singular direction index (0 = strongest)")
    ax.set_ylabel("layer")
    fig.colorbar(image, ax=ax, label="log10(s_i / s_0)")
    return fig


def similarity_figure(similarity: np.ndarray, sources: Sequence[str], domain: str):
    """Mean over layers of how much the earlier domains' protected subspaces overlap."""
    return matrix_figure(
        similarity,
        sources,
        sources,
        f"null space before {domain}:\ncross-domain subspace similarity",
        "earlier domain",
        "earlier domain",
        "overlap (0 orthogonal, 1 same)",
        fmt=".2f",
        vmin=0.0,
        vmax=1.0,
    )


def log_figure(logger, tag: str, figure, step: int = 0) -> bool:
    """``SummaryWriter.add_figure`` on a logger's experiment; False (and nothing) for other loggers."""
    experiment = getattr(logger, "experiment", None)
    if experiment is None or not hasattr(experiment, "add_figure"):
        return False
    experiment.add_figure(tag, figure, global_step=step, close=True)
    return True
