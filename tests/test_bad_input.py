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

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_llama
from fault_helpers import REPO, fit_args, make_model_dir, subprocess_env, tree_digest

from brainstacks_pl import commands, inference_cli
from brainstacks_pl.cli import cli_main
from brainstacks_pl.config import StackConfig
from brainstacks_pl.data import CurriculumDataModule, DomainConfig
from brainstacks_pl.layers.router import MetaRouter
from brainstacks_pl.model import BrainstacksModel
from brainstacks_pl.routing.artifact import save_router
from brainstacks_pl.routing.spec import RouterSpec
from brainstacks_pl.run import RunDirectory
from brainstacks_pl.storage import Manifest, StackRecord, load_tensors, save_tensors, sha256_bytes

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
    spec = RouterSpec(domains=tuple(DOMAINS), router_seq_len=64)
    save_router(root, run.manifest, MetaRouter(32, len(DOMAINS), hidden=16), spec)
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
        code = inference_cli.main(
            ["generate", "--run", str(run), "--max_new_tokens", "2", *extra], stdout=io.StringIO()
        )
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
    "missing columns": (
        "law.jsonl",
        b'{"question_text": "a", "reply": "b"}\n' * 4,
        "cannot detect the format from columns ['question_text', 'reply']",
    ),
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
    data = CurriculumDataModule(
        [DomainConfig("long", str(path))], tokenizer=str(model_dir), max_seq_len=64, batch_size=2, val_fraction=0.0
    )
    data.setup("fit")
    data.set_domain("long")
    assert data.decontamination_report["long"]["truncated"] == len(rows)
    batch = next(iter(data.train_dataloader()))
    assert batch["input_ids"].shape[1] <= 64 and (batch["labels"] != -100).any(), (
        "the truncated rows keep response tokens"
    )


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


# ====================================================================== the bad-input matrix
# Every ``brainstacks`` command, driven in-process through ``commands.main`` on a copy of the
# shared run: each case damages the run (or passes a bad flag), runs one command and is
# classified:
#   named    exit 2, exactly one ``error: ...`` line matching the case's pattern, and the run
#            directory and the sibling ``outside`` directory byte-for-byte unchanged;
#   handled  the command did the right thing (its own check) and ``outside`` is unchanged;
#   raw      an exception escaped, or a wrong exit status or message;
#   silent   exit 0 where an error was due, or a handled case whose check failed.
# ``test_matrix_counts`` prints the four counts; raw and silent must be 0.
OUTCOMES: dict[str, list[str]] = {"named": [], "handled": [], "raw": [], "silent": []}
STACK_ARGS = (
    "--model.stack.experts",
    "2",
    "--model.stack.rank",
    "4",
    "--model.stack.top_k",
    "1",
    "--model.stack.target_modules",
    "[q_proj, v_proj]",
    "--model.stack.frozen_dtype",
    "float32",
)
SMALL_DOMAINS = (
    '--data.domains=[{name: chat, path: "demo:chat", max_examples: 16}, '
    '{name: math, path: "demo:math", max_examples: 16}]'
)


@dataclass
class Env:
    run: Path
    outside: Path
    tmp: Path
    model_dir: Path
    other_model: Path
    monkeypatch: pytest.MonkeyPatch


@dataclass
class Outcome:
    code: int | None
    out: str
    err: str
    exc: BaseException | None = None


@dataclass
class Case:
    command: str
    setup: Callable[[Env], list[str]]
    """Damages the run (or not) and returns the command line after ``brainstacks``."""
    expect: str | None = None
    """Pattern of the one ``error:`` line (exit 2); None: a handled case, judged by ``check``."""
    check: Callable[[Env, Outcome], bool] | None = None
    stdin: str = ""
    run_unchanged: bool = True


def invoke(argv: list[str], stdin: str = "") -> Outcome:
    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                return Outcome(commands.main(argv), out.getvalue(), err.getvalue())
            except SystemExit as exit_:  # argparse / jsonargparse
                return Outcome(exit_.code, out.getvalue(), err.getvalue())
            except Exception as exc:  # noqa: BLE001 - a raw traceback is what the matrix counts
                return Outcome(None, out.getvalue(), err.getvalue(), exc)
    finally:
        sys.stdin = saved


# ---------------------------------------------------------------------- command lines
def gen(env: Env, *extra: str) -> list[str]:
    return [
        "generate",
        "--run",
        str(env.run),
        "--prompt",
        "hello",
        "--max_new_tokens",
        "2",
        "--mode",
        "ungated",
        *extra,
    ]


def chat(env: Env, *extra: str) -> list[str]:
    return ["chat", "--run", str(env.run), "--mode", "ungated", "--max_new_tokens", "2", *extra]


def evaluate(env: Env, *extra: str) -> list[str]:
    return [
        "evaluate",
        "--run",
        str(env.run),
        "--tasks",
        "chat_mc",
        "--modes",
        "ungated",
        "--limit",
        "2",
        "--no_tensorboard",
        "--output",
        str(env.tmp / "results.json"),
        *extra,
    ]


def fit(env: Env, *extra: str) -> list[str]:
    return [
        *fit_args(env.model_dir, env.run, *STACK_ARGS, "--trainer.enable_progress_bar", "false"),
        SMALL_DOMAINS,
        *extra,
    ]


def phase(config: str) -> Callable[..., list[str]]:
    def argv(env: Env, *extra: str) -> list[str]:
        return [
            "fit",
            "--config",
            str(REPO / "configs" / config),
            "--trainer.default_root_dir",
            str(env.run),
            "--trainer.enable_progress_bar",
            "false",
            *extra,
        ]

    return argv


router = lambda env, *extra: phase("router_demo.yaml")(env, SMALL_DOMAINS, "--model.hidden", "16", *extra)  # noqa: E731
dpo, grpo = phase("dpo_demo.yaml"), phase("grpo_demo.yaml")
COMMANDS = {"generate": gen, "chat": chat, "evaluate": evaluate, "fit": fit, "router": router, "dpo": dpo, "grpo": grpo}


# ---------------------------------------------------------------------- damage to a run
def manifest_of(env: Env) -> dict:
    return json.loads((env.run / "manifest.json").read_text())


def write_manifest(env: Env, manifest) -> None:
    (env.run / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def edit(change: Callable[[dict, Env], None]) -> Callable[[Env], None]:
    def damage(env: Env) -> None:
        manifest = manifest_of(env)
        change(manifest, env)
        write_manifest(env, manifest)

    return damage


def _escaping_domain(m: dict, env: Env) -> None:
    (env.outside / "victim-r0").mkdir()
    (env.outside / "victim-r0" / "precious.txt").write_text("do not delete")
    m["stacks"][0]["domain"] = "../../outside/victim"


def _file_outside(m: dict, env: Env) -> None:
    shutil.copy(env.run / m["stacks"][0]["file"], env.outside / "chat-r0.safetensors")  # checksum matches
    m["stacks"][0]["file"] = "../outside/chat-r0.safetensors"


def _set(path: str, value) -> Callable[[dict, Env], None]:
    def change(m: dict, env: Env) -> None:
        *parents, last = path.split(".")
        target = m
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        target[int(last) if isinstance(target, list) else last] = value(env) if callable(value) else value

    return change


def replace_stack(
    tensor_change: Callable[[dict[str, torch.Tensor]], None] | None = None,
    data: Callable[[Env], bytes] | None = None,
    fix_sha: bool = True,
) -> Callable[[Env], None]:
    def damage(env: Env) -> None:
        manifest = manifest_of(env)
        path = env.run / manifest["stacks"][0]["file"]
        if data is not None:
            content = data(env)
        else:
            from safetensors.torch import load_file, save

            tensors = load_file(path)
            tensor_change(tensors)
            content = save(tensors)
        path.write_bytes(content)
        if fix_sha:
            manifest["stacks"][0]["sha256"] = sha256_bytes(content)
            write_manifest(env, manifest)

    return damage


def _first(tensors: dict[str, torch.Tensor], value: float | None = None, dtype=None) -> None:
    key = sorted(tensors)[0]
    if dtype is not None:
        tensors[key] = tensors[key].to(dtype)
    else:
        tensors[key][0, 0] = value


def _flip_byte(env: Env) -> bytes:
    data = bytearray((env.run / manifest_of(env)["stacks"][0]["file"]).read_bytes())
    data[-10] ^= 0xFF
    return bytes(data)


DAMAGE: dict[str, tuple[Callable[[Env], None], str]] = {
    "domain escapes the run": (edit(_escaping_domain), r"domain name '\.\./\.\./outside/victim' is not allowed"),
    "file outside the run": (edit(_file_outside), r"'\.\./outside/chat-r0\.safetensors' leaves the run directory"),
    "absolute file path": (
        edit(_set("stacks.0.file", lambda env: str(env.run / "stacks" / "chat-r0.safetensors"))),
        r"leaves the run directory",
    ),
    "sha256 null": (edit(_set("stacks.0.sha256", None)), r"stacks\[0\] needs a sha256"),
    "sha256 not hex": (edit(_set("stacks.0.sha256", "xyz")), r"stacks\[0\] needs a sha256"),
    "record listed twice": (edit(lambda m, env: m["stacks"].append(dict(m["stacks"][0]))), r"is listed twice"),
    "stack relabelled to an unknown domain": (
        edit(_set("stacks.1.domain", "legal")),
        r"domain 'legal', which is not in the run's domains",
    ),
    "stack_config null": (edit(_set("stack_config", None)), r"stack_config must be dict, got None"),
    "experts four": (edit(_set("stack_config.experts", "four")), r"stack_config\.experts must be int, got 'four'"),
    "top_k above experts": (edit(_set("stack_config.top_k", 5)), r"top_k=5 exceeds experts=2"),
    "unsafe name in domains": (edit(_set("domains", ["chat", "../math"])), r"domain name '\.\./math' is not allowed"),
    "domain listed twice": (edit(_set("domains", ["chat", "chat"])), r"domains lists a name twice"),
    "layer shape not a pair": (
        edit(lambda m, env: m["layer_shapes"].update({next(iter(m["layer_shapes"])): [32]})),
        r"must be \[d_in, d_out\]",
    ),
    "negative round": (edit(_set("stacks.0.round", -1)), r"round must be >= 0"),
    "round a string": (edit(_set("stacks.0.round", "zero")), r"stacks\[0\]\.round must be int"),
    "completed an unknown domain": (edit(_set("completed_domains", ["legal"])), r"completed_domains \['legal'\]"),
    "null-space basis outside": (
        edit(_set("null_space", {"chat": {"file": "../../outside/basis.safetensors", "sha256": "0" * 64}})),
        r"null_space\['chat'\]: file path .* leaves the run directory",
    ),
    "router file outside": (
        edit(_set("extra.router.file", "/etc/passwd")),
        r"extra\.router: file path '/etc/passwd' leaves the run directory",
    ),
    "unknown manifest field": (edit(_set("owner", "me")), r"unknown fields \['owner'\]"),
    "stacks not a list": (edit(_set("stacks", {})), r"stacks must be list"),
    "base_model_id edited": (
        edit(_set("base_model_id", lambda env: str(env.other_model))),
        r"is not the one this run's stacks were trained on .*weights differ",
    ),
    "fingerprint edited": (
        edit(_set("base_model.fingerprint.weights", "0" * 64)),
        r"weights differ.*--accept_new_base",
    ),
    "manifest not json": (lambda env: (env.run / "manifest.json").write_text("{"), r"manifest is not valid JSON"),
    "manifest missing": (lambda env: (env.run / "manifest.json").unlink(), r"no manifest"),
    "manifest a list": (lambda env: write_manifest(env, [1]), r"unsupported manifest schema_version None"),
    "schema version 99": (edit(_set("schema_version", 99)), r"schema_version 99"),
    "int64 tensor": (replace_stack(lambda t: _first(t, dtype=torch.int64)), r"has dtype torch\.int64"),
    "NaN in a tensor": (replace_stack(lambda t: _first(t, float("nan"))), r"contains NaN or inf"),
    "inf in a tensor": (replace_stack(lambda t: _first(t, float("inf"))), r"contains NaN or inf"),
    "a pickle": (replace_stack(data=lambda env: _pickled_stack(env.tmp)), r"pickle"),
    "truncated": (replace_stack(data=lambda env: _other_base_stack(env.tmp)[:100]), r"truncated or corrupt"),
    "stack of another base": (replace_stack(data=lambda env: _other_base_stack(env.tmp)), r"has shape"),
    "stack file missing": (lambda env: (env.run / "stacks" / "chat-r0.safetensors").unlink(), r"stack file is missing"),
    "flipped byte": (replace_stack(data=_flip_byte, fix_sha=False), r"sha256 mismatch"),
}
MANIFEST_ONLY = [
    k
    for k in DAMAGE
    if k
    not in (
        "int64 tensor",
        "NaN in a tensor",
        "inf in a tensor",
        "a pickle",
        "truncated",
        "stack of another base",
        "stack file missing",
        "flipped byte",
    )
]
DAMAGE_PER_COMMAND = {
    "generate": list(DAMAGE),
    "evaluate": [
        "domain escapes the run",
        "file outside the run",
        "sha256 null",
        "record listed twice",
        "stack relabelled to an unknown domain",
        "experts four",
        "base_model_id edited",
        "NaN in a tensor",
        "int64 tensor",
        "manifest not json",
    ],
    "chat": [
        "domain escapes the run",
        "absolute file path",
        "stack_config null",
        "record listed twice",
        "fingerprint edited",
        "inf in a tensor",
        "int64 tensor",
        "flipped byte",
    ],
    "fit": [
        "domain escapes the run",
        "file outside the run",
        "sha256 null",
        "record listed twice",
        "unsafe name in domains",
        "experts four",
        "fingerprint edited",
        "NaN in a tensor",
    ],
    "router": [
        "domain escapes the run",
        "file outside the run",
        "record listed twice",
        "stack_config null",
        "fingerprint edited",
        "router file outside",
    ],
    "dpo": [
        "domain escapes the run",
        "absolute file path",
        "sha256 not hex",
        "record listed twice",
        "fingerprint edited",
        "int64 tensor",
    ],
    "grpo": ["domain escapes the run", "null-space basis outside", "experts four", "base_model_id edited"],
}


def damaged(command: str, damage: str) -> Case:
    apply, pattern = DAMAGE[damage]

    def setup(env: Env) -> list[str]:
        apply(env)
        return COMMANDS[command](env)

    if command == "chat" and damage not in MANIFEST_ONLY:
        # chat loads stacks per request: the bad file is named for that prompt and the session goes on
        return Case(
            command,
            setup,
            stdin="hello\n",
            check=lambda env, out: re.search(f"error: .*{pattern}", out.out) is not None,
        )
    return Case(command, setup, pattern, stdin="hello\n")


CASES: dict[str, Case] = {
    f"{command}: {damage}": damaged(command, damage)
    for command, names in DAMAGE_PER_COMMAND.items()
    for damage in names
}


# ---------------------------------------------------------------------- flags, prompts, phases
def _moved_base(env: Env) -> Path:
    """The run's base copied to a new place, the manifest still naming the old (gone) one."""
    moved = env.tmp / "moved" / "tiny"
    shutil.copytree(env.model_dir, moved)
    edit(
        lambda m, env: (
            m.update(base_model_id="/nonexistent/old/tiny"),
            m["base_model"].update(location="/nonexistent/old/tiny"),
        )
    )(env)
    return moved


def _fresh_fit(lr: str) -> Callable[[Env], list[str]]:
    """A new one-domain run trained at a diverging learning rate, the base given as a relative path."""

    def setup(env: Env) -> list[str]:
        cwd = env.tmp / "cwd"
        cwd.mkdir()
        env.monkeypatch.chdir(cwd)
        relative = os.path.relpath(env.model_dir, cwd)
        return [
            *fit_args(
                Path(relative),
                env.tmp / "fresh",
                "--trainer.max_epochs",
                "1",
                "--trainer.limit_train_batches",
                "2",
                "--trainer.enable_progress_bar",
                "false",
            ),
            '--data.domains=[{name: math, path: "demo:math", max_examples: 16}]',
            "--boosting.max_rounds",
            "1",
            "--model.optimizer.init_args.lr",
            lr,
            "--model.warmup_steps",
            "0",
            "--trainer.gradient_clip_val",
            "null",
        ]

    return setup


def _fresh_run_is_finite_and_portable(env: Env, outcome: Outcome) -> bool:
    fresh = env.tmp / "fresh"
    manifest = Manifest.load(fresh)
    finite = all(
        bool(torch.isfinite(t).all()) for r in manifest.stacks for t in load_tensors(fresh / r.file)[0].values()
    )
    env.monkeypatch.chdir(env.outside)  # generate from elsewhere: the relative base path was stored resolved
    answered = (
        invoke(["generate", "--run", str(fresh), "--prompt", "hi", "--max_new_tokens", "2", "--mode", "ungated"]).code
        == 0
    )
    return finite and answered and manifest.base_model_id == str(env.model_dir.resolve()) and len(manifest.stacks) == 1


def _deny_writes(env: Env) -> list[str]:
    real = os.access
    env.monkeypatch.setattr(
        os,
        "access",
        lambda path, mode, *a, **k: (
            False if mode & os.W_OK and str(path).startswith(str(env.run)) else real(path, mode, *a, **k)
        ),
    )
    return evaluate(env, "--output", str(env.run / "eval" / "results.json"))


def _outside_file(env: Env) -> list[str]:
    (env.outside / "a_file").write_text("x")
    return evaluate(env, "--output", str(env.outside / "a_file" / "results.json"))


answered_once = lambda env, out: out.code == 0 and out.out.count("mode: ungated") == 1  # noqa: E731
ZERO_STEPS = r"every round needs at least one step"
MISMATCH = r"is not the one this run's stacks were trained on"

SPECIFIC: dict[str, Case] = {
    # generate
    "generate: --device cuda:99": Case(
        "generate", lambda env: gen(env, "--device", "cuda:99"), r"--device cuda:99: this machine has"
    ),
    "generate: --device tpu": Case(
        "generate", lambda env: gen(env, "--device", "tpu7"), r"--device 'tpu7' is not a torch device"
    ),
    "generate: --dtype float7": Case(
        "generate",
        lambda env: gen(env, "--dtype", "float7"),
        r"--dtype must be a floating-point torch dtype such as float32, bfloat16, float16, got 'float7'",
    ),
    "generate: --run /etc/passwd": Case(
        "generate", lambda env: gen(env, "--run", "/etc/passwd"), r"/etc/passwd: not a run directory"
    ),
    "generate: --run missing": Case(
        "generate", lambda env: gen(env, "--run", str(env.tmp / "nope")), r"nope/manifest\.json: no manifest"
    ),
    "generate: missing base directory": Case(
        "generate",
        lambda env: gen(env, "--model_name_or_path", str(env.tmp / "no_model")),
        r"base model directory '.*no_model' does not exist",
    ),
    "generate: base is a file": Case(
        "generate", lambda env: gen(env, "--model_name_or_path", str(env.run / "manifest.json")), r"is a file"
    ),
    "generate: another base of the same shapes": Case(
        "generate", lambda env: gen(env, "--model_name_or_path", str(env.other_model)), MISMATCH
    ),
    "generate: --accept_new_base": Case(
        "generate",
        lambda env: gen(env, "--model_name_or_path", str(env.other_model), "--accept_new_base"),
        check=lambda env, out: out.code == 0,
    ),
    "generate: moved base, old path": Case(
        "generate",
        lambda env: (_moved_base(env), gen(env))[1],
        r"base model directory '/nonexistent/old/tiny' does not exist",
    ),
    "generate: moved base, new path given": Case(
        "generate",
        lambda env: gen(env, "--model_name_or_path", str(_moved_base(env))),
        check=lambda env, out: out.code == 0,
    ),
    "generate: empty prompt": Case("generate", lambda env: gen(env, "--prompt", "  "), r"empty prompt"),
    "generate: prompt over the context": Case("generate", lambda env: gen(env, "--prompt", "x" * 300), r"shorten it"),
    "generate: --max_new_tokens 0": Case(
        "generate", lambda env: gen(env, "--max_new_tokens", "0"), r"need max_new_tokens >= 1"
    ),
    "generate: --temperature -1": Case("generate", lambda env: gen(env, "--temperature", "-1"), r"temperature >= 0"),
    "generate: --mode bogus": Case("generate", lambda env: gen(env, "--mode", "bogus"), r"invalid choice: 'bogus'"),
    "generate: --max_new_tokens two": Case(
        "generate", lambda env: gen(env, "--max_new_tokens", "two"), r"invalid int value: 'two'"
    ),
    "generate: router of other domains": Case(
        "generate",
        lambda env: (
            (env.run / "router" / "router.json").write_text(
                json.dumps(
                    {**json.loads((env.run / "router" / "router.json").read_text()), "domains": ["chat", "legal"]}
                )
            ),
            gen(env, "--mode", "routed"),
        )[1],
        r"legal",
    ),
    # chat
    "chat: a Latin-1 byte in a prompt": Case(
        "chat",
        chat,
        stdin="caf\udce9\nhello\n",
        check=lambda env, out: answered_once(env, out) and "error: the prompt is not valid UTF-8" in out.out,
    ),
    "chat: bad session commands": Case(
        "chat",
        chat,
        stdin="/tokens 0\n/mode bogus\n/nope\nhello\n",
        check=lambda env, out: answered_once(env, out) and out.out.count("error: ") == 3,
    ),
    "chat: --device cuda:99": Case("chat", lambda env: chat(env, "--device", "cuda:99"), r"--device cuda:99"),
    "chat: --dtype float7": Case(
        "chat", lambda env: chat(env, "--dtype", "float7"), r"--dtype must be a floating-point torch dtype"
    ),
    "chat: another base": Case("chat", lambda env: chat(env, "--model_name_or_path", str(env.other_model)), MISMATCH),
    # evaluate
    "evaluate: read-only run": Case("evaluate", _deny_writes, r"cannot write results under .*/run/eval"),
    "evaluate: output under a file": Case("evaluate", _outside_file, r"a_file is not a writable directory"),
    "evaluate: --limit 0": Case("evaluate", lambda env: evaluate(env, "--limit", "0"), r"--limit must be >= 1"),
    "evaluate: --modes bogus": Case(
        "evaluate", lambda env: evaluate(env, "--modes", "bogus"), r"--modes takes a comma list"
    ),
    "evaluate: unknown task": Case("evaluate", lambda env: evaluate(env, "--tasks", "no_such_task"), r"unknown task"),
    "evaluate: --dtype float7": Case(
        "evaluate", lambda env: evaluate(env, "--dtype", "float7"), r"--dtype must be a floating-point torch dtype"
    ),
    "evaluate: another base": Case(
        "evaluate", lambda env: evaluate(env, "--model_name_or_path", str(env.other_model)), MISMATCH
    ),
    # fit (SFT curriculum)
    "fit: config domain escapes": Case(
        "fit",
        lambda env: fit(env, '--data.domains=[{name: "../../outside/escaped", path: "demo:chat", max_examples: 16}]'),
        r"domain name '\.\./\.\./outside/escaped' is not allowed",
    ),
    "fit: --trainer.max_epochs 0": Case("fit", lambda env: fit(env, "--trainer.max_epochs", "0"), ZERO_STEPS),
    "fit: --trainer.limit_train_batches 0": Case(
        "fit", lambda env: fit(env, "--trainer.limit_train_batches", "0"), ZERO_STEPS
    ),
    "fit: --trainer.max_steps 0": Case("fit", lambda env: fit(env, "--trainer.max_steps", "0"), ZERO_STEPS),
    "fit: missing base directory": Case(
        "fit",
        lambda env: fit(env, "--model.model_name_or_path", str(env.tmp / "no_model")),
        r"base model directory '.*no_model' does not exist",
    ),
    "fit: resume on another base": Case(
        "fit", lambda env: fit(env, "--model.model_name_or_path", str(env.other_model)), MISMATCH
    ),
    "fit: resume on another base, --accept_new_base": Case(
        "fit",
        lambda env: fit(env, "--model.model_name_or_path", str(env.other_model), "--accept_new_base", "true"),
        check=lambda env, out: out.code == 0 and manifest_of(env)["base_model"]["location"] == str(env.other_model),
        run_unchanged=False,
    ),
    "fit: --ckpt_path": Case(
        "fit", lambda env: fit(env, "--ckpt_path", str(env.tmp / "x.ckpt")), r"--ckpt_path is not used by this phase"
    ),
    "fit: AdamW lr 5.0, relative base path": Case("fit", _fresh_fit("5.0"), check=_fresh_run_is_finite_and_portable),
    "fit: AdamW lr 1e30 (NaN validation loss)": Case(
        "fit", _fresh_fit("1e30"), check=_fresh_run_is_finite_and_portable
    ),
    # router
    "router: --trainer.max_epochs 0": Case("router", lambda env: router(env, "--trainer.max_epochs", "0"), ZERO_STEPS),
    "router: another base": Case(
        "router", lambda env: router(env, "--model.model_name_or_path", str(env.other_model)), MISMATCH
    ),
    "router: no run": Case(
        "router",
        lambda env: router(env, "--trainer.default_root_dir", str(env.tmp / "nope")),
        r"nope: no manifest\.json",
    ),
    # DPO
    "dpo: domain not in the run": Case(
        "dpo", lambda env: dpo(env, "--model.domain", "legal"), r"domain 'legal' is not in this run"
    ),
    "dpo: --trainer.max_epochs 0": Case("dpo", lambda env: dpo(env, "--trainer.max_epochs", "0"), ZERO_STEPS),
    "dpo: another base": Case(
        "dpo", lambda env: dpo(env, "--model.model_name_or_path", str(env.other_model)), MISMATCH
    ),
    "dpo: no run": Case(
        "dpo", lambda env: dpo(env, "--trainer.default_root_dir", str(env.tmp / "nope")), r"nope: no manifest\.json"
    ),
    # GRPO
    "grpo: unsafe domain": Case(
        "grpo", lambda env: grpo(env, "--model.domain", "../x"), r"domain '\.\./x' is not in this run"
    ),
    "grpo: --trainer.limit_train_batches 0": Case(
        "grpo", lambda env: grpo(env, "--trainer.limit_train_batches", "0"), ZERO_STEPS
    ),
    "grpo: another base": Case(
        "grpo", lambda env: grpo(env, "--model.model_name_or_path", str(env.other_model)), MISMATCH
    ),
}
CASES.update(SPECIFIC)


def _absent(accelerator: str) -> bool:
    """Lightning finds no such accelerator here (``gpu``: neither ``cuda`` nor ``mps``)."""
    from lightning.pytorch.accelerators import AcceleratorRegistry

    names = ("cuda", "mps") if accelerator == "gpu" else (accelerator,)
    return not any(AcceleratorRegistry[name]["accelerator"].is_available() for name in names)


# Hardware this machine lacks: Lightning refuses to build the Trainer; the user reads one line
# saying what was found and what to pass. (A machine that has the accelerator leaves its case out.)
NO_ACCELERATOR = r"--trainer\.accelerator {}: not on this machine: found .*; pass --trainer\.accelerator \w+$"
CASES.update(
    {
        f"fit: --trainer.accelerator {name} (absent)": Case(
            "fit", lambda env, name=name: fit(env, "--trainer.accelerator", name), NO_ACCELERATOR.format(name)
        )
        for name in ("gpu", "cuda", "mps", "tpu")
        if _absent(name)
    }
)
if _absent("gpu"):
    CASES["fit: --trainer.accelerator gpu (absent)"].expect = (
        r"--trainer\.accelerator gpu: not on this machine: found no CUDA GPU "
        r"\(torch\.cuda\.is_available\(\) is False.*\), and Lightning can use cpu; pass --trainer\.accelerator cpu$"
    )
# More CUDA devices than any machine here has: "not on this machine" without CUDA, Lightning's
# "your machine only has" with it.
CASES["fit: --trainer.accelerator cuda --trainer.devices 64"] = Case(
    "fit",
    lambda env: fit(env, "--trainer.accelerator", "cuda", "--trainer.devices", "64"),
    r"--trainer\.accelerator cuda.*(not on this machine|your machine only has)",
)


@pytest.fixture(scope="module")
def other_model(tmp_path_factory) -> Path:
    """A base of the same architecture and shapes as ``model_dir`` with other weights."""
    from brainstacks_pl.tokenization import byte_tokenizer

    path = tmp_path_factory.mktemp("other") / "tiny"
    make_tiny_llama(seed=1).save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


def classify(case: Case, env: Env, outcome: Outcome, before: tuple[dict, dict]) -> str:
    if outcome.exc is not None:
        return "raw"
    unchanged_outside = tree_digest(env.outside) == before[1]
    if case.expect is None:
        ok = (
            outcome.code == 0
            and case.check(env, outcome)
            and unchanged_outside
            and (not case.run_unchanged or tree_digest(env.run) == before[0])
        )
        return "handled" if ok else "silent"
    if outcome.code == 0:
        return "silent"
    lines = [
        line for line in outcome.err.splitlines() if re.match(r"(brainstacks[\w ]*: )?error: ", line)
    ]  # argparse prefixes the prog
    if outcome.code != 2 or len(lines) != 1 or not re.search(case.expect, lines[0]):
        return "raw"
    return "named" if unchanged_outside and tree_digest(env.run) == before[0] else "silent"


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_matrix(name, finished_run, model_dir, other_model, tmp_path, monkeypatch):
    case = CASES[name]
    run, outside = tmp_path / "run", tmp_path / "outside"
    shutil.copytree(finished_run, run)
    outside.mkdir()
    (outside / "notes.txt").write_text("a directory beside the run")
    env = Env(run, outside, tmp_path, model_dir, other_model, monkeypatch)
    argv = case.setup(env)
    before = (tree_digest(run), tree_digest(outside))
    outcome = invoke(argv, case.stdin)
    verdict = classify(case, env, outcome, before)
    OUTCOMES[verdict].append(name)
    expected = "named" if case.expect else "handled"
    assert verdict == expected, (
        f"{name}: {verdict}; exit {outcome.code}; exception {outcome.exc!r}\n"
        f"stderr: {outcome.err[-2000:]}\nstdout: {outcome.out[-1000:]}"
    )


@pytest.mark.skipif(not _absent("tpu"), reason="this machine has a TPU")
def test_absent_accelerator_from_the_console_is_one_line_and_exit_2(tmp_path):
    """The installed command, not only ``commands.main``: no Lightning traceback reaches the user."""
    proc = subprocess.run(
        [sys.executable, "-m", "brainstacks_pl", "fit", "--config", str(REPO / "configs" / "demo.yaml")]
        + ["--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.accelerator", "tpu"],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "MisconfigurationException" not in proc.stderr, proc.stderr[-3000:]
    assert len(errors) == 1 and "--trainer.accelerator tpu: not on this machine" in errors[0], errors
    assert errors[0].endswith("pass --trainer.accelerator cpu") or not _absent("gpu"), errors
    assert not (tmp_path / "run").exists()


def test_torn_checkpoint_is_renamed_aside_with_a_warning(run_copy, caplog):
    """``fit`` resuming a round whose checkpoint does not load: kept beside, never deleted."""
    ckpt = run_copy / "rounds" / "math-r1" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"PK\x03\x04 cut short by a kill")
    with caplog.at_level("WARNING", logger="brainstacks_pl.run"):
        assert RunDirectory(run_copy).resume_checkpoint("math", 1) is None
    kept = (
        run_copy / "rounds" / "math-r1.unreadable-1.ckpt"
    )  # beside the round directory, which goes when the round is done
    handled = (
        not ckpt.exists()
        and kept.read_bytes() == b"PK\x03\x04 cut short by a kill"
        and "renamed to math-r1.unreadable-1.ckpt" in caplog.text
    )
    OUTCOMES["handled" if handled else "silent"].append("fit: torn round checkpoint")
    assert handled


def test_csv_columns_are_read_as_text(tmp_path):
    """Integer answers with one empty cell stay "2", not "2.0" (``fit``'s data loading)."""
    from brainstacks_pl.data.sources import load_examples

    path = tmp_path / "math.csv"
    path.write_text("question,answer\nWhat is 1+1?,2\nWhat is 2+2?,\nWhat is 3+3?,6\nWhat is 0+7?,07\n")
    examples, counts = load_examples(DomainConfig("math", str(path)))
    handled = [e.response for e in examples] == ["2", "6", "07"] and counts["dropped_invalid"] == 1
    OUTCOMES["handled" if handled else "silent"].append("fit: CSV of integer answers with an empty cell")
    assert handled


def test_matrix_counts():
    """Runs last in this file: the counts over every matrix case that ran."""
    counts = {k: len(v) for k, v in OUTCOMES.items()}
    print(f"\nbad-input matrix: {sum(counts.values())} cases: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    assert len(CASES) + 2 >= 80 and {c.command for c in CASES.values()} == set(COMMANDS)
    assert not OUTCOMES["raw"] and not OUTCOMES["silent"], {k: OUTCOMES[k] for k in ("raw", "silent")}
