"""RunDirectory: where a run's stacks, manifest, round checkpoints and reports live.

Layout::

    RUN/manifest.json                  table of contents (storage.Manifest)
    RUN/stacks/<domain>-r<k>.safetensors
    RUN/null_space/<domain>.safetensors
    RUN/rounds/<domain>-r<k>/checkpoints/last.ckpt   (Lightning; only while a round runs)
    RUN/forgetting_matrix.json
    RUN/tensorboard/                   TensorBoard event files

Only global rank 0 writes; every rank reads. A lock file keeps a second process from
writing into the same run directory at the same time. Every path built from a name (a domain
from the manifest or the config) is checked to stay inside the run directory, and nothing is
deleted that the run did not write: a checkpoint that fails to load is renamed aside.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor

from brainstacks_pl.errors import StackFileError, UserError
from brainstacks_pl.fingerprint import base_location, check_base_model
from brainstacks_pl.model import BrainstacksModel
from brainstacks_pl.storage import (
    MANIFEST_NAME,
    Manifest,
    StackRecord,
    check_domain_name,
    inside,
    load_tensors,
    save_tensors,
    serialize_tensors,
    sha256_bytes,
)

log = logging.getLogger(__name__)

__all__ = ["RunDirectory", "RunLockedError", "NonFiniteStackError"]


class RunLockedError(UserError, RuntimeError):
    """Another live process holds this run directory."""


def _lock_owner() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "slurm_job_id": os.environ.get("SLURM_JOB_ID")}


def _create_exclusive(path: Path, content: str) -> bool:
    """Atomically create ``path`` holding ``content``; False if it already exists.

    A complete temp file is hard-linked into place: ``link`` fails if the target exists (also
    on NFS, unlike ``O_EXCL`` on old clients), and a reader never sees a half-written lock.
    """
    tmp = path.with_name(f"{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    tmp.write_text(content)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def _read_lock(path: Path) -> dict | None:
    """The lock's owner; an old-style lock (a bare pid) counts as this host's."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    try:
        owner = json.loads(text)
    except json.JSONDecodeError:
        owner = None
    if isinstance(owner, int):
        owner = {"pid": owner}
    if not isinstance(owner, dict):
        owner = {"pid": 0}  # unreadable: nobody can be holding it
    owner.setdefault("host", socket.gethostname())
    return owner


def _stale(owner: dict, me: dict) -> bool:
    if me["slurm_job_id"] and owner.get("slurm_job_id") == me["slurm_job_id"]:
        return True  # this job, requeued (or restarted by srun): the earlier holder is gone
    if owner.get("host") != me["host"]:
        return False
    pid = owner.get("pid")
    return not (isinstance(pid, int) and pid > 0 and _pid_alive(pid))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class NonFiniteStackError(UserError, FloatingPointError):
    """A stack about to be written has NaN or inf weights (training diverged)."""


class RunDirectory:
    """A run directory; ``accept_new_base`` lets ``open`` take a base whose fingerprint differs."""

    def __init__(self, root: str | Path, is_writer: bool = True, accept_new_base: bool = False):
        self.root = Path(root)
        self.is_writer = is_writer
        self.accept_new_base = accept_new_base
        self.manifest: Manifest | None = None

    # ------------------------------------------------------------------ paths
    def _named(self, *parts: str, domain: str) -> Path:
        """``root/parts...`` for a name derived from ``domain``, checked to stay inside the run."""
        check_domain_name(domain, str(self.root))
        return inside(self.root, "/".join(parts), str(self.root))

    def stack_path(self, domain: str, round: int) -> Path:
        return self._named("stacks", f"{domain}-r{int(round)}.safetensors", domain=domain)

    def null_space_path(self, domain: str) -> Path:
        """The null-space bases a domain's stacks were projected against (measurements beside it as .json)."""
        return self._named("null_space", f"{domain}.safetensors", domain=domain)

    def round_dir(self, domain: str, round: int) -> Path:
        return self._named("rounds", f"{domain}-r{int(round)}", domain=domain)

    def resume_checkpoint(self, domain: str, round: int) -> str | None:
        """The round's last Lightning checkpoint if it is readable.

        One that fails to load (cut short by a kill, or damaged) is moved aside to
        ``rounds/<domain>-r<k>.unreadable-<n>.ckpt`` with a warning, never deleted (the round
        directory goes once its stack is written; this file stays): the round restarts from scratch.
        """
        path = self.round_dir(domain, round) / "checkpoints" / "last.ckpt"
        if not path.is_file():
            return None
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            if self.is_writer:
                round_dir = self.round_dir(domain, round)
                aside = next(
                    p
                    for n in range(1, 10_000)
                    if not (p := round_dir.with_name(f"{round_dir.name}.unreadable-{n}.ckpt")).exists()
                )
                os.replace(path, aside)
                log.warning(
                    "%s could not be loaded (%s: %s); renamed to %s, the round restarts from its beginning",
                    path,
                    type(err).__name__,
                    err,
                    aside.name,
                )
            return None
        return str(path)

    # ------------------------------------------------------------------ lock
    @property
    def lock_path(self) -> Path:
        return self.root / ".lock"

    def acquire_lock(self) -> None:
        """Claim the run directory for this process tree (rank 0); a stale lock is taken over.

        The lock file is created atomically (``os.link`` of a complete temp file: two runs
        started at the same moment cannot both win) and records pid, host and SLURM job id.
        A lock is stale when its process is dead on this host, or when it belongs to this same
        SLURM job (a requeued job resumes on whatever node it gets). A lock from another host
        cannot be checked, so it is respected.
        """
        if not self.is_writer:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        me = _lock_owner()
        for _ in range(3):
            if _create_exclusive(self.lock_path, json.dumps(me)):
                return
            owner = _read_lock(self.lock_path)
            if owner is None:  # removed between our attempt and the read: try again
                continue
            if owner.get("pid") == me["pid"] and owner.get("host") == me["host"]:
                return  # ours already (re-entrant)
            if not _stale(owner, me):
                where = f"process {owner.get('pid')} on {owner.get('host')}" + (
                    f" (SLURM job {owner['slurm_job_id']})" if owner.get("slurm_job_id") else ""
                )
                raise RunLockedError(
                    f"{self.root} is in use by {where}; wait for it or use another --trainer.default_root_dir"
                    f" (if that process is gone, delete {self.lock_path})"
                )
            log.warning("%s: taking over the stale lock of %s", self.root, owner)
            self.lock_path.unlink(missing_ok=True)
        raise RunLockedError(f"{self.root}: could not take the lock {self.lock_path} (another run keeps claiming it)")

    def release_lock(self) -> None:
        """Remove the lock if this process holds it (never another run's lock)."""
        if not self.is_writer:
            return
        owner = _read_lock(self.lock_path)
        if owner is not None and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
            self.lock_path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ manifest and stacks
    def open(self, stacks: BrainstacksModel, prompt_template: str | None = None) -> Manifest:
        """Load (and check) the manifest of an earlier run, or start a new one.

        ``prompt_template`` (the SFT data's resolved template) is recorded by a new run; a resumed
        run refuses a different one (its stacks were trained in the recorded template)."""
        shapes, config = stacks.layer_shapes(), stacks.stack_config.to_dict()
        for domain in stacks.domains:
            check_domain_name(domain, "the curriculum")
        where = str(self.root / MANIFEST_NAME)
        saved = None
        if Manifest.exists(self.root):
            self.manifest = Manifest.load(self.root)
            saved = asdict(self.manifest)
            self.manifest.check_compatible(shapes, config, stacks.domains, where=where)
            self.manifest.domains = list(stacks.domains)
            if prompt_template is not None and prompt_template != self.manifest.prompt_template:
                raise StackFileError(
                    f"{where}: the run's stacks were trained with prompt_template "
                    f"{self.manifest.prompt_template!r}; this config renders prompts with {prompt_template!r}"
                )
        else:
            self.manifest = Manifest(
                base_model_id=base_location(stacks.base_model_id),
                layer_shapes=shapes,
                stack_config=config,
                domains=list(stacks.domains),
                **({"prompt_template": prompt_template} if prompt_template is not None else {}),
            )
        self.check_base(stacks.base_model_id)
        if asdict(self.manifest) != saved:  # nothing is rewritten that did not change
            self.save_manifest()
        if self.is_writer:
            self._remove_orphan_temp_files()
            self._remove_finished_round_dirs()
        return self.manifest

    def check_base(self, name_or_path: str) -> None:
        """Compare the base being used with the one the run records (``fingerprint.py``); keep the
        new location of a moved base; record the fingerprint of a run from before fingerprints."""
        if not name_or_path:  # a model built in memory (tests, notebooks): nothing on disk to compare
            return
        previous = self.manifest.base_model
        self.manifest.base_model = check_base_model(
            previous, name_or_path, str(self.root / MANIFEST_NAME), self.accept_new_base
        )
        if previous.get("fingerprint") and previous.get("fingerprint") != self.manifest.base_model["fingerprint"]:
            log.warning(
                "%s: base model replaced by %s (--accept_new_base); stacks trained on %s",
                self.root,
                self.manifest.base_model["location"],
                previous.get("location"),
            )
        self.manifest.base_model_id = self.manifest.base_model["location"]

    def _remove_finished_round_dirs(self) -> None:
        """Round directories (checkpoints) of stacks the manifest already lists.

        ``write_stack`` lists the stack, then removes its round directory; a kill between the two
        leaves a checkpoint that no rerun would ever read or delete.
        """
        for record in self.manifest.stacks:
            leftover = self.round_dir(record.domain, record.round)
            if leftover.exists():
                log.info("removing %s: its stack %s is already written", leftover, record.file)
                shutil.rmtree(leftover, ignore_errors=True)

    def _remove_orphan_temp_files(self) -> None:
        """Temp files of atomic writes cut short by a kill (never renamed into place).

        Safe because the writer holds the lock; another run's lock temp file (``.lock.*``) is
        left alone, it may be mid-acquisition.
        """
        for tmp in self.root.rglob(".*.tmp"):
            if not tmp.name.startswith(".lock."):
                log.info("removing %s, left by an interrupted write", tmp)
                tmp.unlink(missing_ok=True)

    def save_manifest(self) -> None:
        if self.is_writer:
            self.manifest.save(self.root)

    def load_stacks(self, stacks: BrainstacksModel) -> int:
        """Put every stack the manifest lists into ``stacks`` as frozen.

        Each file is checked once: checksum and values here, names and shapes against the
        model by ``load_frozen_stack`` (a ``StackFileError`` naming the file either way).
        """
        for record in self.manifest.stacks[len(stacks.frozen_stacks) :]:
            path = self.root / record.file
            tensors, _ = load_tensors(path, expected_sha256=record.sha256)
            stacks.load_frozen_stack(tensors, record.domain, record.round, where=str(path))
        return len(self.manifest.stacks)

    def records(self, domain: str) -> list[StackRecord]:
        return [r for r in self.manifest.stacks if r.domain == domain]

    def write_stack(self, tensors: dict[str, Tensor], record: StackRecord) -> StackRecord:
        """Write a frozen stack file and list it in the manifest (file first, then manifest)."""
        path = self.stack_path(record.domain, record.round)
        bad = [
            key
            for key, value in tensors.items()
            if not value.is_floating_point() or not bool(torch.isfinite(value).all())
        ]
        if bad:
            raise NonFiniteStackError(
                f"the {record.phase} stack {record.domain}-r{record.round} "
                f"has non-finite weights in {bad[:3]}; nothing was written "
                "(training diverged: lower the learning rate or enable gradient clipping)"
            )
        record.file = str(path.relative_to(self.root))
        metadata = {
            "domain": record.domain,
            "round": str(record.round),
            "base_model_id": self.manifest.base_model_id,
            "phase": record.phase,
        }
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
