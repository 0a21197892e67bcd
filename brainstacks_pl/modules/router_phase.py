"""The steps of the router phase, in order (driven by ``RouterModule.run_phase``).

1. open RUN: base + every frozen stack (checksums verified), lock the directory;
2. outcome discovery per router domain, train and val split, cached on disk (resumable);
3. split by unique prompt, base-only features once per prompt;
4. one ``Trainer.fit`` of the router alone (``RouterModule.phase_callbacks`` is empty, and
   its trainer is asked for without the round checkpoint);
5. fit the capability-gap detector on the training prompts' features, calibrated on the
   validation prompts (``routing/novelty.py``);
6. save the best epoch and the detector, record them and the phase's settings in the
   manifest, write and print the routing report.

A rerun with the settings the router was trained with, and its files intact, has nothing to
do and says so without loading the base (``router_summary.router_is_finished``); changed
settings (named) or an unreadable router train it again, reusing the cached discovery when
the stacks and discovery settings match.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from brainstacks_pl.config import StackConfig
from brainstacks_pl.data.curriculum import encode_examples
from brainstacks_pl.fingerprint import check_base_model, is_local
from brainstacks_pl.model import BrainstacksModel
from brainstacks_pl.modules.router_summary import gap_note, print_router_summary, router_is_finished
from brainstacks_pl.phase import record_settings
from brainstacks_pl.progress import Progress
from brainstacks_pl.routing.artifact import ROUTER_DIR, save_router
from brainstacks_pl.routing.discovery import DiscoveryCache, RouteLossOracle, discover_examples, example_key
from brainstacks_pl.routing.features import collate_features, compute_features
from brainstacks_pl.routing.novelty import NoveltyDetector, fit_novelty, pooled_features
from brainstacks_pl.routing.report import (
    build_routing_report,
    log_routing_report,
    print_routing_report,
    write_routing_report,
)
from brainstacks_pl.routing.rows import RouterRow, drop_val_prompts, selection_scores
from brainstacks_pl.run import RunDirectory
from brainstacks_pl.storage import MANIFEST_NAME, Manifest

log = logging.getLogger(__name__)

__all__ = ["RouterPhase"]


class RouterPhase:
    def __init__(self, module, context):
        self.module, self.context = module, context
        is_writer = getattr(rank_zero_only, "rank", 0) == 0
        self.run_dir = RunDirectory(context.run_dir, is_writer=is_writer, accept_new_base=context.accept_new_base)
        self.datamodule = context.datamodule

    # ------------------------------------------------------------------ setup
    def _load(self) -> tuple[Manifest, BrainstacksModel]:
        root = self.run_dir.root
        if not Manifest.exists(root):
            raise FileNotFoundError(
                f"{root}: no {MANIFEST_NAME}; train the stacks first: brainstacks "
                f"fit --config configs/demo.yaml --trainer.default_root_dir {root}"
            )
        manifest = Manifest.load(root)
        module = self.module
        if not module.domain_names:
            module.domain_names = list(self.datamodule.domain_names)
        with_stacks = {s.domain for s in manifest.stacks}
        missing = [d for d in module.domain_names if d not in with_stacks]
        if missing:
            self._use_run_domains(manifest, missing, with_stacks)
        base = module.model_name_or_path or manifest.base_model_id
        if is_local(base):  # fail before loading; run.open checks every base again once it is loaded
            check_base_model(manifest.base_model, base, str(root / MANIFEST_NAME), self.context.accept_new_base)
        config = StackConfig.from_dict(manifest.stack_config)
        stacks = BrainstacksModel.from_pretrained(
            base, config, manifest.domains, quantization=module.quantization, dtype=module.dtype_name
        )
        if getattr(self.datamodule, "tokenizer_name", "set") is None:
            self.datamodule.tokenizer_name = base
        return manifest, stacks

    def _use_run_domains(self, manifest: Manifest, missing: list[str], with_stacks: set[str]) -> None:
        """The config names domains the run has no stacks for (e.g. the demo's five after a user's
        own two-domain fit): route over the run's domains instead, with the data its SFT phase
        used (recorded in the manifest), and say so. Without that record: a clear error."""
        from brainstacks_pl.data.sources import DomainConfig

        root, data = self.run_dir.root, self.datamodule
        sft = manifest.extra.get("settings", {}).get("sft", {})
        recorded = next((v for k, v in sft.items() if k in ("data.domains", "data.init_args.domains")), None)
        run_domains = [d for d in manifest.domains if d in with_stacks]
        sources = {d["name"]: d for d in recorded or [] if isinstance(d, dict) and "name" in d}
        if not run_domains or any(d not in sources for d in run_domains) or not hasattr(data, "domains"):
            raise ValueError(
                f"{root}: no stacks for router domains {missing}; the run has stacks for {sorted(with_stacks)}: "
                f"set data.domains (and model.domains) to those domains and their data"
            )
        paths = ", ".join(f"{d}: {sources[d].get('path')}" for d in run_domains)
        rank_zero_info(
            f"router domains: the config lists {self.module.domain_names} but {root} has stacks for {run_domains}; "
            f"routing over the run's domains, with the data its SFT phase used ({paths})"
        )
        data.domains = [DomainConfig(**sources[d]) for d in run_domains]
        self.module.domain_names = list(run_domains)

    def _fingerprint(self, manifest: Manifest) -> str:
        data = self.datamodule
        spec = {
            "stacks": [s.sha256 for s in manifest.stacks],
            "base": manifest.base_model_id,
            "domains": self.module.domain_names,
            "settings": asdict(self.module.discovery_settings),
            "max_seq_len": data.max_seq_len,
            "template": data.prompt_template,
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]

    # ------------------------------------------------------------------ steps
    def discover(self, stacks: BrainstacksModel, manifest: Manifest, device) -> dict[str, list]:
        """Per split, the ``RouterRow`` of every example of every router domain."""

        module, data, settings = self.module, self.datamodule, self.module.discovery_settings
        oracle = RouteLossOracle(
            stacks, data.pad_id, settings.chat_domain, settings.chat_floor, module.discovery_rows, device
        )
        fingerprint = self._fingerprint(manifest)
        rows: dict[str, list] = {"train": [], "val": []}
        work = [
            (domain, split, data.examples(domain, split)[:limit])
            for domain in module.domain_names
            for split, limit in (("train", module.max_train_examples), ("val", module.max_val_examples))
        ]
        progress = Progress("outcome discovery (examples)", sum(len(examples) for _, _, examples in work))
        caches: dict[str, DiscoveryCache] = {}
        for domain, split, examples in work:
            if not examples:
                continue
            if domain not in caches:
                caches[domain] = DiscoveryCache(
                    self.run_dir.root / ROUTER_DIR / "discovery" / f"{domain}.jsonl",
                    fingerprint,
                    write=self.run_dir.is_writer,
                )
            encoded = encode_examples(data.tokenizer, examples, data.max_seq_len, data.prompt_template)
            items = [encoded.item(i) for i in range(len(encoded))]
            keys = [example_key(e.prompt, e.response) for e in examples]
            records = discover_examples(
                oracle,
                items,
                keys,
                domain,
                split,
                caches[domain],
                settings,
                module.domain_names,
                module.discovery_chunk,
                progress,
            )
            rows[split].extend(RouterRow(e.prompt, domain, r.target, r.route) for e, r in zip(examples, records))
        log.info(
            "discovery: %d train + %d val examples, %d batched forwards",
            len(rows["train"]),
            len(rows["val"]),
            oracle.forwards,
        )
        return rows

    @torch.no_grad()
    def predict(self, prompts: list[str], features: dict[str, torch.Tensor], batch_size: int = 64) -> torch.Tensor:
        router = self.module.router.eval()
        out = []
        for start in range(0, len(prompts), batch_size):
            feats, mask = collate_features([features[p] for p in prompts[start : start + batch_size]])
            out.append(router.probabilities(feats.to(self.module.device), mask.to(self.module.device)).cpu())
        return torch.cat(out)

    # ------------------------------------------------------------------ the phase
    def run(self) -> None:
        if router_is_finished(self.run_dir.root, self.context.settings, self.run_dir.is_writer):
            return
        module, run = self.module, self.run_dir
        manifest, stacks = self._load()
        self.datamodule.use_run_template(manifest.prompt_template)  # the router reads prompts as the stacks do
        self.datamodule.setup("fit")
        run.acquire_lock()
        work_dir = run.root / ROUTER_DIR / "work"
        try:
            run.open(stacks)
            run.load_stacks(stacks)
            # No round checkpoint (it would hold a stack): the router phase keeps its best epoch itself.
            trainer = self.context.trainer_factory(work_dir, checkpoint=False)
            device = trainer.strategy.root_device
            stacks.to(device).eval()
            rows = self.discover(stacks, run.manifest, device)
            train, val = drop_val_prompts(rows["train"], rows["val"])
            if not train or not val:
                raise ValueError(
                    "the router needs training and validation examples, got "
                    f"{len(train)} and {len(val)} (check data.val_fraction)"
                )
            prompts = list(dict.fromkeys(r.prompt for r in [*train, *val]))
            feats = compute_features(
                stacks,
                self.datamodule.tokenizer,
                prompts,
                self.datamodule.prompt_template,
                module.router_seq_len,
                module.feature_batch_size,
                device,
                mid_weight=module.mid_weight,
            )
            features = dict(zip(prompts, feats))
            d_model = feats[0].shape[-1]
            del stacks  # the base is not needed while the router trains on cached features
            module._build_router(d_model)
            before = self.held_out(val, features)
            train_loader, val_loader = module.dataloaders(train, val, features)
            trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader)
            if module.best:
                module.router.load_state_dict(module.best["state"])
            self._finish(train, val, features, before)
        finally:
            run.release_lock()
            if run.is_writer:
                shutil.rmtree(work_dir, ignore_errors=True)

    def held_out(self, val, features) -> dict[str, float]:
        """The router's validation BCE and selection scores (the numbers its best epoch is chosen by)."""
        domains, was_training = self.module.domain_names, self.module.router.training
        probs = self.predict([r.prompt for r in val], features).double()  # [N, D]
        self.module.router.train(was_training)  # predict() switches to eval; the fit must keep its dropout
        targets = torch.tensor([r.target for r in val], dtype=torch.float64)  # [N, D]
        routes = torch.tensor([[1.0 if d in r.route else 0.0 for d in domains] for r in val])  # [N, D]
        bce = torch.nn.functional.binary_cross_entropy(probs.clamp(1e-7, 1 - 1e-7), targets).item()
        scores = selection_scores(probs, routes, self.module.decision_threshold)
        return {"val_bce": bce, "single_top1": scores["single_top1"], "mixed_exact": scores["mixed_exact"]}

    def fit_novelty(self, train, val, features) -> NoveltyDetector | None:
        """The capability-gap detector: fitted on the training prompts (labelled by source domain),
        its threshold calibrated on the validation prompts (None if ``false_gap_rate`` is None)."""
        if self.module.false_gap_rate is None:
            return None
        domains = self.module.domain_names
        train_sources: dict[str, str] = {}  # each unique prompt, labelled by its first source domain
        for row in train:
            train_sources.setdefault(row.prompt, row.source)
        held_out = list(dict.fromkeys(r.prompt for r in val))

        def pooled(prompts: list[str]) -> torch.Tensor:
            chunks = [collate_features([features[p] for p in prompts[i : i + 64]]) for i in range(0, len(prompts), 64)]
            return torch.cat([pooled_features(feats, mask) for feats, mask in chunks])

        return fit_novelty(
            pooled(list(train_sources)),
            [domains.index(source) for source in train_sources.values()],
            pooled(held_out),
            self.module.false_gap_rate,
            self.module.gap_shrinkage,
        )

    def _finish(self, train, val, features, before: dict[str, float]) -> None:
        module, run = self.module, self.run_dir
        best = {k: v for k, v in module.best.items() if k != "state"}
        spec = module.router_spec(
            prompt_template=self.datamodule.prompt_template, best=best, train_examples=len(train), val_examples=len(val)
        )
        novelty = self.fit_novelty(train, val, features)
        save_router(run.root, run.manifest, module.router, spec, write=run.is_writer, novelty=novelty)
        record_settings(run.manifest, "router", self.context.settings)
        run.save_manifest()
        probs = self.predict([r.prompt for r in val], features)
        chosen = [
            [d for d, p in zip(module.domain_names, row.tolist()) if p >= module.decision_threshold] for row in probs
        ]
        report = build_routing_report(module.domain_names, [r.source for r in val], [r.route for r in val], chosen)
        report["best"] = best
        if run.is_writer:
            write_routing_report(run.root / ROUTER_DIR / "routing_report.json", report)
            log_routing_report(self.context.logger, report)
            print_routing_report(report)
            notes = [gap_note(novelty, module.false_gap_rate, len({r.prompt for r in val}))]
            after = self.held_out(val, features)
            print_router_summary(run.root, module.domain_names, before, after, best, len(train), len(val), notes)
