"""A byte-level tokenizer that needs no download, and the pad id of any tokenizer.

Tests and the demo base need a real ``PreTrainedTokenizerFast`` (padding, special tokens,
``save_pretrained``) without touching a hub. A byte-level BPE with no merges maps every
UTF-8 byte to one token, so any text round-trips and the vocabulary is 256 + specials.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

__all__ = ["SPECIAL_TOKENS", "byte_tokenizer", "pad_token_id"]

SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}


def byte_tokenizer(
    merges: list[tuple[str, str]] | None = None, vocab: dict[str, int] | None = None
) -> PreTrainedTokenizerFast:
    """Byte-level BPE tokenizer: specials get ids 0..3, then the 256 byte symbols (then ``vocab``'s extras)."""
    byte_symbols = list(pre_tokenizers.ByteLevel.alphabet())
    byte_symbols.sort()
    full_vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS.values())}
    for sym in byte_symbols:
        full_vocab.setdefault(sym, len(full_vocab))
    for sym in vocab or {}:
        full_vocab.setdefault(sym, len(full_vocab))
    bpe = models.BPE(vocab=full_vocab, merges=merges or [], unk_token=SPECIAL_TOKENS["unk_token"])
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)
    fast.padding_side = "right"
    return fast


def pad_token_id(tokenizer) -> int:
    """The id every batch of ``tokenizer``'s sequences is padded with: its pad token, else its eos
    token (many causal LMs ship none), else 0. Padded positions are masked out wherever they
    occur (attention mask 0, label -100), so any id of the vocabulary would do, and 0 always is one;
    training, routing, scoring, generation and serving all pad with this one id."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    return 0
