"""The trained router on disk: ``RUN/router/router.safetensors`` + ``RUN/router/router.json``.

The safetensors file holds the router's weights and, when one was fitted, the capability-gap
detector's tensors (``novelty.*``, ``routing/novelty.py``; its threshold is in the json).
The json is the router's ``RouterSpec`` (``routing/spec.py``: its domains, the base model id
and a hash of the base's layer shapes, the feature recipe and the gate settings); the manifest records
``extra["router"] = {file, sha256, json}`` so a load verifies the checksum. A router from
another base, or trained on other domains than the run's stacks, is refused with a message
that says which.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

from brainstacks_pl.layers.router import MetaRouter
from brainstacks_pl.routing.novelty import NoveltyDetector
from brainstacks_pl.routing.spec import RouterFileError, RouterSpec
from brainstacks_pl.storage import Manifest, atomic_write_json, load_tensors, save_tensors

__all__ = ["RouterFileError", "layer_shapes_hash", "save_router", "load_router", "ROUTER_DIR"]

ROUTER_DIR = "router"


def layer_shapes_hash(layer_shapes: dict[str, list[int]]) -> str:
    """A short fingerprint of the base: every wrapped layer's name and (d_in, d_out)."""
    canonical = json.dumps({k: list(v) for k, v in sorted(layer_shapes.items())})
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def save_router(
    run_root: str | Path,
    manifest: Manifest,
    router: MetaRouter,
    spec: RouterSpec,
    write: bool = True,
    novelty: NoveltyDetector | None = None,
) -> dict[str, str]:
    """Write the router's weights, its capability-gap detector and ``spec`` (completed with the
    base's fingerprint, the router's sizes and the gap threshold); record them in
    ``manifest.extra['router']`` (not saved here)."""
    if router.n_domains != spec.n_domains:
        raise ValueError(f"the router has {router.n_domains} domains, its spec lists {list(spec.domains)}")
    root = Path(run_root)
    weights_file, json_file = f"{ROUTER_DIR}/router.safetensors", f"{ROUTER_DIR}/router.json"
    tensors = {k: v.detach().float().cpu() for k, v in router.state_dict().items()}
    if novelty is not None:
        tensors.update(novelty.tensors())
    spec = replace(
        spec,
        base_model_id=manifest.base_model_id,
        layer_shapes_hash=layer_shapes_hash(manifest.layer_shapes),
        d_model=router.d_model,
        hidden=router.hidden,
        gap_threshold=novelty.threshold if novelty is not None else None,
    )
    if write:
        sha = save_tensors(root / weights_file, tensors, {"kind": "meta_router", "domains": ",".join(spec.domains)})
        atomic_write_json(root / json_file, spec.to_json())
    else:
        sha = ""
    record = {"file": weights_file, "sha256": sha, "json": json_file}
    manifest.extra["router"] = record
    return record


def load_router(run_root: str | Path, manifest: Manifest) -> tuple[MetaRouter, RouterSpec, NoveltyDetector | None]:
    """The run's router (checksum verified), its spec, checked against the manifest, and its
    capability-gap detector (None for a router trained without one)."""
    root = Path(run_root)
    record = manifest.extra.get("router")
    if not record:
        raise RouterFileError(
            f"{root}: this run has no trained router; train one with "
            f"`brainstacks fit --config configs/router_demo.yaml --trainer.default_root_dir {root}`"
        )
    json_path = root / record["json"]
    try:
        data = json.loads(json_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise RouterFileError(f"{json_path}: router json is missing or unreadable ({err})") from err
    spec = RouterSpec.from_json(data, str(json_path))
    if spec.layer_shapes_hash != layer_shapes_hash(manifest.layer_shapes):
        raise RouterFileError(
            f"{json_path}: router was trained on another base model ({spec.base_model_id!r}); "
            f"this run's base is {manifest.base_model_id!r}"
        )
    with_stacks = {s.domain for s in manifest.stacks}
    missing = [d for d in spec.domains if d not in with_stacks]
    if missing:
        raise RouterFileError(
            f"{json_path}: router was trained on domains {list(spec.domains)} but this run has no stacks for {missing} "
            f"(run domains with stacks: {sorted(with_stacks)})"
        )
    tensors, _ = load_tensors(root / record["file"], expected_sha256=record["sha256"] or None)
    novelty = _load_novelty(tensors, spec, root / record["file"])
    router = MetaRouter(spec.d_model, spec.n_domains, hidden=spec.hidden, dropout=spec.dropout)
    try:
        router.load_state_dict(tensors)
    except RuntimeError as err:
        raise RouterFileError(f"{root / record['file']}: router weights do not match router.json ({err})") from err
    return router.eval(), spec, novelty


def _load_novelty(tensors: dict, spec: RouterSpec, where: Path) -> NoveltyDetector | None:
    """Take the detector's tensors out of ``tensors``: present exactly when the json has a gap threshold."""
    found = {k: tensors.pop(k) for k in list(tensors) if k.startswith("novelty.")}
    if spec.gap_threshold is None and not found:
        return None
    if spec.gap_threshold is None:
        raise RouterFileError(f"{where}: holds a capability-gap detector but router.json has no gap_threshold")
    try:
        novelty = NoveltyDetector.from_tensors(found, spec.gap_threshold)
    except (KeyError, ValueError) as err:
        raise RouterFileError(f"{where}: the capability-gap detector is missing or malformed ({err})") from None
    if novelty.d_model != spec.d_model or len(novelty.means) > spec.n_domains:
        raise RouterFileError(
            f"{where}: the capability-gap detector is {tuple(novelty.means.shape)} wide; "
            f"router.json says d_model {spec.d_model} and {spec.n_domains} domains"
        )
    return novelty
