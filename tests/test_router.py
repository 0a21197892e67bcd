"""The meta-router: network, losses, outcome discovery, the router phase end to end."""

from __future__ import annotations

import json
import logging
import math
import warnings
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_llama, save_tiny_model
from fault_helpers import phase_args, tiny_sft_args
from numerics import TINY_MODEL_DEPTH, assert_fp32_equivalent

from brainstacks_pl.cli import cli_main
from brainstacks_pl.config import StackConfig
from brainstacks_pl.layers.router import MetaRouter
from brainstacks_pl.losses import router_loss, router_margin_penalty
from brainstacks_pl.model import BrainstacksModel
from brainstacks_pl.modules.router import RouterRow, drop_val_prompts, selection_scores
from brainstacks_pl.routing.artifact import load_router
from brainstacks_pl.routing.discovery import (
    DiscoveryCache,
    DiscoverySettings,
    RouteLossOracle,
    discover_examples,
    greedy_discovery,
    make_target,
    route_weights,
)
from brainstacks_pl.storage import Manifest, load_tensors

REPO = Path(__file__).resolve().parents[1]
DOMAINS = '[{name: chat, path: "demo:chat", max_examples: 32}, {name: math, path: "demo:math", max_examples: 32}]'


# --------------------------------------------------------------------------- the network


def test_router_shapes_padding_and_temperature_clamp():
    torch.manual_seed(0)
    router = MetaRouter(d_model=24, n_domains=3, hidden=16).eval()
    features, mask = torch.randn(2, 7, 24), torch.ones(2, 7, dtype=torch.bool)
    mask[1, 4:] = False
    logits = router(features, mask)
    assert logits.shape == (2, 3)
    noisy = features.clone()
    noisy[1, 4:] = 100.0  # padding must not matter
    torch.testing.assert_close(router(noisy, mask), logits)
    with torch.no_grad():
        router.log_temperature.fill_(10.0)
        assert router.temperature.item() == pytest.approx(3.0)
        router.log_temperature.fill_(-10.0)
        assert router.temperature.item() == pytest.approx(0.3)


def test_router_outputs_are_independent_sigmoids():
    torch.manual_seed(0)
    router = MetaRouter(d_model=24, n_domains=3, hidden=16).eval()
    features = torch.randn(4, 5, 24)
    before = router.probabilities(features)
    assert ((before > 0) & (before < 1)).all()
    with torch.no_grad():
        router.domain_bias[1] += 5.0
    after = router.probabilities(features)
    assert (after[:, 1] > before[:, 1]).all()
    torch.testing.assert_close(after[:, [0, 2]], before[:, [0, 2]])  # softmax would have lowered them


def test_parameter_count_is_about_two_million_at_hidden_512_on_a_2048_base():
    router = MetaRouter(d_model=2048, n_domains=5, hidden=512)
    count = sum(p.numel() for p in router.parameters())
    assert 1_900_000 < count < 2_300_000, count


# --------------------------------------------------------------------------- losses


def test_margin_penalty_and_router_loss_on_hand_computed_values():
    p = torch.tensor([0.5, 0.9, 0.7, 0.1])
    # relu(0.3 - |p - 0.5|) = 0.3, 0, 0.1, 0 -> mean 0.1
    assert router_margin_penalty(p).item() == pytest.approx(0.1)
    logits, targets = torch.zeros(1, 2), torch.tensor([[1.0, 0.0]])
    # p = 0.5 everywhere: BCE = ln 2, penalty = 0.3
    assert router_loss(logits, targets).item() == pytest.approx(math.log(2) + 0.05 * 0.3, rel=1e-6)
    probs = torch.tensor([[0.9, 0.2]])
    expected = -(math.log(0.9) + math.log(0.8)) / 2 + 0.05 * (0.0 + 0.0)
    assert router_loss(probs, targets, are_probs=True).item() == pytest.approx(expected, rel=1e-6)


# --------------------------------------------------------------------------- discovery


def planted_loss(route: frozenset) -> float:
    """Only the pair {a, b} helps; a alone helps a little (below the threshold); reasoning a hair."""
    if {"a", "b"} <= route:
        return 0.5 - (0.001 if "reasoning" in route else 0.0)
    return 0.995 if route == {"a"} else 1.0


def test_greedy_discovery_finds_a_pair_that_no_single_domain_explains():
    domains = ["chat", "a", "b", "reasoning"]
    calls = []

    def evaluate(pairs):
        calls.append(len(pairs))
        return [planted_loss(route) for _, route in pairs]

    [found] = greedy_discovery(1, evaluate, domains, threshold=0.01, reasoning_domain="reasoning")
    assert found["route"] == ["a", "b"]
    assert found["soft"] == ["reasoning"]  # lowers the loss by 0.001: soft, not in the route
    assert found["base_loss"] == 1.0 and found["best_loss"] == 0.5
    assert make_target(found["route"], found["soft"], "a", domains) == pytest.approx([0.0, 1.0, 0.8, 0.4])
    assert len(calls) <= len(domains) + 1, "one batched evaluation per greedy step, not per route"


def test_greedy_discovery_returns_the_base_when_nothing_helps():
    [found] = greedy_discovery(
        1,
        lambda pairs: [1.0 - 0.005 * len(r) for _, r in pairs],
        ["chat", "math"],
        threshold=0.01,
        reasoning_domain=None,
    )
    assert found["route"] == [] and found["best_loss"] == found["base_loss"]


def test_route_weights_apply_the_chat_floor_only_when_a_domain_is_on():
    domains = ["chat", "code", "math"]
    assert route_weights(frozenset({"math"}), domains).tolist() == pytest.approx([0.2, 0.0, 1.0])
    assert route_weights(frozenset({"chat", "math"}), domains).tolist() == [1.0, 0.0, 1.0]
    assert route_weights(frozenset(), domains).tolist() == [0.0, 0.0, 0.0]


def stacks_with_random_frozen(domains: list[str]) -> BrainstacksModel:
    config = StackConfig(experts=2, rank=4, top_k=1, frozen_dtype="float32")
    stacks = BrainstacksModel(make_tiny_llama(), config, domains).eval()
    for index, domain in enumerate(domains):
        for stack in stacks.add_stack(domain, seed=index):
            torch.nn.init.normal_(stack.B, std=0.3, generator=torch.Generator().manual_seed(index))
        stacks.freeze_stack()
    return stacks.eval()


def test_batched_route_evaluation_equals_one_forward_per_route():
    stacks = stacks_with_random_frozen(["chat", "code", "math"])
    torch.manual_seed(1)
    items = []
    for length in (9, 14):
        ids = torch.randint(3, 200, (length,))
        labels = ids.clone()
        labels[:4] = -100
        items.append((ids, labels))
    routes = [frozenset(), frozenset({"code"}), frozenset({"math"}), frozenset({"code", "math"}), frozenset({"chat"})]
    pairs = [(i, r) for i in range(2) for r in routes]
    batched = RouteLossOracle(stacks, pad_id=2, max_rows=64)
    single = RouteLossOracle(stacks, pad_id=2, max_rows=1)
    together = batched.losses(items, pairs)
    assert batched.forwards == 1
    assert_fp32_equivalent(single.losses(items, pairs), together, TINY_MODEL_DEPTH, "route losses")
    assert len(set(round(x, 4) for x in together[:5])) == 5, "routes must actually differ"


class CountingOracle:
    """A fake oracle with the RouteLossOracle interface: loss depends on the route only."""

    def __init__(self, domains):
        self.stacks = type("S", (), {"domains": domains})()
        self.calls = 0

    def losses(self, items, pairs):
        self.calls += 1
        return [1.0 - (0.3 if "math" in route else 0.0) for _, route in pairs]


def test_discovery_cache_is_resumable_and_keyed_by_fingerprint(tmp_path):
    oracle, settings = CountingOracle(["chat", "math"]), DiscoverySettings(reasoning_domain=None)
    items, keys = [None] * 5, [f"k{i}" for i in range(5)]
    path = tmp_path / "router" / "discovery" / "math.jsonl"
    first = discover_examples(
        oracle, items[:3], keys[:3], "math", "train", DiscoveryCache(path, "fp1"), settings, chunk_size=2
    )
    assert [r.route for r in first] == [["math"]] * 3
    assert len(path.read_text().splitlines()) == 3
    calls = oracle.calls
    again = discover_examples(oracle, items, keys, "math", "train", DiscoveryCache(path, "fp1"), settings, chunk_size=8)
    assert oracle.calls - calls <= 3, "only the 2 new examples are discovered (one chunk)"
    assert [r.key for r in again] == keys and again[0].target == pytest.approx([0.0, 1.0])
    calls = oracle.calls
    discover_examples(oracle, items[:1], keys[:1], "math", "train", DiscoveryCache(path, "fp2"), settings)
    assert oracle.calls > calls, "another fingerprint (other stacks or settings) recomputes"


def test_drop_val_prompts_leaves_no_validation_prompt_in_training():
    rows = lambda prompts: [RouterRow(p, "chat", [1.0], ["chat"]) for p in prompts]  # noqa: E731
    train, val = drop_val_prompts(rows(["a", "b", "c", "b"]), rows(["b", "d"]))
    assert {r.prompt for r in train} == {"a", "c"} and not {r.prompt for r in train} & {r.prompt for r in val}


def test_selection_scores():
    probs = torch.tensor([[0.9, 0.1, 0.2], [0.3, 0.8, 0.1], [0.7, 0.6, 0.1], [0.7, 0.2, 0.9]])
    routes = torch.tensor([[1, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 0]])
    scores = selection_scores(probs, routes)
    assert scores["single_top1"] == pytest.approx(0.5) and scores["mixed_exact"] == pytest.approx(0.5)


# --------------------------------------------------------------------------- the phase end to end


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("router_e2e")
    model_dir = root / "tiny"
    save_tiny_model(model_dir)
    run_dir = root / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before conftest's per-test one-thread pin
    cli_main(tiny_sft_args(model_dir, run_dir, DOMAINS, {"trainer.max_epochs": 1, "boosting.max_rounds": 1}))
    torch.set_num_threads(threads)
    return run_dir


def router_args(run_dir: Path, *extra: str) -> list[str]:
    return phase_args(
        "router_demo.yaml",
        run_dir,
        {
            "trainer.max_epochs": 3,
            "trainer.enable_progress_bar": False,
            "data.max_seq_len": 96,
            "data.domains": DOMAINS,
            "data.val_fraction": 0.25,
            "model.hidden": 16,
            "model.max_train_examples": 12,
            "model.max_val_examples": 6,
        },
        *extra,
    )


def test_router_phase_end_to_end_after_a_tiny_sft_run(sft_run, capsys, caplog):
    cli_main(router_args(sft_run))
    manifest = Manifest.load(sft_run)
    record = manifest.extra["router"]
    tensors, _ = load_tensors(sft_run / record["file"], expected_sha256=record["sha256"])
    info = json.loads((sft_run / record["json"]).read_text())
    assert info["domains"] == ["chat", "math"] and info["d_model"] == 32 and info["hidden"] == 16
    assert "router/single_top1" in info["best"]["metrics"]
    router = MetaRouter(info["d_model"], info["n_domains"], info["hidden"])
    router.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("novelty.")})
    report = json.loads((sft_run / "router" / "routing_report.json").read_text())
    assert set(report["per_source"]) == {"chat", "math"}
    assert all(abs(sum(e["oracle"].values()) - 1) < 1e-6 for e in report["per_source"].values())
    lines = [json.loads(line) for line in (sft_run / "router" / "discovery" / "math.jsonl").read_text().splitlines()]
    assert {line["split"] for line in lines} == {"train", "val"} and len(lines) == 12 + 6
    assert not (sft_run / "router" / "work").exists()
    # The capability-gap detector: fitted, saved beside the router, its threshold in the json and the summary.
    _, spec, novelty = load_router(sft_run, manifest)
    assert novelty is not None and novelty.d_model == 32 and spec.gap_threshold == info["gap_threshold"] > 0
    assert "capability gap: prompts with novelty above" in capsys.readouterr().out
    # A rerun with the same settings has nothing to do, says so and leaves the router as it is.
    router_bytes, discovery = (sft_run / record["file"]).read_bytes(), (sft_run / "router" / "discovery").iterdir()
    discovered = {path.name: path.read_text() for path in discovery}
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        cli_main(router_args(sft_run))
    assert "already finished, nothing to do" in capsys.readouterr().out
    assert not [w for w in caught if "args parameter" in str(w.message)], "no warning about sys.argv for `fit`"
    assert "Tip:" not in caplog.text, "no advert among a phase's log lines"
    assert (sft_run / record["file"]).read_bytes() == router_bytes
    # Changed settings train it again (named), reusing the cached discovery (same stacks, same discovery settings).
    with caplog.at_level(logging.INFO):
        cli_main(router_args(sft_run, "--trainer.max_epochs", "2"))
    assert "training it again with changed settings: trainer.max_epochs: 3 -> 2" in caplog.text
    assert Manifest.load(sft_run).extra["settings"]["router"]["trainer.max_epochs"] == 2
    assert {path.name: path.read_text() for path in (sft_run / "router" / "discovery").iterdir()} == discovered


def test_router_phase_takes_its_domains_from_the_run_and_says_so(sft_run, tmp_path, caplog):
    """A config listing domains the run has no stacks for (the demo's, after a user's own fit)
    routes over the run's domains with the data its SFT phase recorded; without that record
    it is a clear error."""
    import logging
    import shutil

    run = tmp_path / "run"
    shutil.copytree(sft_run, run, ignore=shutil.ignore_patterns("router"))
    other = '[{name: chat, path: "demo:chat", max_examples: 40}, {name: code, path: "demo:code", max_examples: 40}]'
    with caplog.at_level(logging.INFO):
        cli_main(router_args(run, f"--data.domains={other}", "--trainer.max_epochs", "1"))
    assert "the config lists ['chat', 'code']" in caplog.text and "routing over the run's domains" in caplog.text
    assert json.loads((run / "router" / "router.json").read_text())["domains"] == ["chat", "math"]
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["extra"].pop("settings")
    (run / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"no stacks for router domains \['code'\].*set data.domains"):
        cli_main(router_args(run, f"--data.domains={other}"))
