"""RunDirectory: where a run's stacks, manifest, round checkpoints and reports live.

Layout::

    RUN/manifest.json                  table of contents (storage.Manifest)
    RUN/stacks/<domain>-r<k>.safetensors
    RUN/null_space/<domain>.safetensors
    RUN/rounds/<domain>-r<k>/checkpoints/last.ckpt   (Lightning; only while a round runs)
    RUN/forgetting_matrix.json
    RUN/tensorboard/                   TensorBoard event files

Only global rank 0 writes; every rank reads. A lock file keeps a second process from
writing into the same run directory at the same time.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from torch import Tensor

from brainstacks_pl.model import BrainstacksModel
from brainstacks_pl.storage import Manifest, StackRecord, load_tensors, save_tensors, serialize_tensors, sha256_bytes

__all__ = ["RunDirectory", "RunLockedError"]


class RunLockedError(RuntimeError):
    """Another live process holds this run directory."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunDirectory:
    def __init__(self, root: str | Path, is_writer: bool = True):
        self.root = Path(root)
        self.is_writer = is_writer
        self.manifest: Manifest | None = None

    # ------------------------------------------------------------------ paths
    def stack_path(self, domain: str, round: int) -> Path:
        return self.root / "stacks" / f"{domain}-r{round}.safetensors"

    def null_space_path(self, domain: str) -> Path:
        """The null-space bases a domain's stacks were projected against (measurements beside it as .json)."""
        return self.root / "null_space" / f"{domain}.safetensors"

    def round_dir(self, domain: str, round: int) -> Path:
        return self.root / "rounds" / f"{domain}-r{round}"

    def resume_checkpoint(self, domain: str, round: int) -> str | None:
        """The round's last Lightning checkpoint if it is readable; a torn one is discarded."""
        path = self.round_dir(domain, round) / "checkpoints" / "last.ckpt"
        if not path.is_file():
            return None
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a checkpoint cut short by a kill: the round restarts from scratch
            if self.is_writer:
                path.unlink(missing_ok=True)
            return None
        return str(path)

    # ------------------------------------------------------------------ lock
    def acquire_lock(self) -> None:
        """Claim the run directory for this process tree (rank 0); a stale lock is taken over."""
        if not self.is_writer:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        lock = self.root / ".lock"
        if lock.exists():
            try:
                pid = int(lock.read_text().strip() or 0)
            except (ValueError, OSError):
                pid = 0
            if pid and pid != os.getpid() and _pid_alive(pid):
                raise RunLockedError(f"{self.root} is in use by process {pid}; wait for it or use another --trainer.default_root_dir")
        lock.write_text(str(os.getpid()))

    def release_lock(self) -> None:
        if self.is_writer:
            (self.root / ".lock").unlink(missing_ok=True)

    # ------------------------------------------------------------------ manifest and stacks
    def open(self, stacks: BrainstacksModel) -> Manifest:
        """Load (and check) the manifest of an earlier run, or start a new one."""
        shapes, config = stacks.layer_shapes(), stacks.stack_config.to_dict()
        if Manifest.exists(self.root):
            self.manifest = Manifest.load(self.root)
            self.manifest.check_compatible(shapes, config, stacks.domains, where=str(self.root / "manifest.json"))
            self.manifest.domains = list(stacks.domains)
        else:
            self.manifest = Manifest(base_model_id=stacks.base_model_id, layer_shapes=shapes, stack_config=config, domains=list(stacks.domains))
        self.save_manifest()
        return self.manifest

    def save_manifest(self) -> None:
        if self.is_writer:
            self.manifest.save(self.root)

    def load_stacks(self, stacks: BrainstacksModel) -> int:
        """Put every stack the manifest lists into ``stacks`` as frozen (checksums verified)."""
        shapes = self.manifest.stack_shapes()
        for record in self.manifest.stacks[len(stacks.frozen_stacks) :]:
            tensors, _ = load_tensors(self.root / record.file, expected_sha256=record.sha256, expected_shapes=shapes)
            stacks.load_frozen_stack(tensors, record.domain, record.round)
        return len(self.manifest.stacks)

    def records(self, domain: str) -> list[StackRecord]:
        return [r for r in self.manifest.stacks if r.domain == domain]

    def write_stack(self, tensors: dict[str, Tensor], record: StackRecord) -> StackRecord:
        """Write a frozen stack file and list it in the manifest (file first, then manifest)."""
        path = self.stack_path(record.domain, record.round)
        record.file = str(path.relative_to(self.root))
        metadata = {"domain": record.domain, "round": str(record.round), "base_model_id": self.manifest.base_model_id, "phase": record.phase}
        if self.is_writer:
            record.sha256 = save_tensors(path, tensors, metadata)
        else:  # same bytes, same checksum: every rank's manifest matches rank 0's
            record.sha256 = sha256_bytes(serialize_tensors(tensors, metadata))
        self.manifest.stacks.append(record)
        self.save_manifest()
        if self.is_writer:
            shutil.rmtree(self.round_dir(record.domain, record.round), ignore_errors=True)
        return record

    def verify(self) -> None:
        """Re-read every stack file and check its checksum (raises StackFileError naming the file)."""
        for record in self.manifest.stacks:
            load_tensors(self.root / record.file, expected_sha256=record.sha256)

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.root)!r})"

