"""The embedded demo base model: a tiny Llama that the project pretrains itself.

The demo fine-tunes adapter stacks on five domains on top of a base that must already speak
some English, or the stacks would be learning the language instead of the domain. Nothing
may be downloaded, so the project ships its own base, built here in three steps:

1. ``general_corpus`` (``demo_corpus.py``): ~1.5 MB of deterministic, generated general-purpose text (everyday
   paragraphs, short stories, definitions, "User: ... Assistant: ..." dialogue, numbers and
   arithmetic in words and digits, tiny Python snippets, lists). It is deliberately *not*
   the domains' fine-tuning data.
2. ``build_demo_tokenizer``: a byte-level BPE (vocab 1024) trained on that corpus, with the
   special ids of ``tokenization.byte_tokenizer`` (``<s>``=0, ``</s>``=1, ``<pad>``=2,
   ``<unk>``=3) and the full byte alphabet, so any text encodes.
3. ``pretrain_demo_base``: a plain causal-LM phase (``modules.pretrain.PretrainModule`` under
   ``lightning.Trainer`` on CPU) that writes a ``save_pretrained`` directory.

The result ships as ``brainstacks_pl/assets/demo_base`` (rebuild: ``python scripts/build_demo_base.py``);
``brainstacks_pl.assets.resolve_model_name("brainstacks-demo")`` points there and never trains.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from brainstacks_pl.assets import DEMO_BASE_NAME
from brainstacks_pl.demo_corpus import general_corpus
from brainstacks_pl.tokenization import SPECIAL_TOKENS

__all__ = ["DemoBaseConfig", "build_demo_tokenizer", "general_corpus", "pretrain_demo_base"]

"""The model name that ``resolve_model_name`` maps to the shipped (or cached) demo base."""


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------


def build_demo_tokenizer(
    texts: list[str], vocab_size: int = 1024, model_max_length: int = 512
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts``: specials at ids 0..3, all 256 byte symbols, then merges.

    Same special ids and pre-tokenisation as ``tokenization.byte_tokenizer``; the byte alphabet is
    seeded into the trainer, so any UTF-8 text (code symbols, accents, emoji) encodes without ``<unk>``.
    No BOS/EOS is added automatically (also as ``byte_tokenizer``); callers add them.
    """
    specials = list(SPECIAL_TOKENS.values())  # <s>, </s>, <pad>, <unk> -> 0, 1, 2, 3
    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=model_max_length, **SPECIAL_TOKENS)
    fast.padding_side = "right"
    return fast


# ---------------------------------------------------------------------------------------------
# Pretraining and the shipped directory
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoBaseConfig:
    """Shape and training budget of the demo base (defaults build the shipped one in ~5 min on 2 CPU cores)."""

    hidden_size: int = 128
    """Model width."""
    intermediate_size: int = 352
    """SwiGLU MLP width (gate_proj / up_proj outputs)."""
    num_hidden_layers: int = 4
    """Decoder layers."""
    num_attention_heads: int = 4
    """Query heads (head_dim = hidden_size / heads = 32)."""
    num_key_value_heads: int = 2
    """Key/value heads (grouped-query attention)."""
    max_position_embeddings: int = 512
    """Longest sequence the model (and the tokenizer's ``model_max_length``) is declared for."""
    vocab_size: int = 1024
    """Target BPE vocabulary size, specials and the 256 byte symbols included."""
    n_docs: int = 4000
    """Documents of ``general_corpus`` to train on (4000 is ~1.6 MB, ~0.5M tokens)."""
    seq_len: int = 256
    """Tokens per packed training row: covers the demo's ``max_seq_len`` (192), so RoPE has seen those positions."""
    batch_size: int = 16
    """Rows per optimizer step (4096 tokens at seq_len=256)."""
    max_steps: int = 400
    """Optimizer steps."""
    warmup_steps: int = 30
    """Linear learning-rate warmup steps, then cosine decay."""
    lr: float = 3e-3
    """Peak AdamW learning rate."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of ``lr``."""
    weight_decay: float = 0.1
    """AdamW weight decay on matrices and embeddings (not on norms)."""
    seed: int = 0
    """Seeds the corpus, the initialisation and the data order; held-out text uses ``seed + 1``."""
    heldout_docs: int = 300
    """Documents of held-out text (``general_corpus(seed + 1)``) for the reported held-out loss."""
    num_threads: int = 1
    """Torch CPU threads during the build (restored afterwards). One thread gives the same bits on any
    machine and is the fastest choice on a shared 2-core box; raise it on an idle many-core machine."""

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"DemoBaseConfig.hidden_size={self.hidden_size} must divide by num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"DemoBaseConfig.num_attention_heads={self.num_attention_heads} "
                f"must divide by num_key_value_heads={self.num_key_value_heads}"
            )
        if self.vocab_size < 260:
            raise ValueError(f"DemoBaseConfig.vocab_size must hold 4 specials + 256 bytes, got {self.vocab_size}")
        if self.seq_len > self.max_position_embeddings:
            raise ValueError(f"DemoBaseConfig.seq_len={self.seq_len} exceeds max_position_embeddings")

    def llama_kwargs(self, tokenizer: PreTrainedTokenizerFast) -> dict:
        """``LlamaConfig`` kwargs; the vocabulary size and special ids come from the trained tokenizer."""
        return dict(
            vocab_size=len(tokenizer),
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            max_position_embeddings=self.max_position_embeddings,
            tie_word_embeddings=False,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )


def _corpus_sha256(texts: list[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8") + b"\x00")
    return digest.hexdigest()


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    """Move the finished ``tmp`` to ``out_dir``; an existing ``out_dir`` is swapped out, then removed."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        out_dir.rename(old)
    tmp.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def pretrain_demo_base(out_dir: Path, config: DemoBaseConfig = DemoBaseConfig(), progress: bool = False) -> Path:
    """Build tokenizer and model, run the plain LM phase, write a ``save_pretrained`` directory at ``out_dir``.

    Writes ``config.json``, ``model.safetensors``, the tokenizer files and ``brainstacks_demo.json``
    (the config, corpus sha256, initial/final training loss, held-out loss of the trained and of the
    random-init model, build time) into a temp dir beside ``out_dir``, then renames it into place.
    Deterministic on CPU for a given config (which fixes the thread count).
    """
    import torch

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.num_threads)
    try:
        return _pretrain(Path(out_dir), config, progress)
    finally:
        torch.set_num_threads(previous_threads)


def _save_tokenizer(tokenizer: PreTrainedTokenizerFast, path: Path) -> None:
    """``save_pretrained``, naming the class ``PreTrainedTokenizerFast`` so transformers 4.x loads it too."""
    tokenizer.save_pretrained(path)
    config_file = path / "tokenizer_config.json"
    tok_config = json.loads(config_file.read_text())
    tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_file.write_text(json.dumps(tok_config, indent=2) + "\n")


def _pretrain(out_dir: Path, config: DemoBaseConfig, progress: bool) -> Path:
    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    from brainstacks_pl.modules.pretrain import LossHistory, PackedDataset, PretrainModule, lm_loss, pack_token_ids

    start = time.perf_counter()
    L.seed_everything(config.seed, verbose=False)
    texts = general_corpus(config.seed, config.n_docs)
    tokenizer = build_demo_tokenizer(texts, config.vocab_size, config.max_position_embeddings)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id

    def rows_of(docs: list[str]) -> torch.Tensor:
        return pack_token_ids(tokenizer(docs, add_special_tokens=False)["input_ids"], config.seq_len, bos, eos)

    train_rows = rows_of(texts)  # [R, S]
    heldout_rows = rows_of(general_corpus(config.seed + 1, config.heldout_docs))
    module = PretrainModule(
        config.llama_kwargs(tokenizer),
        lr=config.lr,
        warmup_steps=config.warmup_steps,
        max_steps=config.max_steps,
        weight_decay=config.weight_decay,
        min_lr_ratio=config.min_lr_ratio,
    )
    random_init_heldout = lm_loss(module.model, heldout_rows)
    loader = DataLoader(
        PackedDataset(train_rows),
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(config.seed),
    )
    history = LossHistory()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        max_steps=config.max_steps,
        gradient_clip_val=1.0,
        callbacks=[history],
        enable_progress_bar=progress,
        enable_model_summary=False,
        deterministic=True,
    )
    trainer.fit(module, train_dataloaders=loader)
    losses = history.losses
    tail = losses[-min(20, len(losses)) :]
    report = {
        "name": DEMO_BASE_NAME,
        "config": asdict(config),
        "n_parameters": sum(p.numel() for p in module.model.parameters()),
        "corpus_sha256": _corpus_sha256(texts),
        "corpus_chars": sum(len(t) for t in texts),
        "train_tokens": train_rows.numel(),
        "initial_loss": losses[0],
        "final_loss": sum(tail) / len(tail),
        "ln_vocab": math.log(len(tokenizer)),
        "loss_every_50_steps": [round(x, 4) for x in losses[::50]],
        "heldout_loss": lm_loss(module.model, heldout_rows),
        "random_init_heldout_loss": random_init_heldout,
        "build_seconds": round(time.perf_counter() - start, 1),
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        module.model.save_pretrained(tmp)
        _save_tokenizer(tokenizer, tmp)
        (tmp / "brainstacks_demo.json").write_text(json.dumps(report, indent=2) + "\n")
        for path in tmp.iterdir():  # mkdtemp and safetensors create owner-only files; installs must be readable
            path.chmod(0o644)
        tmp.chmod(0o755)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
