"""Plain causal-LM pretraining: the phase that builds the demo base before any stack exists.

Documents are tokenised, wrapped as ``<s> doc </s>``, concatenated and cut into fixed rows of
``seq_len`` tokens (no padding, no attention mask: every position is a real token), and the
model minimises next-token cross-entropy on every position. AdamW with linear warmup then
cosine decay to ``min_lr_ratio * lr``, stepped every optimizer step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import Dataset
from transformers import LlamaConfig, LlamaForCausalLM

from brainstacks_pl.optim import lr_factor

__all__ = ["LossHistory", "PackedDataset", "PretrainModule", "lm_loss", "pack_token_ids"]


def pack_token_ids(docs: Sequence[Sequence[int]], seq_len: int, bos_id: int, eos_id: int) -> torch.Tensor:
    """``[n_rows, seq_len]`` int64 rows of ``<s> doc </s> <s> doc </s> ...``; the tail that fills no row is dropped."""
    flat = [tok for doc in docs for tok in (bos_id, *doc, eos_id)]
    n_rows = len(flat) // seq_len
    if n_rows == 0:
        raise ValueError(f"{len(flat)} tokens are fewer than one row of seq_len={seq_len}")
    return torch.tensor(flat[: n_rows * seq_len], dtype=torch.long).view(n_rows, seq_len)  # [R, S]


class PackedDataset(Dataset):
    """Fixed-length rows of token ids; each item is ``{"input_ids": [seq_len]}``."""

    def __init__(self, rows: torch.Tensor) -> None:
        if rows.ndim != 2:
            raise ValueError(f"rows must be [n_rows, seq_len], got shape {tuple(rows.shape)}")
        self.rows = rows

    def __len__(self) -> int:
        return self.rows.shape[0]

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.rows[idx]}


@torch.no_grad()
def lm_loss(model: torch.nn.Module, rows: torch.Tensor, batch_size: int = 32) -> float:
    """Mean next-token cross-entropy of ``model`` over packed ``rows`` (eval mode, token-weighted)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for chunk in rows.split(batch_size):  # [b, S]
        n = chunk.numel() - chunk.shape[0]  # predicted positions: S - 1 per row
        total += model(input_ids=chunk, labels=chunk).loss.item() * n
        count += n
    model.train(was_training)
    return total / count


class PretrainModule(L.LightningModule):
    """A ``LlamaForCausalLM`` built from ``model_config`` (``LlamaConfig`` kwargs), trained on packed rows."""

    def __init__(
        self,
        model_config: dict[str, Any],
        lr: float = 3e-3,
        warmup_steps: int = 50,
        max_steps: int = 1000,
        weight_decay: float = 0.1,
        min_lr_ratio: float = 0.1,
    ) -> None:
        super().__init__()
        if not 0 <= warmup_steps < max_steps:
            raise ValueError(f"warmup_steps must be in [0, max_steps={max_steps}), got {warmup_steps}")
        self.save_hyperparameters()
        self.model = LlamaForCausalLM(LlamaConfig(**model_config))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids).logits  # [B, S, V]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        ids = batch["input_ids"]  # [B, S]
        loss = self.model(input_ids=ids, labels=ids).loss  # labels are shifted inside the model
        self.log("train_loss", loss, prog_bar=True, batch_size=ids.shape[0])
        return loss

    def lr_factor(self, step: int) -> float:
        """Multiplier of ``lr`` at optimizer step ``step``: linear warmup, then cosine to ``min_lr_ratio``."""
        hp = self.hparams
        return lr_factor(step, hp.warmup_steps, hp.max_steps, hp.min_lr_ratio, cosine=True)

    def configure_optimizers(self):
        decay = [p for p in self.model.parameters() if p.ndim >= 2]  # matrices and embeddings
        no_decay = [p for p in self.model.parameters() if p.ndim < 2]  # RMSNorm weights
        groups = [
            {"params": decay, "weight_decay": self.hparams.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(groups, lr=self.hparams.lr, betas=(0.9, 0.95))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.lr_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class LossHistory(L.Callback):
    """Keeps every training-step loss (as returned by ``training_step``), for reports and tests."""

    def __init__(self) -> None:
        self._losses: list[torch.Tensor] = []

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._losses.append(outputs["loss"].detach())

    @property
    def losses(self) -> list[float]:
        return [float(x) for x in self._losses]
