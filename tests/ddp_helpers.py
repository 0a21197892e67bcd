"""Callbacks for tests that run the CLI in subprocesses (DDP re-executes the command line)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

from lightning.pytorch.callbacks import Callback
from torch import Tensor


def tensors_digest(tensors: Mapping[str, Tensor]) -> str:
    """sha256 over the names and float32 bytes of ``tensors`` in name order: two ranks report the
    same digest exactly when their tensors are bit-identical."""
    digest = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def write_rank_entry(out_dir: Path, rank: int, entry: object) -> None:
    """``out_dir/rank<rank>.json``: what one rank reports back to the test that launched it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"rank{rank}.json").write_text(json.dumps(entry))


class StackDigest(Callback):
    """After every round, each rank records a digest of all its frozen stack buffers."""

    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)

    def on_fit_end(self, trainer, pl_module):
        buffers = {}
        for name, layer in pl_module.stacks.layers.items():
            buffers.update({f"{name}.frozen_in": layer.frozen_in, f"{name}.frozen_Bt": layer.frozen_Bt})
        path = self.out_dir / f"rank{trainer.global_rank}.json"
        entries = json.loads(path.read_text()) if path.is_file() else []
        entries.append({"stacks": len(pl_module.stacks.frozen_stacks), "digest": tensors_digest(buffers)})
        write_rank_entry(self.out_dir, trainer.global_rank, entries)
