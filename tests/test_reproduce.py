"""The reproduction scripts (benchmarks/reproduce/): real tiny runs end to end, the dry run on the
TinyLlama config, and collect.py on fixture tables."""

from __future__ import annotations

import json
import math
import runpy
import sys
from pathlib import Path
from unittest import mock

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "benchmarks" / "reproduce"


def run_script(name: str, *args: str) -> None:
    with (
        mock.patch.object(sys, "argv", [str(SCRIPTS / f"{name}.py"), *args]),
        mock.patch.object(sys, "path", [str(SCRIPTS), *sys.path]),
    ):
        sys.modules.pop("common", None)
        runpy.run_path(str(SCRIPTS / f"{name}.py"), run_name="__main__")


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    """configs/demo.yaml with fewer and shorter validation examples: the same code path, seconds instead of minutes."""
    config = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    config["data"]["init_args"].update(max_val_examples=8, max_seq_len=96)
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def tiny_args(tmp_path: Path, config: Path) -> list[str]:
    return [
        "--config",
        str(config),
        "--out",
        str(tmp_path / "out"),
        "--runs",
        str(tmp_path / "runs"),
        "--epochs",
        "1",
        "--batches",
        "2",
    ]


def test_zero_forgetting_end_to_end(tmp_path, tiny_config):
    run_script("zero_forgetting", *tiny_args(tmp_path, tiny_config), "--domains", "chat", "code")
    result = json.loads((tmp_path / "out" / "zero_forgetting.json").read_text())
    assert result["stack_files_identical"] and result["all_as_frozen_identical"]
    assert {(c["after"], c["domain"]) for c in result["checks"]} == {
        ("chat", "chat"),
        ("code", "chat"),
        ("code", "code"),
    }
    assert all(math.isfinite(c["as_frozen"]) and math.isfinite(c["ungated"]) for c in result["checks"])
    assert result["first_at_freeze"]["alone"] == result["first_at_freeze"]["after_curriculum"]
    assert len(result["fit_commands"]) == 2 and all(
        c.startswith("brainstacks fit --config") for c in result["fit_commands"]
    )
    md = (tmp_path / "out" / "zero_forgetting.md").read_text()
    assert "Command: `python" in md and "reproduced" in md


def test_moe_vs_lora_end_to_end(tmp_path, tiny_config):
    run_script(
        "moe_vs_lora",
        *tiny_args(tmp_path, tiny_config),
        "--epochs",
        "2",
        "--lrs",
        "0.004",
        "--seeds",
        "1",
        "--ablations",
    )
    result = json.loads((tmp_path / "out" / "moe_vs_lora.json").read_text())
    for arm in ("moe", "lora"):
        (curve,) = result["curves_at_best_lr"][arm]
        assert [step for step, _ in curve] == [2, 4]  # one validation per epoch of 2 steps
        assert all(math.isfinite(loss) for _, loss in curve)
        assert result["best_lr"][arm] == 0.004
    assert result["final_mean"]["moe"] == result["curves_at_best_lr"]["moe"][0][-1][1]
    manifests = {
        arm: json.loads((tmp_path / "runs" / "moe_vs_lora" / f"{arm}-lr0.004-s0" / "manifest.json").read_text())
        for arm in ("moe", "lora")
    }
    assert manifests["lora"]["stack_config"]["experts"] == 1 and manifests["lora"]["stack_config"]["rank"] == 64
    assert manifests["moe"]["stack_config"]["experts"] == 4 and manifests["moe"]["stack_config"]["rank"] == 16
    assert "| step |" in (tmp_path / "out" / "moe_vs_lora.md").read_text()


def test_dry_run_with_the_tinyllama_config_parses_and_trains_nothing(tmp_path, capsys):
    run_script(
        "zero_forgetting",
        "--dry-run",
        "--config",
        str(REPO / "configs" / "tinyllama_nf4.yaml"),
        "--out",
        str(tmp_path / "out"),
        "--runs",
        str(tmp_path / "runs"),
    )
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("brainstacks fit")]
    assert len(printed) == 2
    assert all("configs/tinyllama_nf4.yaml" in line for line in printed)
    assert (
        "HuggingFaceH4/ultrachat_200k" in printed[0] and "openai/gsm8k" in printed[1]
    )  # the config's own domains, not the demo's
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


def test_dry_run_rejects_an_override_the_cli_does_not_know(tmp_path):
    with mock.patch.object(sys, "path", [str(SCRIPTS), *sys.path]):
        sys.modules.pop("common", None)
        import common
    bench = common.Bench("typo", common.parser("").parse_args(["--dry-run", "--runs", str(tmp_path)]))
    with pytest.raises(SystemExit) as exit:
        bench.fit("run", ["--model.init_args.stack.expertz", "1"])
    assert exit.value.code not in (0, None)


def test_unknown_domain_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="not in"):
        run_script("forgetting", "--dry-run", "--domains", "chat", "cooking", "--runs", str(tmp_path))


def test_collect_builds_results_md_in_paper_order(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    for name, extra in (
        ("forgetting", {}),
        ("moe_vs_lora", {"reproduced": False}),
        ("moe_vs_lora-long", {"verdict": "a longer horizon"}),
        ("zero_forgetting", {"all_as_frozen_identical": True, "stack_files_identical": True}),
    ):
        (results / f"{name}.json").write_text(json.dumps({"paper": f"claim {name}", "machine": "2 CPU cores", **extra}))
        (results / f"{name}.md").write_text(f"## {name} table\n\nCommand: `python benchmarks/reproduce/{name}.py`\n")
    run_script("collect", "--results", str(results), "--out", str(tmp_path / "RESULTS.md"))
    text = (tmp_path / "RESULTS.md").read_text()
    sections = [
        text.index(f"## {name} table") for name in ("moe_vs_lora", "moe_vs_lora-long", "forgetting", "zero_forgetting")
    ]
    assert sections == sorted(sections)
    assert "| claim moe_vs_lora | `benchmarks/reproduce/moe_vs_lora.py` | **not reproduced** |" in text
    assert "`benchmarks/reproduce/moe_vs_lora.py` `--tag long` | a longer horizon |" in text
    assert "reproduced (bit-identical)" in text and "Command: `python benchmarks/reproduce/forgetting.py`" in text
    assert "| boosting | `benchmarks/reproduce/boosting.py` | not run |" in text and "2 CPU cores" in text
    assert "The tables come from different code: unknown" in text, "tables without a commit are not called one commit"


def test_collect_names_the_one_commit_all_tables_came_from(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    for name, commit in (("forgetting", "abc1234"), ("boosting", "abc1234")):
        (results / f"{name}.json").write_text(json.dumps({"git_at_write": commit}))
        (results / f"{name}.md").write_text(f"## {name} table\n")
    run_script("collect", "--results", str(results), "--out", str(tmp_path / "one.md"))
    assert (
        "Every table was written by the library at commit abc1234 (a clean tree)." in (tmp_path / "one.md").read_text()
    )
    (results / "boosting.json").write_text(json.dumps({"git_at_write": "abc1234 + uncommitted library edits"}))
    run_script("collect", "--results", str(results), "--out", str(tmp_path / "mixed.md"))
    assert "different code: abc1234, abc1234 + uncommitted library edits" in (tmp_path / "mixed.md").read_text()
