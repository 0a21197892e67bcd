"""Bad input at the public entry points: the error names the culprit and nothing on disk changes.

Entry points: ``brainstacks fit`` (``cli_main``), ``CurriculumDataModule``, ``brainstacks
generate`` (``inference_cli.main``), ``RoutedGenerator``. Every case hashes the run directory
before and after. Covered elsewhere and not repeated here:

* a NaN batch skips the optimizer step and leaves the weights untouched:
  ``test_sft_curriculum.test_a_non_finite_loss_never_reaches_the_weights``;
* a flipped byte in a stack file named by checksum: ``test_sft_curriculum.test_corrupt_stack_file_is_named_...``;
  a corrupt manifest: ``test_fault_injection.test_corrupt_manifest_is_named_and_nothing_is_written``;
* the unit-level data errors: ``test_curriculum_data.py``; storage errors: ``test_storage.py``.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import torch

from brainstacks_pl import inference_cli
from brainstacks_pl.cli import cli_main
from brainstacks_pl.config import StackConfig
from brainstacks_pl.data import CurriculumDataModule, DomainConfig
from brainstacks_pl.inference import RoutedGenerator
from brainstacks_pl.layers.router import MetaRouter
from brainstacks_pl.model import BrainstacksModel
from brainstacks_pl.routing.artifact import save_router
from brainstacks_pl.routing.discovery import DiscoverySettings
from brainstacks_pl.run import RunDirectory
from brainstacks_pl.storage import StackRecord, save_tensors, sha256_bytes
from conftest import make_tiny_llama
from fault_helpers import REPO, fit_args, make_model_dir, tree_digest

DOMAINS = ["chat", "math"]
CONFIG = StackConfig(experts=2, rank=4, top_k=1, target_modules=["q_proj", "v_proj"], frozen_dtype="float32")


def frozen_stack(model, seed: int) -> dict[str, torch.Tensor]:
    stacks = BrainstacksModel(model, CONFIG, DOMAINS)
    for stack in stacks.add_stack("chat", seed=seed):
        torch.nn.init.normal_(stack.B, std=0.5, generator=torch.Generator().manual_seed(seed))
    return stacks.freeze_stack()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def finished_run(model_dir, tmp_path_factory) -> Path:
    """A run directory with one (random) stack per domain and an untrained router; no training."""
    root = tmp_path_factory.mktemp("run") / "run"
    stacks = BrainstacksModel(make_tiny_llama(), CONFIG, DOMAINS, base_model_id=str(model_dir))
    run = RunDirectory(root)
    run.open(stacks)
    for index, domain in enumerate(DOMAINS):
        run.write_stack(frozen_stack(make_tiny_llama(), index), StackRecord(file="", sha256="", domain=domain, round=0))
    run.manifest.completed_domains = list(DOMAINS)
    torch.manual_seed(0)
    info = {"domains": DOMAINS, "dropout": 0.1, "router_seq_len": 64, "mid_weight": 0.45, "gate_threshold": 0.12, "discovery": DiscoverySettings().__dict__}
    save_router(root, run.manifest, MetaRouter(32, len(DOMAINS), hidden=16), info)
    run.save_manifest()
    return root


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


def generate(run: Path, *extra: str) -> tuple[int, str]:
    """``brainstacks generate`` in-process; returns (exit code, stderr)."""
    import contextlib

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = inference_cli.main(["generate", "--run", str(run), "--max_new_tokens", "2", *extra], stdout=io.StringIO())
    return code, err.getvalue()


# ---------------------------------------------------------------------- YAML configs
YAML_CASES = {
    "unknown key": ("model:\n  init_args:\n    stack:\n      rnak: 8\n", "rnak"),
    "wrong type": ("boosting:\n  max_rounds: many\n", "max_rounds"),
    "wrong type nested": ("data:\n  init_args:\n    batch_size: [4]\n", "batch_size"),
    "not a mapping": ("- just\n- a list\n", "config"),
}


@pytest.mark.parametrize("case", sorted(YAML_CASES))
def test_bad_yaml_config_is_named(case, model_dir, run_copy, tmp_path, capsys):
    text, culprit = YAML_CASES[case]
    extra = tmp_path / "extra.yaml"
    extra.write_text(text)
    before = tree_digest(run_copy)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(fit_args(model_dir, run_copy, "--config", str(extra)))
    assert exit_info.value.code != 0
    assert culprit in capsys.readouterr().err
    assert tree_digest(run_copy) == before


def test_missing_config_file_is_named(run_copy, capsys):
    before = tree_digest(run_copy)
    with pytest.raises(SystemExit):
        cli_main(["fit", "--config", "/nonexistent/brainstacks.yaml", "--trainer.default_root_dir", str(run_copy)])
    assert "/nonexistent/brainstacks.yaml" in capsys.readouterr().err
    assert tree_digest(run_copy) == before


# ---------------------------------------------------------------------- data files
def _write(path: Path, content: bytes) -> str:
    path.write_bytes(content)
    return str(path)


DATA_CASES = {
    # name: (file name, bytes or None for a missing file, what the error must mention)
    "missing file": ("law.jsonl", None, "law.jsonl"),
    "empty file": ("law.jsonl", b"", "empty"),
    "missing columns": ("law.jsonl", b'{"question_text": "a", "reply": "b"}\n' * 4, "cannot detect the format from columns ['question_text', 'reply']"),
    "non-utf8 bytes": ("law.jsonl", b'{"prompt": "caf\xe9", "response": "ok"}\n', "UTF-8"),
    "empty domain": ("law.jsonl", b'{"prompt": "", "response": ""}\n' * 4, "no usable examples"),
    "not json": ("law.jsonl", b"this is not json\n", "law.jsonl"),
}


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_bad_data_file_names_domain_and_problem(case, model_dir, run_copy, tmp_path):
    filename, content, culprit = DATA_CASES[case]
    path = tmp_path / filename if content is None else Path(_write(tmp_path / filename, content))
    domains = f'--data.domains=[{{name: chat, path: "demo:chat", max_examples: 16}}, {{name: law, path: "{path}"}}]'
    before = tree_digest(run_copy)
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        cli_main(fit_args(model_dir, run_copy, domains))
    assert "law" in str(err.value) and culprit in str(err.value), str(err.value)
    assert tree_digest(run_copy) == before


def test_over_long_text_is_truncated_and_counted_not_a_crash(model_dir, tmp_path):
    rows = [{"prompt": f"question {i}", "response": "x" * 5000} for i in range(6)]
    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = CurriculumDataModule([DomainConfig("long", str(path))], tokenizer=str(model_dir), max_seq_len=64, batch_size=2, val_fraction=0.0)
    data.setup("fit")
    data.set_domain("long")
    assert data.decontamination_report["long"]["truncated"] == len(rows)
    batch = next(iter(data.train_dataloader()))
    assert batch["input_ids"].shape[1] <= 64 and (batch["labels"] != -100).any(), "the truncated rows keep response tokens"


# ---------------------------------------------------------------------- stack files
def _replace_stack(run: Path, data: bytes) -> str:
    """Put ``data`` where chat's stack was and make the manifest checksum agree (so only the content is wrong)."""
    manifest = json.loads((run / "manifest.json").read_text())
    record = manifest["stacks"][0]
    (run / record["file"]).write_bytes(data)
    record["sha256"] = sha256_bytes(data)
    (run / "manifest.json").write_text(json.dumps(manifest))
    return record["file"]


def _other_base_stack(tmp_path: Path) -> bytes:
    path = tmp_path / "other.safetensors"
    save_tensors(path, frozen_stack(make_tiny_llama(hidden_size=48, num_attention_heads=4, num_key_value_heads=2), 0))
    return path.read_bytes()


def _pickled_stack(tmp_path: Path) -> bytes:
    path = tmp_path / "pickle.pt"
    torch.save(frozen_stack(make_tiny_llama(), 0), path)
    return path.read_bytes()


STACK_CASES = {
    "from another base": (_other_base_stack, "has shape"),
    "a pickle": (_pickled_stack, "pickle"),
    "truncated": (lambda tmp: _other_base_stack(tmp)[:100], "truncated or corrupt"),
}


@pytest.mark.parametrize("case", sorted(STACK_CASES))
def test_bad_stack_file_is_refused_naming_it(case, run_copy, tmp_path):
    make, problem = STACK_CASES[case]
    name = _replace_stack(run_copy, make(tmp_path))
    before = tree_digest(run_copy)
    code, err = generate(run_copy, "--prompt", "hello", "--mode", "ungated")
    assert code == 2 and name in err and problem in err, err
    assert tree_digest(run_copy) == before


def test_stack_file_from_another_base_is_refused_by_a_resumed_fit(run_copy, tmp_path):
    """Same check through ``RunDirectory.load_stacks`` (what a resumed ``fit`` calls)."""
    from brainstacks_pl.storage import StackFileError

    name = _replace_stack(run_copy, _other_base_stack(tmp_path))
    before = tree_digest(run_copy)
    run = RunDirectory(run_copy, is_writer=False)
    stacks = BrainstacksModel(make_tiny_llama(), CONFIG, DOMAINS)
    run.open(stacks)
    with pytest.raises(StackFileError, match=rf"{name}: tensor .* has shape"):
        run.load_stacks(stacks)
    assert tree_digest(run_copy) == before


# ---------------------------------------------------------------------- inference requests
def test_router_from_another_set_of_domains_is_refused(run_copy):
    path = run_copy / "router" / "router.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "domains": ["chat", "legal"]}))
    before = tree_digest(run_copy)
    code, err = generate(run_copy, "--prompt", "hello")
    assert code == 2 and "legal" in err and "router.json" in err, err
    assert tree_digest(run_copy) == before


@pytest.mark.parametrize("prompt", ["", "   \n"], ids=["empty", "whitespace"])
def test_generate_with_an_empty_prompt(prompt, run_copy):
    before = tree_digest(run_copy)
    code, err = generate(run_copy, "--prompt", prompt, "--mode", "ungated")
    assert code == 2 and "empty prompt" in err, err
    assert tree_digest(run_copy) == before


def test_generate_on_a_directory_that_is_not_a_run(tmp_path):
    code, err = generate(tmp_path, "--prompt", "hello")
    assert code == 2 and str(tmp_path / "manifest.json") in err, err
    assert not list(tmp_path.iterdir())
