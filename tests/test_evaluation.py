"""Evaluation: exact log-likelihood scoring, answer extraction, task YAML, the lm-eval model type,
and ``brainstacks evaluate`` end to end on a tiny trained run."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import save_tiny_model
from fault_helpers import tiny_sft_args
from numerics import TINY_MODEL_DEPTH, assert_fp32_equivalent
from torch import nn

from brainstacks_pl.cli import cli_main
from brainstacks_pl.commands import console_main as brainstacks_main
from brainstacks_pl.evaluation import run_eval
from brainstacks_pl.evaluation.engine import NoRouterError, ScoreRequest, StackScorer
from brainstacks_pl.evaluation.scoring import (
    ContinuationScore,
    cut_at_stop,
    encode_pair,
    encode_prompt,
    pick_choice,
    score_continuations,
)
from brainstacks_pl.evaluation.tasks import build_context, load_examples, load_task, resolve_tasks
from brainstacks_pl.inference import RoutedGenerator
from brainstacks_pl.layers.router import MetaRouter
from brainstacks_pl.routing.artifact import save_router
from brainstacks_pl.routing.spec import RouterSpec
from brainstacks_pl.storage import Manifest

REPO = Path(__file__).resolve().parents[1]
DOMAINS = '[{name: chat, path: "demo:chat", max_examples: 24}, {name: math, path: "demo:math", max_examples: 24}]'


# --------------------------------------------------------------------------- a hand-built LM


class BigramLM(nn.Module):
    """logits[b, t] = log P(. | token at t): every log-probability is known in closed form."""

    def __init__(self, probs: torch.Tensor):
        super().__init__()
        self.register_buffer("table", probs.log())  # [V, V]

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None, rows=None) -> torch.Tensor:
        return self.table[ids]  # [B, L, V]


PROBS = torch.tensor(
    [
        [0.10, 0.60, 0.20, 0.10],  # after 0
        [0.25, 0.05, 0.50, 0.20],  # after 1
        [0.40, 0.30, 0.20, 0.10],  # after 2
        [0.25, 0.25, 0.25, 0.25],  # after 3
    ]
)


def test_scores_are_the_exact_log_probabilities_in_any_batching():
    lm = BigramLM(PROBS)
    requests = [([0], [1, 2]), ([0], [3]), ([2, 0], [2, 0, 1]), ([3], [3])]
    expected = [
        math.log(0.6) + math.log(0.5),
        math.log(0.1),
        math.log(0.2) + math.log(0.4) + math.log(0.6),
        math.log(0.25),
    ]
    greedy = [True, False, False, False]
    for batch_size in (1, 3, 16):
        scores = score_continuations(lm, requests, batch_size=batch_size, pad_id=3)
        assert [s.n_tokens for s in scores] == [2, 1, 3, 1]
        for score, value, g in zip(scores, expected, greedy):
            assert score.logprob == pytest.approx(value, abs=1e-6)
            assert score.is_greedy is g
    # choices for context [0]: [1, 2] (mean log 0.6*0.5 / 2) beats [2] (log 0.2) beats [3] (log 0.1)
    choices = score_continuations(lm, [([0], [2]), ([0], [1, 2]), ([0], [3])])
    assert choices[1].mean_logprob == pytest.approx((math.log(0.6) + math.log(0.5)) / 2)
    assert pick_choice(choices, "mean") == 1
    # mean and sum disagree when a long choice has the better per-token log-prob
    long_vs_short = [ContinuationScore(-3.0, 3, False), ContinuationScore(-2.0, 1, False)]
    assert pick_choice(long_vs_short, "mean") == 0 and pick_choice(long_vs_short, "sum") == 1


def test_scoring_truncates_long_contexts_from_the_left_and_rejects_empty_parts():
    lm = BigramLM(PROBS)
    [full] = score_continuations(lm, [([3, 3, 3, 0], [1])])
    [cut] = score_continuations(lm, [([3, 3, 3, 0], [1])], max_length=2)
    assert full.logprob == pytest.approx(cut.logprob) == pytest.approx(math.log(0.6))
    with pytest.raises(ValueError, match="context token"):
        score_continuations(lm, [([], [1])])


def test_generations_are_cut_at_the_first_stop_string():
    assert cut_at_stop("bcabc", ["ca"]) == "b"
    assert cut_at_stop("x = 1\n\nQuestion: next", ["\n\n", "Question:"]) == "x = 1"
    assert cut_at_stop("no stop here", ["", "zzz"]) == "no stop here"


def test_encode_pair_moves_trailing_spaces_to_the_continuation(tokenizer):
    ctx, cont = encode_pair(tokenizer, "Q: 2+2 ", "4")
    assert ctx[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ctx[1:]) == "Q: 2+2" and tokenizer.decode(cont) == " 4"
    assert (
        encode_prompt(tokenizer, "hi ")
        == [tokenizer.bos_token_id] + tokenizer("hi ", add_special_tokens=False)["input_ids"]
    )


# --------------------------------------------------------------------------- tasks


def write_task(folder: Path, name: str, rows: list[dict], **fields) -> Path:
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {"name": name, "domain": "math", "type": "mc", "path": f"{name}.jsonl", **fields}
    path = folder / f"{name}.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


def test_task_yaml_answers_by_index_letter_or_text_and_few_shot(tmp_path):
    rows = [
        {"q": "1+1?", "opts": ["2", "3"], "gold": 0},
        {"q": "2+1?", "opts": ["2", "3"], "gold": "B"},
        {"q": "2+2?", "opts": ["4", "5"], "gold": "4"},
    ]
    task = load_task(
        write_task(tmp_path, "t", rows, columns={"prompt": "q", "choices": "opts", "answer": "gold"}, few_shot=1)
    )
    shots, examples, _ = load_examples(task)
    assert [e.answer for e in shots + examples] == [0, 1, 0]
    context = build_context(examples[0], shots, "Q: {prompt}\nA: ")
    assert context == "Q: User: 1+1?\nA: 2\n\nQ: User: 2+1?\nA: "
    with pytest.raises(ValueError, match="unknown fields"):
        load_task(write_task(tmp_path, "bad", rows, colums={}))
    with pytest.raises(ValueError, match="type must be"):
        load_task(write_task(tmp_path, "bad2", rows, type="cloze"))
    with pytest.raises(ValueError, match="unknown task"):
        resolve_tasks("no_such_task")


def test_bundled_demo_tasks_load_and_are_held_out_from_the_training_data():
    from brainstacks_pl.data.curriculum import DEMO_DOMAINS, DomainConfig
    from brainstacks_pl.data.curriculum import load_examples as load_training

    tasks = resolve_tasks("demo")
    assert {t.domain for t in tasks} == set(DEMO_DOMAINS)
    assert {t.type for t in tasks} == {"mc", "generation"}
    train = {ex.prompt for d in DEMO_DOMAINS for ex in load_training(DomainConfig(d, f"demo:{d}"))[0]}
    for task in tasks:
        examples = load_examples(task).examples
        assert len(examples) >= 20
        overlap = [ex.prompt for ex in examples if ex.prompt in train]
        assert not overlap, f"{task.name}: {overlap[:3]} appear in the training data"


# --------------------------------------------------------------------------- a tiny trained run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    model_dir = tmp_path_factory.mktemp("model") / "tiny"
    save_tiny_model(model_dir)
    run_dir = tmp_path_factory.mktemp("runs") / "eval"
    cli_main(
        tiny_sft_args(
            model_dir,
            run_dir,
            DOMAINS,
            {
                "trainer.max_epochs": 1,
                "trainer.logger": False,
                "data.max_val_examples": 4,
                "boosting.max_rounds": 1,
                "null_space.mode": "off",
            },
        )
    )
    return run_dir


@pytest.fixture(scope="module")
def scorer(tiny_run) -> StackScorer:
    return StackScorer.from_run(tiny_run, "ungated", batch_size=8)


def test_scorer_modes_differ_and_routed_needs_a_router(scorer):
    tok = scorer.tokenizer
    request = ScoreRequest(
        *encode_pair(tok, "### Prompt:\nWhat is 2 + 3?\n### Response:\n", "2 + 3 = 5.\n#### 5"), "What is 2 + 3?"
    )
    [ungated] = scorer.loglikelihood([request])
    [base] = scorer.with_mode("base").loglikelihood([request])
    assert math.isfinite(ungated.logprob) and ungated.logprob != base.logprob
    with pytest.raises(NoRouterError, match="no trained router"):
        scorer.with_mode("routed")


def test_lm_eval_adapter_matches_our_scorer_on_a_local_task(scorer, tmp_path):
    import lm_eval
    from lm_eval.api.instance import Instance
    from lm_eval.tasks import TaskManager

    from brainstacks_pl.evaluation.lm_eval_adapter import BrainstacksLM

    data = tmp_path / "tiny.jsonl"
    rows = [
        {"question": f"What is {a} + {b}?", "choices": [str(a + b), str(a + b + 1), str(a * b + 7)], "label": 0}
        for a, b in [(2, 3), (4, 1), (5, 5), (7, 2), (1, 1)]
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = {
        "task": "bs_tiny_add",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{label}}",
        "metric_list": [{"metric": "acc"}],
    }
    (tmp_path / "bs_tiny_add.yaml").write_text(json.dumps(task))  # JSON is YAML
    # Only our folder: indexing lm-eval's ~14k bundled task YAMLs would take half a minute.
    manager = TaskManager(include_path=str(tmp_path), include_defaults=False)
    lm = BrainstacksLM(mode="ungated", scorer=scorer)
    out = lm_eval.simple_evaluate(
        model=lm, tasks=["bs_tiny_add"], task_manager=manager, limit=4, log_samples=True, bootstrap_iters=0
    )
    metrics = out["results"]["bs_tiny_add"]
    assert 0.0 <= metrics["acc,none"] <= 1.0
    samples = out["samples"]["bs_tiny_add"]
    assert len(samples) == 4
    for sample in samples:
        for (context, continuation), (logprob, greedy) in zip(sample["arguments"], [r[0] for r in sample["resps"]]):
            [ours] = scorer.loglikelihood(
                [ScoreRequest(*encode_pair(scorer.tokenizer, context, continuation), context)]
            )
            assert_fp32_equivalent(float(logprob), ours.logprob, TINY_MODEL_DEPTH, "lm-eval logprob")
            assert bool(greedy) == ours.is_greedy

    # the other two request types, straight through the LM API
    text = "What is 4 + 1?"
    [rolling] = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    ids = scorer.tokenizer(text, add_special_tokens=False)["input_ids"]
    [whole] = scorer.loglikelihood([ScoreRequest([scorer.tokenizer.bos_token_id], ids, text)])
    assert_fp32_equivalent(rolling, whole.logprob, TINY_MODEL_DEPTH, "rolling logprob")
    [generated] = lm.generate_until(
        [Instance("generate_until", {}, ("Question: 1 + 1?\nAnswer:", {"until": ["\n"], "max_gen_toks": 6}), 0)]
    )
    assert isinstance(generated, str) and "\n" not in generated and len(generated) <= 6


def test_brainstacks_evaluate_end_to_end_skips_routed_without_a_router(tiny_run, capsys, monkeypatch):
    monkeypatch.setattr(
        sys,
        "argv",
        ["brainstacks", "evaluate", "--run", str(tiny_run), "--tasks", "demo", "--limit", "2", "--batch_size", "8"],
    )
    with pytest.raises(SystemExit) as exit_info:
        brainstacks_main()
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert run_eval.no_router_message(tiny_run) in printed
    results = json.loads((tiny_run / "eval" / "results.json").read_text())
    assert list(results["modes"]) == ["base", "ungated", "routed"]
    assert results["modes"]["routed"] == {"status": "skipped", "reason": run_eval.no_router_message(tiny_run)}
    names = {t.name for t in resolve_tasks("demo")}
    for mode in ("base", "ungated"):
        entry = results["modes"][mode]
        assert entry["status"] == "ok" and set(entry["tasks"]) == names
        for res in entry["tasks"].values():
            assert res["n"] == 2 and 0.0 <= res["acc"] <= 1.0
            if res["type"] == "mc":
                assert res["gold_mean_logprob"] < 0
            else:
                assert len(res["samples"]) == 2
    assert (
        results["modes"]["base"]["tasks"]["math_mc"]["gold_mean_logprob"]
        != results["modes"]["ungated"]["tasks"]["math_mc"]["gold_mean_logprob"]
    )
    assert list((tiny_run / "tensorboard" / "eval").glob("events.out.tfevents.*"))
    assert "math_mc" in printed and "skipped" in printed
    assert "chance" in printed and "winner" in printed and "Wilson" in printed
    assert "…" not in printed, "no column cut short in an 80-column terminal (capsys: 80)"
    chances = {name: res["chance"] for name, res in results["modes"]["base"]["tasks"].items()}
    assert all(c == 0.0 for name, c in chances.items() if results["tasks"][name]["type"] == "gen")
    assert all(0.0 < c < 1.0 for name, c in chances.items() if results["tasks"][name]["type"] == "mc")


def _results(tasks, modes: dict[str, str], run: str) -> dict:
    """``evaluate_run``'s results for ``tasks``, with distinct accuracies; ``modes``: mode -> status."""
    entries = {}
    for m, (mode, status) in enumerate(modes.items()):
        if status != "ok":
            entries[mode] = {"status": status, "reason": "no router"}
            continue
        per_task = {
            t.name: {"acc": (7 + 11 * i + 5 * m) % 40 / 40, "n": 40 + i, "chance": 0.25 if t.type == "mc" else 0.0}
            for i, t in enumerate(tasks)
        }
        entries[mode] = {"status": "ok", "mean_acc": sum(r["acc"] for r in per_task.values()) / len(per_task)}
        entries[mode]["tasks"] = per_task
    return {
        "run": run,
        "tasks": {t.name: {k: v for k, v in t.to_dict().items() if k != "name"} for t in tasks},
        "modes": entries,
    }


@pytest.mark.parametrize("routed", ["ok", "skipped"])
def test_the_table_of_three_modes_is_whole_in_80_columns(routed, tmp_path):
    """``brainstacks evaluate`` in an 80-column terminal: every task name, count, chance level,
    accuracy and interval in full, no column cut to an ellipsis."""
    import io

    from rich.console import Console

    tasks = resolve_tasks("demo")
    results = _results(tasks, {"base": "ok", "ungated": "ok", "routed": routed}, str(tmp_path / "runs" / "demo"))
    out = io.StringIO()
    Console(file=out, width=80, color_system=None).print(run_eval.format_table(results))
    text = out.getvalue()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80, text
    ok = [mode for mode, entry in results["modes"].items() if entry["status"] == "ok"]
    for task in tasks:
        row = results["modes"]["base"]["tasks"][task.name]
        assert task.name in text and str(row["n"]) in text and f"{row['chance']:.3f}" in text, task.name
        for mode in ok:
            acc, n = results["modes"][mode]["tasks"][task.name]["acc"], row["n"]
            lo, hi = run_eval.wilson_interval(acc, n)
            assert f"{acc:.3f}" in text and f"{lo:.2f}-{hi:.2f}" in text, (mode, task.name)
    for mode in ok:
        assert f"{results['modes'][mode]['mean_acc']:.3f}" in text
    assert all(mode in text for mode in results["modes"]) and ("skipped" in text) == (routed == "skipped")
    assert "Wilson" in text and "winner" in text


def test_wilson_interval_and_winner():
    # Reference values (Wilson 1927, z = 1.96): 8/10 -> [0.490, 0.943]; 0/40 -> [0, 0.0876].
    lo, hi = run_eval.wilson_interval(0.8, 10)
    assert abs(lo - 0.4902) < 1e-3 and abs(hi - 0.9433) < 1e-3
    lo, hi = run_eval.wilson_interval(0.0, 40)
    assert lo == 0.0 and abs(hi - 0.0876) < 1e-3
    assert run_eval.winner({"base": 0.30, "routed": 0.35}, 40) == "tie"
    assert run_eval.winner({"base": 0.10, "routed": 0.60, "ungated": 0.20}, 40) == "routed"
    assert run_eval.winner({"base": 0.5}, 40) == "base"


def test_routed_mode_with_a_router_that_never_fires_equals_the_base(tiny_run, tmp_path):
    run = tmp_path / "routed"
    shutil.copytree(tiny_run, run)
    manifest = Manifest.load(run)
    domains = sorted({s.domain for s in manifest.stacks})
    spec = RouterSpec(domains=tuple(domains), router_seq_len=64)
    save_router(run, manifest, MetaRouter(32, len(domains), hidden=16), spec)
    manifest.save(run)
    generator = RoutedGenerator.from_run(run)
    with torch.no_grad():  # saturate every sigmoid at 0: no domain passes the gate
        generator.router.domain_bias.fill_(-100.0)
        generator.router.fusion[-1].weight.zero_()
    tasks = [t for t in resolve_tasks("demo") if t.name in ("math_mc", "chat_mc", "math_gen")]
    results = run_eval.evaluate_run(run, tasks, ["base", "routed"], limit=2, batch_size=8, generator=generator)
    base, routed = results["modes"]["base"]["tasks"], results["modes"]["routed"]["tasks"]
    for name in ("math_mc", "chat_mc"):
        assert routed[name]["gold_mean_logprob"] == base[name]["gold_mean_logprob"]
        assert routed[name]["capability_gap"] == 1.0 and set(routed[name]["route_share"].values()) == {0.0}
    assert [s["output"] for s in routed["math_gen"]["samples"]] == [s["output"] for s in base["math_gen"]["samples"]]


def test_evaluate_reports_bad_requests_with_exit_code_2(tiny_run, capsys):
    assert run_eval.main(["--run", str(tiny_run), "--modes", "fancy"]) == 2
    assert run_eval.main(["--run", str(tiny_run), "--tasks", "nope"]) == 2
    assert run_eval.main(["--run", str(tiny_run.parent / "missing")]) == 2
    assert "error:" in capsys.readouterr().err
