"""RouterModule: the meta-router phase (outcome discovery, then router training).

    brainstacks fit --config configs/router_demo.yaml --trainer.default_root_dir RUN

``run_phase`` loads the base and every frozen stack of RUN (checksums verified), discovers
each example's best route (``routing/discovery.py``, cached under RUN/router/discovery/),
computes the base-only router features once per unique prompt (the base is frozen, so they
never change), then fits the ``MetaRouter`` alone on the cached features with
``BCE + margin_coeff x margin penalty``. The best epoch by
``0.50 x single-domain top-1 + 0.35 x mixed-set exact match - 0.15 x val BCE`` is saved as
RUN/router/router.safetensors + router.json and recorded in the manifest.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from functools import partial
from typing import Any, ClassVar, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor
from torch.utils.data import DataLoader
from torchmetrics.classification import MultilabelAccuracy, MultilabelAUROC, MultilabelF1Score

from brainstacks_pl.layers.router import MetaRouter
from brainstacks_pl.losses import router_loss
from brainstacks_pl.optim import lr_factor
from brainstacks_pl.routing.features import collate_features
from brainstacks_pl.routing.rows import RouterRow, drop_val_prompts, selection_scores
from brainstacks_pl.routing.spec import DiscoverySettings, RouterSpec

log = logging.getLogger(__name__)

__all__ = ["RouterModule", "RouterRow", "drop_val_prompts", "selection_scores"]


class _Rows(torch.utils.data.Dataset):
    def __init__(self, rows: Sequence[RouterRow], features: dict[str, Tensor], domains: Sequence[str]):
        self.rows, self.features, self.domains = list(rows), features, list(domains)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        row = self.rows[i]
        route = torch.tensor([1.0 if d in row.route else 0.0 for d in self.domains])
        return self.features[row.prompt], torch.tensor(row.target), route


def _collate(items):
    features, mask = collate_features([f for f, _, _ in items])
    return {
        "features": features,
        "mask": mask,
        "targets": torch.stack([t for _, t, _ in items]),
        "routes": torch.stack([r for _, _, r in items]),
    }


class RouterModule(L.LightningModule):
    """Trains the meta-router of a finished SFT run.

    Args:
        model_name_or_path: Base model; None reads ``base_model_id`` from RUN/manifest.json.
        domains: Router domains (linked from the data module); each must have stacks in RUN.
        quantization: ``nf4`` loads the base in 4-bit for discovery and features.
        dtype: Base compute dtype.
        hidden: Router width (512 in the paper; ~2M parameters on a 2048-wide base).
        dropout: Dropout of the router's fusion MLP.
        router_seq_len: Prompt tokens the router sees (bos and the last ones: ``prompts.keep_prompt_end``).
        mid_weight: Weight of the middle layer's hidden state (0.45; the last layer gets the rest).
        discovery: How targets are discovered (chat floor, greedy threshold, soft reasoning, prior).
        gate_threshold: Inference gate: domains below it are not loaded (stored in router.json).
        decision_threshold: A domain counts as "on" for exact match and the report when p >= this.
        false_gap_rate: Fraction of held-out in-domain prompts the capability gap may fire on: the
            novelty threshold is calibrated to it (``routing/novelty.py``); None fits no detector
            (then only the gate can fire the gap).
        gap_shrinkage: Shrinkage of the novelty detector's covariance towards a scaled identity.
        margin: Margin of the penalty ``mean(relu(margin - |p - 0.5|))``.
        margin_coeff: Weight of the margin penalty added to the BCE.
        optimizer: Optimizer of the router parameters.
        warmup_steps: Linear warmup steps before the cosine decay.
        min_lr_ratio: Final learning rate as a fraction of the peak.
        batch_size: Router training batch size (prompts).
        max_train_examples: Training examples per domain used for discovery and training (None: all).
        max_val_examples: Validation examples per domain (None: all).
        discovery_rows: Rows (example x route) per discovery forward.
        discovery_chunk: Examples per discovery chunk (the cache is written after each).
        feature_batch_size: Prompts per base forward when computing router features.
        seed: Seed of the router initialisation and the shuffle.
    """

    phase: ClassVar[str] = "router"
    """The phase's name (its TensorBoard run is ``tensorboard/router``)."""

    phase_callbacks: ClassVar[tuple[str, ...]] = ()
    """No SFT callback applies: the router is not a stack (no boosting, null space or best-stack
    guard); the phase keeps its own best epoch (``self.best``)."""

    def __init__(
        self,
        model_name_or_path: str | None = None,
        domains: list[str] | None = None,
        quantization: Literal["nf4"] | None = None,
        dtype: str = "float32",
        hidden: int = RouterSpec.hidden,
        dropout: float = RouterSpec.dropout,
        router_seq_len: int = RouterSpec.router_seq_len,
        mid_weight: float = RouterSpec.mid_weight,
        discovery: DiscoverySettings | None = None,
        gate_threshold: float = RouterSpec.gate_threshold,
        decision_threshold: float = RouterSpec.decision_threshold,
        false_gap_rate: float | None = RouterSpec.false_gap_rate,
        gap_shrinkage: float = RouterSpec.gap_shrinkage,
        margin: float = 0.3,
        margin_coeff: float = 0.05,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        warmup_steps: int = 10,
        min_lr_ratio: float = 0.05,
        batch_size: int = 32,
        max_train_examples: int | None = None,
        max_val_examples: int | None = None,
        discovery_rows: int = 64,
        discovery_chunk: int = 32,
        feature_batch_size: int = 16,
        seed: int = 0,
    ):
        super().__init__()
        self.model_name_or_path = model_name_or_path
        self.domain_names = list(domains or [])
        self.quantization, self.dtype_name = quantization, dtype
        self.hidden, self.dropout, self.router_seq_len, self.mid_weight = hidden, dropout, router_seq_len, mid_weight
        self.discovery_settings = discovery or DiscoverySettings()
        self.gate_threshold, self.decision_threshold = gate_threshold, decision_threshold
        self.false_gap_rate, self.gap_shrinkage = false_gap_rate, gap_shrinkage
        self.margin, self.margin_coeff = margin, margin_coeff
        self.optimizer_factory, self.warmup_steps, self.min_lr_ratio = optimizer, warmup_steps, min_lr_ratio
        self.batch_size, self.max_train_examples, self.max_val_examples = (
            batch_size,
            max_train_examples,
            max_val_examples,
        )
        self.discovery_rows, self.discovery_chunk, self.feature_batch_size = (
            discovery_rows,
            discovery_chunk,
            feature_batch_size,
        )
        self.seed = seed
        self.router: MetaRouter | None = None
        self.best: dict[str, Any] = {}
        self._val_outputs: list[tuple[Tensor, Tensor, Tensor]] = []

    # ------------------------------------------------------------------ metrics
    def _build_router(self, d_model: int) -> None:
        torch.manual_seed(self.seed)
        n = len(self.domain_names)
        self.router = MetaRouter(d_model, n, hidden=self.hidden, dropout=self.dropout)
        self.val_accuracy = MultilabelAccuracy(num_labels=n, threshold=self.decision_threshold)
        self.val_f1 = MultilabelF1Score(num_labels=n, threshold=self.decision_threshold)
        self.val_auroc = MultilabelAUROC(num_labels=n, average=None)

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        logits = self.router(batch["features"], batch["mask"])
        loss = router_loss(logits, batch["targets"], self.margin_coeff, self.margin)
        self.log("router/train_loss", loss, prog_bar=True, batch_size=len(logits))
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        logits = self.router(batch["features"], batch["mask"])
        probs, routes = torch.sigmoid(logits), batch["routes"].long()
        self.val_accuracy.update(probs, routes)
        self.val_f1.update(probs, routes)
        self.val_auroc.update(probs, routes)
        bce = F.binary_cross_entropy_with_logits(logits.float(), batch["targets"].float(), reduction="none").mean(1)
        self._val_outputs.append((probs.detach().cpu(), routes.cpu(), bce.detach().cpu()))

    def on_validation_epoch_end(self) -> None:
        probs, routes, bce = (torch.cat(parts) for parts in zip(*self._val_outputs))
        self._val_outputs = []
        scores = selection_scores(probs, routes, self.decision_threshold)
        val_bce = bce.mean().item()
        score = 0.50 * scores["single_top1"] + 0.35 * scores["mixed_exact"] - 0.15 * val_bce
        metrics = {
            "router/val_bce": val_bce,
            "router/single_top1": scores["single_top1"],
            "router/mixed_exact": scores["mixed_exact"],
            "router/score": score,
        }
        metrics["router/accuracy"] = self.val_accuracy.compute().item()
        metrics["router/f1"] = self.val_f1.compute().item()
        with _quiet_metric_warnings():
            auroc = self.val_auroc.compute()
        for domain, value in zip(self.domain_names, auroc.tolist()):
            if math.isfinite(value) and routes[:, self.domain_names.index(domain)].float().std() > 0:
                metrics[f"router/auroc/{domain}"] = value
        for metric in (self.val_accuracy, self.val_f1, self.val_auroc):
            metric.reset()
        if self.trainer.sanity_checking:
            return
        self.log_dict(metrics, prog_bar=False)
        self.log("router_score", score, prog_bar=True)
        if not self.best or score > self.best["score"]:
            state = {k: v.detach().clone() for k, v in self.router.state_dict().items()}
            self.best = {"score": score, "epoch": self.current_epoch, "metrics": metrics, "state": state}

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.router.parameters())
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, partial(lr_factor, warmup=self.warmup_steps, total=total, floor=self.min_lr_ratio, cosine=True)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ the phase
    def run_phase(self, context) -> None:
        """Discovery, features, router fit, save, report (the steps are in ``modules/router_phase.py``)."""
        from brainstacks_pl.modules.router_phase import RouterPhase

        RouterPhase(self, context).run()

    def dataloaders(
        self, train: Sequence[RouterRow], val: Sequence[RouterRow], features: dict[str, Tensor]
    ) -> tuple[DataLoader, DataLoader]:
        generator = torch.Generator().manual_seed(self.seed)
        train_loader = DataLoader(
            _Rows(train, features, self.domain_names),
            batch_size=self.batch_size,
            shuffle=True,
            generator=generator,
            collate_fn=_collate,
        )
        val_loader = DataLoader(
            _Rows(val, features, self.domain_names), batch_size=max(self.batch_size, 64), collate_fn=_collate
        )
        return train_loader, val_loader

    def router_spec(self, **record: Any) -> RouterSpec:
        """The settings router.json records (``record``: the template and the training's numbers;
        ``save_router`` adds the base's fingerprint and the router's sizes)."""
        return RouterSpec(
            domains=tuple(self.domain_names),
            dropout=self.dropout,
            router_seq_len=self.router_seq_len,
            mid_weight=self.mid_weight,
            gate_threshold=self.gate_threshold,
            decision_threshold=self.decision_threshold,
            false_gap_rate=self.false_gap_rate,
            gap_shrinkage=self.gap_shrinkage,
            discovery=self.discovery_settings,
            hidden=self.hidden,
            **record,
        )


class _quiet_metric_warnings:
    """AUROC of a label with no positives in the validation set warns and returns 0; we drop it."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)
