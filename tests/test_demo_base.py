"""The shipped demo base: a real pretrained tiny Llama, loadable offline, far better than random init."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from brainstacks_pl.assets import DEMO_BASE_NAME, resolve_model_name, shipped_demo_base_path
from brainstacks_pl.demo_base import DemoBaseConfig, build_demo_tokenizer, general_corpus, pretrain_demo_base
from brainstacks_pl.errors import UserError
from brainstacks_pl.modules.pretrain import PretrainModule, lm_loss, pack_token_ids
from brainstacks_pl.tokenization import byte_tokenizer

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TRICKY_TEXT = 'def f(x):\n    return {"ä": x ** 2}  # naïve café — 🙂 中文\t~`|\\ <s>?'


def mini_config(**overrides) -> DemoBaseConfig:
    kwargs = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        vocab_size=300,
        n_docs=40,
        seq_len=32,
        batch_size=4,
        max_steps=3,
        warmup_steps=1,
        heldout_docs=8,
    )
    kwargs.update(overrides)
    return DemoBaseConfig(**kwargs)


@pytest.fixture(scope="module")
def shipped():
    path = shipped_demo_base_path()
    assert (path / "model.safetensors").is_file(), "run `python scripts/build_demo_base.py` to build the shipped base"
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return path, model, tokenizer


def test_shipped_base_is_llama_with_all_projections(shipped):
    path, model, _ = shipped
    assert isinstance(model, LlamaForCausalLM) and model.config.model_type == "llama"
    assert model.config.num_hidden_layers == DemoBaseConfig().num_hidden_layers
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == (0, 1, 2)
    for layer in model.model.layers:
        for name in PROJECTIONS:
            parent = layer.self_attn if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else layer.mlp
            assert isinstance(getattr(parent, name), torch.nn.Linear), name
    size_mb = sum(f.stat().st_size for f in path.iterdir()) / 2**20
    assert size_mb < 10, f"shipped base is {size_mb:.1f} MB"


def test_shipped_tokenizer_round_trips_and_matches_byte_tokenizer_specials(shipped):
    _, model, tokenizer = shipped
    ids = tokenizer(TRICKY_TEXT, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == TRICKY_TEXT
    assert tokenizer.unk_token_id not in ids
    assert len(ids) < len(TRICKY_TEXT.encode()), "BPE merges should compress below one token per byte"
    reference = byte_tokenizer()
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        assert getattr(tokenizer, attr) == getattr(reference, attr)
    assert tokenizer.padding_side == "right"
    assert len(tokenizer) == model.config.vocab_size


def test_shipped_base_beats_random_init_on_heldout_text(shipped):
    path, model, tokenizer = shipped
    texts = general_corpus(seed=12345, n_docs=40)  # a seed the build never saw
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    rows = pack_token_ids(ids, 128, tokenizer.bos_token_id, tokenizer.eos_token_id)
    torch.manual_seed(0)
    random_model = LlamaForCausalLM(LlamaConfig.from_pretrained(path)).eval()
    trained, random = lm_loss(model, rows), lm_loss(random_model, rows)
    assert trained < 0.6 * random, (trained, random)
    report = json.loads((path / "brainstacks_demo.json").read_text())
    assert report["final_loss"] < 0.6 * report["initial_loss"]


def test_general_corpus_is_deterministic_and_seeded():
    assert general_corpus(seed=3, n_docs=20) == general_corpus(seed=3, n_docs=20)
    assert general_corpus(seed=3, n_docs=20) != general_corpus(seed=4, n_docs=20)
    text = "\n".join(general_corpus(seed=0, n_docs=200))
    for marker in ("User: ", "Assistant: ", "def ", " = ", "- "):
        assert marker in text


def test_build_demo_tokenizer_has_specials_and_every_byte():
    tok = build_demo_tokenizer(general_corpus(seed=0, n_docs=30), vocab_size=300)
    assert tok.convert_ids_to_tokens([0, 1, 2, 3]) == ["<s>", "</s>", "<pad>", "<unk>"]
    every_byte = bytes(range(256)).decode("latin-1")
    ids = tok(every_byte, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids and tok.decode(ids) == every_byte


def test_pack_token_ids_rows():
    rows = pack_token_ids([[5, 6], [7]], seq_len=3, bos_id=0, eos_id=1)  # 0 5 6 1 0 7 1 -> two rows
    assert rows.tolist() == [[0, 5, 6], [1, 0, 7]]
    with pytest.raises(ValueError):
        pack_token_ids([[5]], seq_len=8, bos_id=0, eos_id=1)


def test_lr_schedule_warms_up_then_decays():
    module = PretrainModule(
        dict(
            vocab_size=16,
            hidden_size=8,
            intermediate_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        ),
        warmup_steps=4,
        max_steps=20,
    )
    factors = [module.lr_factor(s) for s in range(20)]
    # The one schedule of optim.lr_factor: (step + 1) / (warmup + 1), then cosine from 1.
    assert factors[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert all(a >= b for a, b in zip(factors[4:], factors[5:])) and factors[-1] >= module.hparams.min_lr_ratio


def test_pretrain_demo_base_end_to_end_is_atomic_and_deterministic(tmp_path):
    out = tmp_path / "base"
    pretrain_demo_base(out, mini_config())
    first = load_file(out / "model.safetensors")
    pretrain_demo_base(out, mini_config())  # rebuild over an existing directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"], "no temp or backup dirs left behind"
    second = load_file(out / "model.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert model.config.vocab_size == len(tokenizer) <= 300
    report = json.loads((out / "brainstacks_demo.json").read_text())
    assert report["config"]["max_steps"] == 3 and len(report["corpus_sha256"]) == 64
    assert all(torch.isfinite(torch.tensor(report[k])) for k in ("initial_loss", "final_loss", "heldout_loss"))


def test_resolve_model_name():
    assert resolve_model_name(DEMO_BASE_NAME) == str(shipped_demo_base_path())
    assert resolve_model_name("meta-llama/Llama-3.2-1B") == "meta-llama/Llama-3.2-1B"


def test_a_missing_demo_asset_is_an_error_that_says_how_to_rebuild_it(tmp_path, monkeypatch):
    import brainstacks_pl.assets as assets

    monkeypatch.setattr(assets, "shipped_demo_base_path", lambda: tmp_path / "not-shipped")
    with pytest.raises(UserError, match=r"lacks config\.json.*scripts/build_demo_base\.py"):
        assets.resolve_model_name(DEMO_BASE_NAME)
    assert not (tmp_path / "not-shipped").exists()  # nothing was trained or written
