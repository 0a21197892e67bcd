"""Training throughput and peak memory per stack, for scaling checks and capacity planning.

Lightning's ``ThroughputMonitor`` reports samples and FLOPs; what sizes a brainstacks job is
*real* (non-padding) tokens per second and the peak memory of a round, with a frozen base and
S frozen stacks. This callback logs both per round (``perf/<domain>/stack<k>/...``) and, with
``out_path``, appends one JSON record per round that benchmarks read back.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

__all__ = ["ThroughputRecorder", "peak_memory_gib"]


def peak_memory_gib(device: torch.device) -> float:
    """Peak allocated memory: CUDA allocator peak on a GPU, peak resident set size on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**30 if sys.platform == "darwin" else 2**20)


class ThroughputRecorder(Callback):
    """Real tokens per second (all ranks) and peak memory of each training round.

    The first ``warmup_steps`` steps of a round are excluded from the rate: they include
    allocator growth, kernel autotuning and FSDP's lazy initialisation.
    """

    def __init__(self, out_path: str | None = None, warmup_steps: int = 2):
        self.out_path = Path(out_path) if out_path else None
        self.warmup_steps = warmup_steps
        self._tokens = 0
        self._steps = 0
        self._seconds = 0.0
        self._started = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._tokens, self._steps, self._seconds = 0, 0, 0.0
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self._started = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        elapsed = time.perf_counter() - self._started
        self._steps += 1
        if self._steps <= self.warmup_steps:
            return
        if isinstance(batch, dict) and "attention_mask" in batch:
            self._tokens += int(batch["attention_mask"].sum())  # this rank's; summed once at the end
        self._seconds += elapsed

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # One all-reduce per round, not per step: the other ranks' tokens count towards the rate.
        self._tokens = int(
            trainer.strategy.reduce(torch.tensor(float(self._tokens), device=pl_module.device), reduce_op="sum")
        )
        info = getattr(getattr(pl_module, "stacks", None), "active_info", None)
        tag = f"{info.domain}/stack{info.round}" if info is not None else "phase"
        record = {
            "stack": tag,
            "world_size": trainer.world_size,
            "measured_steps": max(self._steps - self.warmup_steps, 0),
            "tokens": self._tokens,
            "seconds": self._seconds,
            "tokens_per_s": self._tokens / self._seconds if self._seconds > 0 else float("nan"),
            "peak_memory_gib": peak_memory_gib(pl_module.device),
            "device": torch.cuda.get_device_name(pl_module.device) if pl_module.device.type == "cuda" else "cpu",
        }
        if trainer.logger is not None:
            trainer.logger.log_metrics(
                {
                    f"perf/{tag}/tokens_per_s": record["tokens_per_s"],
                    f"perf/{tag}/peak_memory_gib": record["peak_memory_gib"],
                },
                step=trainer.global_step,
            )
        if self.out_path is not None and trainer.is_global_zero:
            records = json.loads(self.out_path.read_text()) if self.out_path.is_file() else []
            self.out_path.parent.mkdir(parents=True, exist_ok=True)
            self.out_path.write_text(json.dumps([*records, record], indent=2))
