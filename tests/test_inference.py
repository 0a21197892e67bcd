"""Routed inference: the stack cache, gating, per-sample batched generation, the CLI."""

from __future__ import annotations

import io
import itertools
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_llama, save_tiny_model

from brainstacks_pl import inference_cli
from brainstacks_pl.config import StackConfig
from brainstacks_pl.inference import InferenceError, RoutedGenerator, StackCache
from brainstacks_pl.layers.router import MetaRouter
from brainstacks_pl.model import BrainstacksModel
from brainstacks_pl.routing.artifact import RouterFileError, save_router
from brainstacks_pl.routing.discovery import RouteLossOracle
from brainstacks_pl.routing.spec import RouterSpec, serving_weights
from brainstacks_pl.run import RunDirectory
from brainstacks_pl.storage import Manifest, StackFileError, StackRecord

DOMAINS = ["chat", "code", "math"]
CONFIG = StackConfig(
    experts=2, rank=4, top_k=1, target_modules=["q_proj", "v_proj", "down_proj"], frozen_dtype="float32"
)


def write_run(root: Path) -> Path:
    """A run directory with one random (non-zero) stack per domain and an untrained router."""
    model_dir, run_dir = root / "tiny", root / "run"
    save_tiny_model(model_dir)
    stacks = BrainstacksModel(make_tiny_llama(), CONFIG, DOMAINS, base_model_id=str(model_dir)).eval()
    run = RunDirectory(run_dir)
    run.open(stacks)
    for index, domain in enumerate(DOMAINS):
        for stack in stacks.add_stack(domain, seed=index):
            torch.nn.init.normal_(stack.B, std=0.5, generator=torch.Generator().manual_seed(index))
        run.write_stack(stacks.freeze_stack(), StackRecord(file="", sha256="", domain=domain, round=0))
    torch.manual_seed(0)
    router = MetaRouter(32, len(DOMAINS), hidden=16)
    spec = RouterSpec(domains=tuple(DOMAINS), router_seq_len=64)
    save_router(run_dir, run.manifest, router, spec)
    run.save_manifest()
    return run_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return write_run(tmp_path_factory.mktemp("inference"))


@pytest.fixture
def generator(run_dir) -> RoutedGenerator:
    return RoutedGenerator.from_run(run_dir)


def set_bias(generator: RoutedGenerator, biases: list[float]) -> None:
    """Force the router's decision: a large |bias| saturates its sigmoid whatever the prompt."""
    with torch.no_grad():
        generator.router.domain_bias.copy_(torch.tensor(biases) * generator.router.temperature)
        generator.router.fusion[-1].weight.zero_()


def stack_bytes(run_dir: Path) -> int:
    record = Manifest.load(run_dir).stacks[0]
    return (run_dir / record.file).stat().st_size


# --------------------------------------------------------------------------- the cache


def test_lru_cache_loads_each_stack_once_and_evicts_under_the_budget(run_dir):
    manifest = Manifest.load(run_dir)
    chat, code, math = manifest.stacks
    size = sum(t.numel() * t.element_size() for t in StackCache(run_dir, manifest).get(chat).values())
    cache = StackCache(run_dir, manifest, budget_bytes=2 * size)
    first = cache.get(chat)
    assert cache.get(chat) is first and cache.loads == {chat.file: 1} and cache.hits == 1
    cache.get(code)
    cache.get(math)  # over budget: the least recently used (chat) goes
    assert cache.cached_files == [code.file, math.file] and cache.evictions == 1 and cache.bytes_used <= 2 * size
    cache.get(chat)
    assert cache.loads[chat.file] == 2 and cache.bytes_used <= 2 * size


def test_cache_refuses_a_corrupt_or_missing_stack(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    manifest = Manifest.load(copy)
    path = copy / manifest.stacks[1].file
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # one flipped byte in the tensor data
    path.write_bytes(bytes(data))
    with pytest.raises(StackFileError, match="sha256"):
        StackCache(copy, manifest).get(manifest.stacks[1])
    path.unlink()
    with pytest.raises(StackFileError, match="missing"):
        StackCache(copy, manifest).get(manifest.stacks[1])


# --------------------------------------------------------------------------- routing decisions


def test_gate_threshold_and_chat_floor(generator):
    decision = generator.decide({"chat": 0.05, "code": 0.5, "math": 0.1})
    assert decision.weights == pytest.approx({"chat": 0.2, "code": 0.5, "math": 0.0})
    assert decision.selected == ["chat", "code"] and not decision.capability_gap
    gap = generator.decide({"chat": 0.05, "code": 0.11, "math": 0.0})
    assert gap.capability_gap and gap.selected == [] and all(w == 0 for w in gap.weights.values())


def test_discovery_and_inference_weight_a_route_through_the_one_rule(generator):
    """A route's 0/1 indicators get the same weights in discovery (scoring) as at inference (serving)."""
    oracle = RouteLossOracle(generator.stacks, 0, generator.chat_domain, generator.chat_floor)
    for size in range(len(DOMAINS) + 1):
        for route in itertools.combinations(DOMAINS, size):
            decision = generator.decide({d: float(d in route) for d in DOMAINS})
            assert torch.equal(generator.weight_matrix([decision])[0], oracle.weights(frozenset(route))), route
    probs = torch.rand(5, len(DOMAINS), dtype=torch.float64, generator=torch.Generator().manual_seed(0))  # [B, D]
    batched = serving_weights(probs, DOMAINS, gate=generator.gate_threshold, chat_domain="chat", chat_floor=0.2)
    one_by_one = [generator.decide(dict(zip(DOMAINS, row))).weights for row in probs.tolist()]
    assert one_by_one == [dict(zip(DOMAINS, row)) for row in batched.tolist()]


def test_only_routed_domains_are_loaded_and_resident(generator):
    set_bias(generator, [-30.0, 30.0, -30.0])
    [gen] = generator.generate(["def add(a, b):"], max_new_tokens=2)
    assert gen.route.selected == ["chat", "code"]
    assert [s.domain for s in generator.stacks.frozen_stacks] == ["chat", "code"]
    assert all(layer.frozen_in.shape[0] == 2 for layer in generator.stacks.layers.values())
    assert "stacks/math-r0.safetensors" not in generator.cache.loads, "a domain below the gate is never read from disk"
    generator.generate(["another code prompt"], max_new_tokens=2)
    assert generator.cache.loads == {"stacks/chat-r0.safetensors": 1, "stacks/code-r0.safetensors": 1}


def test_capability_gap_answers_with_the_base_and_says_so(generator):
    set_bias(generator, [-30.0, -30.0, -30.0])
    [gen] = generator.generate(["something no stack knows"], max_new_tokens=4)
    [base] = generator.generate(["something no stack knows"], mode="base", max_new_tokens=4)
    assert gen.route.capability_gap and gen.tokens == base.tokens
    assert "capability gap" in inference_cli.format_route(gen.route, generator.spec)


# --------------------------------------------------------------------------- generation


def manual_greedy(stacks: BrainstacksModel, ids: list[int], weights: torch.Tensor, steps: int, eos: int) -> list[int]:
    out, seq = [], list(ids)
    with stacks.routed(weights), torch.no_grad():
        for _ in range(steps):
            token = int(stacks(torch.tensor([seq])).logits[0, -1].argmax())
            if token == eos:
                break
            out.append(token)
            seq.append(token)
    return out


def test_routed_generation_equals_manually_set_weights(generator, run_dir):
    prompt = "Compute 12 times 7."
    [gen] = generator.generate([prompt], max_new_tokens=6)
    reference = BrainstacksModel(make_tiny_llama(), CONFIG, DOMAINS).eval()
    run = RunDirectory(run_dir, is_writer=False)
    run.open(reference)
    run.load_stacks(reference)  # every stack resident; the weights decide
    weights = generator.weight_matrix([gen.route])
    assert weights.shape == (1, 3) and weights.sum() > 0
    ids = generator.encode(prompt)
    assert gen.tokens == manual_greedy(reference, ids, weights, 6, generator.tokenizer.eos_token_id)


def test_a_batch_with_different_routes_equals_each_prompt_alone(generator):
    generator.load_domains(DOMAINS)
    prompts = [generator.encode("short"), generator.encode("a somewhat longer prompt here")]
    weights = torch.tensor([[0.2, 1.0, 0.0], [1.0, 0.0, 0.7]])
    with generator.stacks.routed(weights):
        together = generator.decode_batch(prompts, 5, 0.0, 0)
    for row in range(2):
        with generator.stacks.routed(weights[row : row + 1]):
            assert generator.decode_batch([prompts[row]], 5, 0.0, 0) == [together[row]]


def test_sampling_is_seeded(generator):
    first = generator.generate(["hello"], mode="ungated", max_new_tokens=5, temperature=1.0, seed=3)[0].tokens
    assert generator.generate(["hello"], mode="ungated", max_new_tokens=5, temperature=1.0, seed=3)[0].tokens == first


# --------------------------------------------------------------------------- errors


def test_clear_errors_for_bad_requests(generator):
    with pytest.raises(InferenceError, match="empty prompt"):
        generator.generate(["   "])
    with pytest.raises(InferenceError, match="context is 256"):
        generator.generate(["x" * 300])
    with pytest.raises(InferenceError, match="mode"):
        generator.generate(["hi"], mode="fast")


def test_router_from_other_domains_or_base_is_refused(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    path = copy / "router" / "router.json"
    info = json.loads(path.read_text())
    path.write_text(json.dumps({**info, "domains": ["chat", "legal"]}))
    with pytest.raises(RouterFileError, match="legal"):
        RoutedGenerator.from_run(copy)
    path.write_text(json.dumps({**info, "layer_shapes_hash": "0" * 16}))
    with pytest.raises(RouterFileError, match="another base"):
        RoutedGenerator.from_run(copy)
    path.write_text(json.dumps({**info, "gate_threshold": "high"}))
    with pytest.raises(RouterFileError, match=r"router\.json: field gate_threshold must be a number"):
        RoutedGenerator.from_run(copy)


# --------------------------------------------------------------------------- the CLI


def test_generate_command_prints_the_route_and_exits_zero(run_dir, capsys):
    out = io.StringIO()
    assert (
        inference_cli.main(
            ["generate", "--run", str(run_dir), "--prompt", "What is 2+2?", "--max_new_tokens", "3"], stdout=out
        )
        == 0
    )
    assert out.getvalue().startswith("route: chat")
    assert inference_cli.main(["generate", "--run", str(run_dir), "--prompt", ""]) == 2
    assert "empty prompt" in capsys.readouterr().err


def test_chat_session_commands_and_errors_keep_the_session_going(run_dir):
    lines = (
        "\n".join(
            [
                "/route what is 3+4",
                "/bogus",
                "/temp abc",
                "/tokens 2",
                "/mode base",
                "hello",
                "/stacks",
                "/mode nope",
                "/greedy",
                "/quit",
                "never read",
            ]
        )
        + "\n"
    )
    out = io.StringIO()
    assert inference_cli.main(["chat", "--run", str(run_dir)], stdin=io.StringIO(lines), stdout=out) == 0
    text = out.getvalue()
    assert "route: chat" in text and "error: unknown command /bogus" in text and "error: usage: /temp" in text
    assert "max new tokens: 2" in text and "mode: base" in text and "resident stacks:" in text
    assert "error: usage: /mode" in text and "greedy decoding" in text


def test_chat_sends_the_conversation_and_its_first_turn_routes_like_generate(generator):
    session = inference_cli.ChatSession(generator, "routed", max_new_tokens=2, out=io.StringIO())
    first = session.conversation("Hi, I'm Tom.")
    assert first == "Hi, I'm Tom."
    assert generator.route(["User: Hi, I'm Tom."])[0].probs == generator.route([first])[0].probs
    session.handle("Hi, I'm Tom.")
    assert [role for role, _ in session.history] == ["User", "Assistant"]
    second = session.conversation("And you?")
    assert second.startswith("User: Hi, I'm Tom.\nAssistant: ") and second.endswith("\nUser: And you?")
    assert "tokens/s]" in session.out.getvalue()
    session.max_new_tokens = generator.context_length - 8  # no room for the history: it is dropped
    assert session.conversation("And you?") == "And you?"
    session.handle("/reset")
    assert session.history == []
    session.handle("/help")
    assert "/route TEXT" in session.out.getvalue() and "``" not in session.out.getvalue()


def test_alignment_serving_scopes_route_like_generate(generator, run_dir):
    """DPO / GRPO train in the served configuration: the routed scope's weights are exactly
    what ``generate`` serves for the same prompts; as-frozen is the domain and earlier ones."""
    from brainstacks_pl.modules.serving import ServedConfiguration, prompt_rows

    set_bias(generator, [3.0, -3.0, 3.0])
    served = ServedConfiguration(generator.stacks, "math", "routed", generator)
    prompts = ["What is 2+2?", "Hi, I'm Tom."]
    encoded = [generator.encode(p) for p in prompts]
    expected = generator.weight_matrix(generator.route(prompts))
    assert torch.equal(served.weights(encoded), expected)
    width = max(len(e) for e in encoded)
    ids = torch.tensor([[99] * (width - len(e)) + e for e in encoded])  # left-padded, as GRPO's prompts
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
    assert prompt_rows(ids, mask) == encoded
    with served.scope(encoded, repeat=2, tile=1):
        ctx = generator.stacks.context
        assert ctx.mode == "routed" and torch.equal(ctx.weights, expected.repeat_interleave(2, 0))
    with ServedConfiguration(generator.stacks, "code", "as_frozen").scope():
        assert generator.stacks.context.mode == "isolated" and generator.stacks.context.active_domains == {
            "chat",
            "code",
        }
    assert generator.stacks.context.mode == "ungated"


def test_gap_auroc_and_best_gate_on_hand_values_and_a_run(run_dir, capsys):
    from brainstacks_pl.routing.gap import auroc, best_gate, out_of_domain_prompts

    assert auroc([0.9, 0.8], [0.1, 0.85]) == 0.75 and auroc([0.5], [0.5]) == 0.5
    assert best_gate([0.9, 0.8, 0.3], [0.1, 0.2]) == {"gate": 0.3, "tpr": 1.0, "fpr": 0.0, "youden_j": 1.0}
    assert len(out_of_domain_prompts()) >= 30
    import runpy

    script = runpy.run_path(str(Path(__file__).resolve().parents[1] / "benchmarks" / "gap_auroc.py"))
    result = script["main"](["--run", str(run_dir), "--tasks", "chat_mc,math_mc"])
    assert result["n_in_domain"] == 80 and result["n_out_of_domain"] == len(out_of_domain_prompts())
    assert 0.0 <= result["confidence"]["auroc"] <= 1.0 and "novelty" not in result, "this router has no detector"
    out = capsys.readouterr().out
    assert "confidence: AUROC" in out and "as served (gate 0.12)" in out
