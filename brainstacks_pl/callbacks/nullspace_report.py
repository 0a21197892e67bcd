"""Logging what the null-space computation measured (``null_space/<domain>/...`` metrics and
figures); kept apart from the callback so the projection reads without the plotting.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["log_report"]


def log_report(logger, domain: str, step: int, report: dict[str, Any]) -> None:
    """What the null-space computation measured, to ``logger``: energy and rank per layer,
    cross-domain subspace similarity, and the spectrum and similarity figures."""
    if logger is None:
        return
    layers = report["layers"]
    metrics = {f"null_space/{domain}/energy/{name}": entry["energy"] for name, entry in layers.items()}
    metrics[f"null_space/{domain}/energy_mean"] = float(np.mean([e["energy"] for e in layers.values()]))
    metrics[f"null_space/{domain}/rank_mean"] = float(np.mean([e["rank"] for e in layers.values()]))
    similarity = np.mean(
        [np.array(e["cross_domain_similarity"], dtype=float) for e in layers.values()], axis=0
    )  # [m, m]
    sources = report["domains"]
    for i in range(len(sources)):
        for j in range(i + 1, len(sources)):
            metrics[f"null_space/{domain}/cross_domain/{sources[i]}~{sources[j]}"] = float(similarity[i, j])
    logger.log_metrics(metrics, step=step)
    from brainstacks_pl.figures import log_figure, similarity_figure, spectrum_figure

    spectra = {name: entry["singular_values"] for name, entry in layers.items()}
    log_figure(logger, f"null_space/{domain}/spectrum_log10", spectrum_figure(spectra, domain), step)
    log_figure(
        logger, f"null_space/{domain}/cross_domain_similarity", similarity_figure(similarity, sources, domain), step
    )
