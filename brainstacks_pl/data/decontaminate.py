"""Cross-domain decontamination and the hash-based validation split, as pure functions.

Rules (all on ``normalize_text``: NFKC, lower case, punctuation to spaces, whitespace collapsed):

1. Exact duplicates. Within a domain, later copies of the same prompt+response are dropped.
   Across domains, ``"drop"`` keeps a shared example only in the earliest domain of the
   curriculum; ``"reassign"`` keeps it only in the domain whose keyword profile (add-one
   smoothed unigram log-likelihood, averaged over the example's words) matches it best, ties
   going to the earlier domain. ``"off"`` keeps everything.
2. Split. An example goes to validation iff ``sha1(f"{seed}:{normalized prompt}")`` falls below
   ``val_fraction``: the decision depends on the prompt alone, so the same prompt never lands
   in both splits and no example changes split when others are added, removed or reordered.
3. Overlap. A training example is dropped when it shares a word 13-gram with a validation
   example of another domain (for validation texts shorter than 13 words: when it contains
   the whole validation text as a word sequence).
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import TypeVar

from brainstacks_pl.data.formats import Example

__all__ = [
    "DECONTAMINATE_MODES",
    "NGRAM",
    "check_val_fraction",
    "drop_overlapping",
    "example_key",
    "normalize_text",
    "remove_duplicates",
    "split_hash",
    "split_train_val",
]

DECONTAMINATE_MODES = ("drop", "reassign", "off")
NGRAM = 13
_NON_WORD_RE = re.compile(r"[^\w]+")
T = TypeVar("T")


def normalize_text(text: str) -> str:
    """NFKC, lower case, non-word characters to spaces, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(_NON_WORD_RE.sub(" ", text).split())


def example_key(example: Example) -> str:
    """The identity used for exact-duplicate detection: normalized prompt + response."""
    return normalize_text(f"{example.prompt} {example.response}")


def _new_counts(loaded: int) -> dict[str, int]:
    return {
        "loaded": loaded,
        "dropped_duplicate": 0,
        "dropped_cross_domain": 0,
        "reassigned": 0,
        "dropped_overlap": 0,
        "kept": loaded,
    }


def _profile_score(words: list[str], profile: Counter, total: int, vocab: int) -> float:
    # Mean add-one-smoothed log P(word | domain): higher = the text reads more like the domain.
    return sum(math.log((profile[w] + 1) / (total + vocab)) for w in words) / max(len(words), 1)


def remove_duplicates(
    domains: dict[str, list[Example]], mode: str = "drop"
) -> tuple[dict[str, list[Example]], dict[str, dict[str, int]]]:
    """Drop exact duplicates within and across domains (dict order = curriculum order).

    Returns the kept examples per domain (original order preserved) and per-domain counts:
    ``loaded``, ``dropped_duplicate`` (within the domain), ``dropped_cross_domain``,
    ``reassigned`` (shared examples this domain kept although an earlier domain also had them),
    ``dropped_overlap`` (0 here), ``kept``.
    """
    if mode not in DECONTAMINATE_MODES:
        raise ValueError(f"decontaminate must be one of {DECONTAMINATE_MODES}, got {mode!r}")
    counts = {name: _new_counts(len(exs)) for name, exs in domains.items()}
    if mode == "off":
        return {name: list(exs) for name, exs in domains.items()}, counts

    unique: dict[str, list[tuple[str, Example]]] = {}
    owners: dict[str, list[str]] = {}  # key -> domains holding it, in curriculum order
    for name, exs in domains.items():
        seen: set[str] = set()
        unique[name] = []
        for ex in exs:
            key = example_key(ex)
            if key in seen:
                counts[name]["dropped_duplicate"] += 1
                continue
            seen.add(key)
            unique[name].append((key, ex))
            owners.setdefault(key, []).append(name)

    winner = {key: names[0] for key, names in owners.items() if len(names) > 1}
    if mode == "reassign" and winner:
        profiles = {n: Counter(w for key, _ in pairs for w in key.split()) for n, pairs in unique.items()}
        totals = {name: sum(p.values()) for name, p in profiles.items()}
        vocab = len(set().union(*profiles.values()))
        for key in winner:
            words = key.split()
            scores = [(_profile_score(words, profiles[n], totals[n], vocab), -i, n) for i, n in enumerate(owners[key])]
            winner[key] = max(scores)[2]
            if winner[key] != owners[key][0]:
                counts[winner[key]]["reassigned"] += 1

    kept: dict[str, list[Example]] = {}
    for name, pairs in unique.items():
        kept[name] = [ex for key, ex in pairs if winner.get(key, name) == name]
        counts[name]["dropped_cross_domain"] = len(pairs) - len(kept[name])
        counts[name]["kept"] = len(kept[name])
    return kept, counts


def split_hash(prompt: str, seed: int = 0) -> float:
    """A uniform number in [0, 1) that depends only on the normalized prompt and the seed."""
    digest = hashlib.sha1(f"{seed}:{normalize_text(prompt)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def check_val_fraction(val_fraction: float) -> None:
    """Raise unless ``val_fraction`` is in [0, 1) (data modules check it when built, not at setup)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")


def split_train_val(
    examples: Sequence[T], val_fraction: float, seed: int = 0, prompt_of: Callable[[T], str] = attrgetter("prompt")
) -> tuple[list[T], list[T]]:
    """Split by unique prompt: ``split_hash(prompt) < val_fraction`` -> validation.

    The one split of every phase's data (curriculum examples, preference pairs, GRPO prompts;
    ``prompt_of`` reads an item's prompt). Train keeps the input order; validation is sorted by
    hash (a stable, deterministic order, so any prefix of it is a deterministic subsample). If
    no prompt falls below the threshold while there are at least two distinct prompts, the
    prompt with the smallest hash goes to validation (tiny data sets only: the one case where
    the split depends on the other items).
    """
    check_val_fraction(val_fraction)
    hashes = [split_hash(prompt_of(ex), seed) for ex in examples]
    threshold = val_fraction
    if val_fraction > 0 and hashes and not any(h < threshold for h in hashes):
        distinct = sorted(set(hashes))
        if len(distinct) >= 2:
            threshold = math.nextafter(distinct[0], 1.0)
    train = [ex for ex, h in zip(examples, hashes) if h >= threshold]
    held_out = [(h, ex) for ex, h in zip(examples, hashes) if h < threshold]
    val = [ex for _, ex in sorted(held_out, key=lambda t: t[0])]
    return train, val


def _ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def drop_overlapping(
    train: dict[str, list[Example]], val: dict[str, list[Example]], n: int = NGRAM
) -> tuple[dict[str, list[Example]], dict[str, int]]:
    """Drop training examples sharing a word ``n``-gram with another domain's validation examples.

    A validation text shorter than ``n`` words counts as one gram of its own length. Returns the
    kept training examples per domain and the number dropped per domain.
    """
    grams: dict[int, dict[tuple[str, ...], set[str]]] = {}  # length -> gram -> domains
    for name, exs in val.items():
        for ex in exs:
            words = example_key(ex).split()
            if not words:
                continue
            size = min(n, len(words))
            for gram in _ngrams(words, size):
                grams.setdefault(size, {}).setdefault(gram, set()).add(name)

    kept: dict[str, list[Example]] = {}
    dropped: dict[str, int] = {}
    for name, exs in train.items():
        kept[name] = []
        for ex in exs:
            words = example_key(ex).split()
            hit = any(
                owners - {name}
                for size, table in grams.items()
                for gram in _ngrams(words, size)
                if (owners := table.get(gram))
            )
            if not hit:
                kept[name].append(ex)
        dropped[name] = len(exs) - len(kept[name])
    return kept, dropped
