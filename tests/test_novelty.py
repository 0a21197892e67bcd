"""The capability-gap detector (``routing/novelty.py``): its distances, its calibration, its
file, and what a novel prompt gets when served."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from test_inference import DOMAINS, set_bias, write_run

from brainstacks_pl import inference_cli
from brainstacks_pl.inference import RoutedGenerator
from brainstacks_pl.layers.router import MetaRouter
from brainstacks_pl.routing.artifact import RouterFileError, load_router, save_router
from brainstacks_pl.routing.novelty import NoveltyDetector, fit_novelty, pooled_features
from brainstacks_pl.routing.spec import RouterSpec
from brainstacks_pl.storage import Manifest


def clusters(n_per: int, centres: list[float], d: int = 6, seed: int = 0) -> tuple[torch.Tensor, list[int]]:
    """``n_per`` points around each centre (on every axis), unit-ish spread that differs per axis."""
    generator = torch.Generator().manual_seed(seed)
    spread = torch.linspace(0.5, 2.0, d, dtype=torch.float64)
    points = [c + spread * torch.randn(n_per, d, generator=generator, dtype=torch.float64) for c in centres]
    return torch.cat(points), [k for k in range(len(centres)) for _ in range(n_per)]


def reference_novelty(train: torch.Tensor, labels: list[int], x: torch.Tensor, shrinkage: float) -> torch.Tensor:
    """The textbook formula in float64: min_k sqrt((x - mu_k)^T S^-1 (x - mu_k)), S by solve()."""
    label = torch.tensor(labels)
    means = torch.stack([train[label == k].mean(0) for k in sorted(set(labels))])
    centred = train - means[label]
    cov = centred.T @ centred / len(train)
    cov = (1 - shrinkage) * cov + shrinkage * cov.diagonal().mean() * torch.eye(len(cov), dtype=torch.float64)
    diffs = x[:, None, :] - means[None]  # [B, K, d]
    solved = torch.linalg.solve(cov, diffs.reshape(-1, diffs.shape[-1]).T).T.reshape(diffs.shape)
    return (diffs * solved).sum(-1).sqrt().min(1).values


@pytest.mark.parametrize("shrinkage", [0.0, 0.01, 0.5])
def test_novelty_is_the_mahalanobis_distance_to_the_nearest_domain(shrinkage):
    train, labels = clusters(40, [0.0, 5.0, -5.0])
    queries = torch.randn(16, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 4
    detector = fit_novelty(train, labels, train[:8], shrinkage=shrinkage)
    expected = reference_novelty(train, labels, queries, shrinkage)
    # Both sides float64; eigh vs solve differ by a few ulps times the condition number (< 1e3 here).
    torch.testing.assert_close(detector.score(queries), expected, rtol=1e-10, atol=0.0)


def test_threshold_is_calibrated_on_the_held_out_prompts():
    train, labels = clusters(50, [0.0, 6.0])
    held_out, _ = clusters(20, [0.0, 6.0], seed=3)
    detector = fit_novelty(train, labels, held_out, false_gap_rate=0.1)
    scores = detector.score(held_out)
    assert detector.threshold in scores.tolist(), "the threshold is one of the held-out scores"
    assert (scores > detector.threshold).float().mean() <= 0.1
    assert (scores >= detector.threshold).float().mean() > 0.1, "and the lowest such score"
    strictest = fit_novelty(train, labels, held_out, false_gap_rate=0.0)
    assert strictest.threshold == scores.max().item(), "rate 0: no held-out prompt is a gap"


def test_a_point_far_from_every_domain_is_novel_and_one_inside_is_not():
    train, labels = clusters(60, [0.0, 8.0])
    held_out, _ = clusters(30, [0.0, 8.0], seed=5)
    detector = fit_novelty(train, labels, held_out)
    inside = torch.full((1, 6), 8.0, dtype=torch.float64)
    between_axes = torch.tensor([[8.0, 0.0, 8.0, 0.0, 8.0, 0.0]], dtype=torch.float64)  # near no cluster
    assert detector.score(inside).item() < detector.threshold < detector.score(between_axes).item()


def test_pooled_features_average_the_real_positions_after_the_first():
    features = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    pooled = pooled_features(features, mask)
    assert pooled.dtype == torch.float64
    torch.testing.assert_close(pooled[0], features[0, 1:3].double().mean(0))
    torch.testing.assert_close(pooled[1], features[1, 0].double(), msg="a one-token prompt keeps its token")


def test_bad_fits_and_detectors_are_refused():
    train, labels = clusters(5, [0.0])
    with pytest.raises(ValueError, match="false_gap_rate"):
        fit_novelty(train, labels, train, false_gap_rate=1.0)
    with pytest.raises(ValueError, match="labels"):
        fit_novelty(train, labels[:-1], train)
    with pytest.raises(ValueError, match="finite"):
        NoveltyDetector(torch.full((1, 6), float("nan")), torch.eye(6), 1.0)


# --------------------------------------------------------------------------- on disk and served


@pytest.fixture(scope="module")
def run_with_detector(tmp_path_factory):
    """The inference test run, its router saved again with a detector fitted on random features."""
    run_dir = write_run(tmp_path_factory.mktemp("novelty"))
    train, labels = clusters(20, [0.0, 1.0, -1.0], d=32)
    detector = fit_novelty(train, labels, train[:10])
    manifest = Manifest.load(run_dir)
    router, spec, _ = load_router(run_dir, manifest)
    save_router(run_dir, manifest, router, spec, novelty=detector)
    manifest.save(run_dir)
    return run_dir, detector


def test_the_detector_round_trips_through_the_router_file(run_with_detector):
    run_dir, detector = run_with_detector
    _, spec, loaded = load_router(run_dir, Manifest.load(run_dir))
    assert spec.gap_threshold == loaded.threshold == detector.threshold
    # Stored float32, like the router's weights.
    torch.testing.assert_close(loaded.means, detector.means.float().double())
    torch.testing.assert_close(loaded.whiten, detector.whiten.float().double())


def test_a_router_json_and_safetensors_that_disagree_on_the_detector_are_refused(tmp_path):
    run_dir = write_run(tmp_path)  # its router has no detector
    json_path = run_dir / "router" / "router.json"
    hand_edited = {**json.loads(json_path.read_text()), "gap_threshold": 2.0}
    json_path.write_text(json.dumps(hand_edited))
    with pytest.raises(RouterFileError, match="capability-gap detector is missing"):
        load_router(run_dir, Manifest.load(run_dir))
    manifest = Manifest.load(run_dir)
    router, spec = MetaRouter(32, len(DOMAINS), hidden=16), RouterSpec(domains=tuple(DOMAINS), router_seq_len=64)
    save_router(run_dir, manifest, router, spec, novelty=NoveltyDetector(torch.zeros(3, 32), torch.eye(32), 1.0))
    manifest.save(run_dir)
    json_path.write_text(json.dumps({**json.loads(json_path.read_text()), "gap_threshold": None}))
    with pytest.raises(RouterFileError, match="holds a capability-gap detector but router.json has no gap_threshold"):
        load_router(run_dir, Manifest.load(run_dir))
    narrow = NoveltyDetector(torch.zeros(3, 8), torch.eye(8), 1.0)  # 8 wide on a 32-wide base
    save_router(run_dir, manifest, router, spec, novelty=narrow)
    manifest.save(run_dir)
    with pytest.raises(RouterFileError, match=r"detector is \(3, 8\) wide"):
        load_router(run_dir, Manifest.load(run_dir))


def test_a_novel_prompt_gets_no_stack_and_the_route_says_why(run_with_detector):
    run_dir, _ = run_with_detector
    generator = RoutedGenerator.from_run(run_dir)
    set_bias(generator, [30.0, 30.0, 30.0])  # the router is sure: every domain at p ~ 1
    generator.spec = replace(generator.spec, gap_threshold=float("inf"))
    [trusted] = generator.route(["def add(a, b):"])
    assert trusted.selected == DOMAINS and not trusted.capability_gap and trusted.novelty > 0
    generator.spec = replace(generator.spec, gap_threshold=trusted.novelty / 2)  # now beyond the threshold
    [gen] = generator.generate(["def add(a, b):"], max_new_tokens=3)
    [base] = generator.generate(["def add(a, b):"], mode="base", max_new_tokens=3)
    assert gen.route.capability_gap and gen.route.selected == [] and gen.route.probs == trusted.probs
    assert gen.tokens == base.tokens, "a novel prompt is answered by the base alone"
    assert "unlike the router's training prompts" in inference_cli.format_route(gen.route, generator.spec)
    assert isinstance(json.loads(json.dumps(gen.route.novelty)), float), "a plain float, for the server's response"


def test_the_gap_measure_scores_novelty_in_domain_as_positive(run_with_detector):
    from brainstacks_pl.routing.gap import measure_gap

    generator = RoutedGenerator.from_run(run_with_detector[0])
    near, far = ["def add(a, b):"], ["Übersetze bitte: Guten Morgen, wie geht es dir heute?"]
    novelty = {p: d.novelty for p, d in zip(near + far, generator.route(near + far))}
    generator.spec = replace(generator.spec, gap_threshold=(novelty[near[0]] + novelty[far[0]]) / 2)
    result = measure_gap(generator, *(near, far) if novelty[near[0]] < novelty[far[0]] else (far, near))
    assert result["novelty"]["auroc"] == 1.0 and result["novelty"]["in_domain"][0] < 0, "scored as -novelty"
    assert result["served"] == {"in_domain_passes": 1.0, "out_of_domain_fires": 1.0}


def test_the_gap_threshold_can_be_overridden_when_serving(run_with_detector, capsys):
    run_dir, _ = run_with_detector
    spec = RouterSpec(domains=tuple(DOMAINS), gap_threshold=3.0)
    assert spec.with_overrides(gap_threshold=5.0).gap_threshold == 5.0
    assert RouterSpec(domains=tuple(DOMAINS)).with_overrides(gap_threshold=5.0).gap_threshold is None, (
        "no detector, nothing to override"
    )
    generate = ["generate", "--run", str(run_dir), "--prompt", "def add(a, b):", "--max_new_tokens", "1"]
    assert inference_cli.main([*generate, "--gap_threshold", "0"]) == 0
    assert "unlike the router's training prompts (novelty" in capsys.readouterr().out, "every prompt is novel at 0"
    assert inference_cli.main([*generate, "--gap_threshold", "off"]) == 0
    assert "capability gap" not in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        inference_cli.main([*generate, "--gap_threshold", "-1"])
    assert exit_info.value.code == 2 and "expected a number >= 0 or 'off'" in capsys.readouterr().err
