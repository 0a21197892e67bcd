"""The null-space basis files of a run (``RUN/null_space/<domain>.safetensors`` and its
``.json`` report, listed in the manifest): a resumed run re-reads the saved basis instead of
recomputing it, so every round of a domain is projected against the same ``V``.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import Tensor

from brainstacks_pl.storage import (
    StackFileError,
    atomic_write_json,
    load_tensors,
    save_tensors,
    serialize_tensors,
    sha256_bytes,
)

log = logging.getLogger(__name__)

__all__ = ["load_saved_basis", "save_basis"]


def load_saved_basis(run, domain: str, stacks, k: int, solver: str) -> dict[str, Tensor] | None:
    """The basis saved for ``domain`` in the run (checksum verified, one ``[d_out, K]`` per layer
    of ``stacks``), or None when the manifest lists none; warns when it was made with another
    ``k`` or solver than this config's (the saved one is used: a domain's rounds share one V)."""
    record = run.manifest.null_space.get(domain)
    if record is None:
        return None
    tensors, metadata = load_tensors(run.root / record["file"], expected_sha256=record["sha256"])
    for name, layer in stacks.layers.items():
        if name not in tensors or tensors[name].dim() != 2 or tensors[name].shape[0] != layer.d_out:
            raise StackFileError(
                f"{run.root / record['file']}: no [d_out={layer.d_out}, K] basis "
                f"for layer '{name}' (basis from another model?)"
            )
    if (metadata.get("k"), metadata.get("solver")) != (str(k), solver):
        log.warning(
            "domain %s: re-using the saved null space (k=%s, solver=%s), not this config's (k=%d, solver=%s)",
            domain,
            metadata.get("k"),
            metadata.get("solver"),
            k,
            solver,
        )
    log.info("domain %s: null space re-read from %s", domain, record["file"])
    return {name: tensors[name] for name in stacks.layers}


def save_basis(
    run, domain: str, bases: dict[str, Tensor], report: dict[str, Any], k: int, solver: str, source: str
) -> None:
    """Write ``bases`` and ``report`` (on the writing rank) and list the file in the manifest
    (on every rank, with the same sha256)."""
    path = run.null_space_path(domain)
    metadata = {
        "domain": domain,
        "k": str(k),
        "solver": solver,
        "source": source,
        "rows": str(sum(report["rows"].values())),
    }
    if run.is_writer:
        sha = save_tensors(path, bases, metadata)
        atomic_write_json(path.with_suffix(".json"), {"domain": domain, **report})
    else:  # same bytes on every rank: every rank's manifest matches rank 0's
        sha = sha256_bytes(serialize_tensors(bases, metadata))
    run.manifest.null_space[domain] = {"file": str(path.relative_to(run.root)), "sha256": sha}
    run.save_manifest()
