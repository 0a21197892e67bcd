"""A byte-level tokenizer that needs no download.

Tests and the demo base need a real ``PreTrainedTokenizerFast`` (padding, special tokens,
``save_pretrained``) without touching a hub. A byte-level BPE with no merges maps every
UTF-8 byte to one token, so any text round-trips and the vocabulary is 256 + specials.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

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
