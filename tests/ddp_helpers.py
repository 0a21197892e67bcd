"""Callbacks for tests that run the CLI in subprocesses (DDP re-executes the command line)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class StackDigest(Callback):
    """After every round, each rank records a digest of all its frozen stack buffers."""

    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)

    def on_fit_end(self, trainer, pl_module):
        digest = hashlib.sha256()
        for name, layer in sorted(pl_module.stacks.layers.items()):
            digest.update(name.encode())
            digest.update(layer.frozen_in.float().cpu().numpy().tobytes())
            digest.update(layer.frozen_Bt.float().cpu().numpy().tobytes())
        path = self.out_dir / f"rank{trainer.global_rank}.json"
        entries = json.loads(path.read_text()) if path.is_file() else []
        entries.append({"stacks": len(pl_module.stacks.frozen_stacks), "digest": digest.hexdigest()})
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(entries))
