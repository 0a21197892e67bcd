"""The router's settings (``RouterSpec``, the router.json boundary) and the one weighting rule."""

from __future__ import annotations

import json

import pytest
import torch

from brainstacks_pl.routing.spec import DiscoverySettings, RouterFileError, RouterSpec, serving_weights

# router.json as the router phase writes it (keys and their order): a rewrite must give the same file.
WRITTEN = {
    "domains": ["chat", "code", "math"],
    "dropout": 0.1,
    "router_seq_len": 64,
    "mid_weight": 0.45,
    "gate_threshold": 0.12,
    "decision_threshold": 0.5,
    "false_gap_rate": 0.05,
    "gap_shrinkage": 0.01,
    "gap_threshold": 3.25,
    "discovery": {
        "chat_domain": "chat",
        "chat_floor": 0.2,
        "greedy_threshold": 0.01,
        "reasoning_domain": "reasoning",
        "soft_target": 0.5,
        "prior_weight": 0.2,
    },
    "prompt_template": "### Prompt:\n{prompt}\n### Response:\n",
    "best": {"score": 0.41, "epoch": 2, "metrics": {"router/f1": 0.5}},
    "train_examples": 12,
    "val_examples": 6,
    "base_model_id": "/models/tiny",
    "layer_shapes_hash": "0123456789abcdef",
    "d_model": 32,
    "hidden": 16,
    "n_domains": 3,
}


def test_a_router_json_round_trips_through_the_spec_unchanged():
    spec = RouterSpec.from_json(json.loads(json.dumps(WRITTEN)), "router.json")
    assert spec.domains == ("chat", "code", "math") and spec.chat_floor == 0.2 and spec.d_model == 32
    assert json.dumps(spec.to_json()) == json.dumps(WRITTEN)
    assert RouterSpec.from_json(json.loads(json.dumps(spec.to_json())), "router.json") == spec


def test_a_router_json_from_before_the_gap_detector_loads_without_one():
    old = {k: v for k, v in WRITTEN.items() if k not in ("false_gap_rate", "gap_shrinkage", "gap_threshold")}
    spec = RouterSpec.from_json(old, "router.json")
    assert spec.gap_threshold is None and spec.gate_threshold == 0.12


def test_settings_a_file_leaves_out_come_from_the_spec():
    required = {k: WRITTEN[k] for k in ("domains", "layer_shapes_hash", "d_model", "hidden")}
    spec = RouterSpec.from_json(required, "router.json")
    assert spec == RouterSpec(
        domains=("chat", "code", "math"), layer_shapes_hash="0123456789abcdef", d_model=32, hidden=16
    )
    assert (spec.gate_threshold, spec.router_seq_len, spec.mid_weight, spec.discovery) == (
        0.12,
        256,
        0.45,
        DiscoverySettings(),
    )


@pytest.mark.parametrize(
    "edit, field",
    [
        ({"gate_threshold": "0.12"}, "gate_threshold"),
        ({"gate_threshold": 1.5}, "gate_threshold"),
        ({"mid_weight": float("nan")}, "mid_weight"),
        ({"router_seq_len": 0}, "router_seq_len"),
        ({"router_seq_len": True}, "router_seq_len"),
        ({"domains": "chat"}, "domains"),
        ({"domains": ["chat", "chat", "math"]}, "domains"),
        ({"discovery": {**WRITTEN["discovery"], "chat_floor": -0.1}}, "discovery.chat_floor"),
        ({"discovery": {"chat_flor": 0.2}}, "discovery"),
        ({"prompt_template": "no placeholder"}, "prompt_template"),
        ({"d_model": None}, "d_model"),
        ({"n_domains": 2}, "n_domains"),
        ({"gate_treshold": 0.2}, "gate_treshold"),
        ({"gap_threshold": -1.0}, "gap_threshold"),
        ({"gap_threshold": float("nan")}, "gap_threshold"),
        ({"false_gap_rate": 1.0}, "false_gap_rate"),
    ],
)
def test_a_malformed_field_is_a_router_file_error_naming_it(edit, field):
    with pytest.raises(RouterFileError, match=rf"router\.json: .*{field}"):
        RouterSpec.from_json({**WRITTEN, **edit}, "router.json")
    with pytest.raises(RouterFileError, match="must be an object"):
        RouterSpec.from_json([WRITTEN], "router.json")


def test_serving_weights_gate_then_floor_the_chat_domain_when_any_domain_is_on():
    probs = torch.tensor([[0.05, 0.5, 0.1], [0.05, 0.11, 0.0], [0.9, 0.0, 0.3]], dtype=torch.float64)  # [B, D]
    weights = serving_weights(probs, ["chat", "code", "math"], gate=0.12, chat_domain="chat", chat_floor=0.2)
    assert weights.tolist() == [[0.2, 0.5, 0.0], [0.0, 0.0, 0.0], [0.9, 0.0, 0.3]]
    no_chat = serving_weights(probs, ["chat", "code", "math"], gate=0.12, chat_domain=None, chat_floor=0.2)
    assert no_chat.tolist() == [[0.0, 0.5, 0.0], [0.0, 0.0, 0.0], [0.9, 0.0, 0.3]]
    assert probs.tolist()[0] == [0.05, 0.5, 0.1], "the input is not modified"


def test_spec_weights_zero_every_domain_of_a_prompt_beyond_the_gap_threshold():
    probs = torch.tensor([[0.05, 0.5, 0.1], [0.9, 0.0, 0.3]], dtype=torch.float64)  # [B, D]
    spec = RouterSpec(domains=("chat", "code", "math"), gap_threshold=2.0)
    novelty = torch.tensor([1.0, 3.0], dtype=torch.float64)  # [B]
    assert spec.weights(probs, novelty).tolist() == [[0.2, 0.5, 0.0], [0.0, 0.0, 0.0]]
    assert spec.weights(probs).tolist() == spec.weights(probs, None).tolist() == [[0.2, 0.5, 0.0], [0.9, 0.0, 0.3]]
    no_detector = RouterSpec(domains=("chat", "code", "math"))
    assert no_detector.weights(probs, novelty).tolist() == [[0.2, 0.5, 0.0], [0.9, 0.0, 0.3]]


def test_a_router_of_a_chat_template_run_records_that_template():
    from brainstacks_pl.routing.spec import RouterSpec

    assert RouterSpec(prompt_template="chat").prompt_template == "chat"
    with pytest.raises(ValueError, match="prompt_template"):
        RouterSpec(prompt_template="auto")
