"""The embedded demo base model: a tiny Llama that the project pretrains itself.

The demo fine-tunes adapter stacks on five domains on top of a base that must already speak
some English, or the stacks would be learning the language instead of the domain. Nothing
may be downloaded, so the project ships its own base, built here in three steps:

1. ``general_corpus``: ~1.5 MB of deterministic, generated general-purpose text (everyday
   paragraphs, short stories, definitions, "User: ... Assistant: ..." dialogue, numbers and
   arithmetic in words and digits, tiny Python snippets, lists). It is deliberately *not*
   the domains' fine-tuning data.
2. ``build_demo_tokenizer``: a byte-level BPE (vocab 1024) trained on that corpus, with the
   special ids of ``tokenization.byte_tokenizer`` (``<s>``=0, ``</s>``=1, ``<pad>``=2,
   ``<unk>``=3) and the full byte alphabet, so any text encodes.
3. ``pretrain_demo_base``: a plain causal-LM phase (``modules.pretrain.PretrainModule`` under
   ``lightning.Trainer`` on CPU) that writes a ``save_pretrained`` directory.

The result ships as ``brainstacks_pl/assets/demo_base``; ``resolve_model_name("brainstacks-demo")``
points there, and rebuilds into a user cache when the package was installed without it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from brainstacks_pl.tokenization import SPECIAL_TOKENS

__all__ = [
    "DEMO_BASE_NAME",
    "DemoBaseConfig",
    "build_demo_tokenizer",
    "demo_base_path",
    "general_corpus",
    "pretrain_demo_base",
    "resolve_model_name",
    "shipped_demo_base_path",
]

DEMO_BASE_NAME = "brainstacks-demo"
"""The model name that ``resolve_model_name`` maps to the shipped (or cached) demo base."""

# ---------------------------------------------------------------------------------------------
# The general corpus. Word lists are the generator's content, kept together in one place.
# ---------------------------------------------------------------------------------------------

_NAMES = ("Anna", "Ben", "Chloé", "David", "Elena", "Farid", "Grace", "Hiro", "Iris", "Jonas", "Kemal",
          "Lena", "Marco", "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tomás", "Uma", "Victor",
          "Wen", "Yara", "Zoe")
_PLACES = ("the park", "the market", "the library", "the beach", "the old town", "the station", "the garden",
           "the school", "the museum", "the harbour", "the bakery", "the forest", "the village", "the café")
_ANIMALS = ("cat", "dog", "fox", "owl", "rabbit", "horse", "duck", "bee", "turtle", "goat", "sparrow", "dolphin")
_OBJECTS = ("an old map", "a red umbrella", "a small key", "a letter", "a lost wallet", "a blue bicycle",
            "a wooden box", "a strange stone", "a book of poems", "a broken clock", "a paper kite")
_FEELINGS = ("happy", "surprised", "calm", "curious", "tired", "proud", "nervous", "grateful", "excited")
_ADJECTIVES = ("quiet", "busy", "bright", "cold", "warm", "small", "large", "green", "noisy", "peaceful",
               "crowded", "clean", "famous", "simple", "friendly")
_TIMES = ("In the morning", "Every Sunday", "Last summer", "One rainy day", "After lunch", "On Monday",
          "Late at night", "In the spring", "Once upon a time", "Yesterday", "Early in the evening")
_TOPICS = {
    "weather": ("The sky is {adj} today and the wind comes from the west.", "It will rain in the afternoon, so take a coat.",
                "In winter the days are short and the nights are long.", "The temperature is about {n} °C."),
    "cooking": ("To make soup, cut the vegetables and boil them in water.", "Fresh bread smells wonderful.",
                "Add a pinch of salt and stir for {n} minutes.", "A good meal does not need to be expensive."),
    "gardening": ("Tomatoes need a lot of sun and regular water.", "In autumn the leaves turn yellow and fall.",
                  "Plant the seeds {n} centimetres deep.", "A {adj} garden is a good place to rest."),
    "travel": ("The train leaves at {n} o'clock.", "Pack light and bring a good pair of shoes.",
               "Many people visit {place} in the summer.", "A map helps when the streets are {adj}."),
    "school": ("The students read a chapter every week.", "The teacher wrote {n} questions on the board.",
               "Homework is easier when you start early.", "Reading every day builds a large vocabulary."),
    "work": ("The meeting starts at {n} and ends before lunch.", "A short list of tasks keeps the day in order.",
             "Good teams share information openly.", "She sent the report before the deadline."),
    "sports": ("The team practised for {n} hours.", "Running in the park is good exercise.",
               "The match ended in a draw.", "Stretching before a game prevents injuries."),
    "music": ("He plays the piano every evening.", "The concert in {place} was {adj} and full.",
              "A song often repeats its chorus.", "Music can make a long trip feel short."),
    "home": ("The kitchen is the warmest room in the house.", "Open the window to let fresh air in.",
             "They painted the walls a {adj} colour.", "There are {n} chairs around the table."),
    "nature": ("The river flows to the sea.", "A {animal} lives near the edge of the forest.",
               "Mountains are cold at the top.", "Bees carry pollen from flower to flower."),
}
_DEFINITIONS = {
    "calendar": "a table that shows the days, weeks and months of a year",
    "bridge": "a structure that carries a road or path across a river or valley",
    "library": "a place where books are kept for people to read or borrow",
    "recipe": "a list of ingredients and steps for making a dish",
    "umbrella": "a folding cover that protects you from rain",
    "planet": "a large body that moves around a star",
    "habit": "something you do regularly, often without thinking",
    "map": "a drawing of an area that shows where places are",
    "clock": "a device that shows the time",
    "friend": "a person you know well and like",
    "island": "a piece of land with water all around it",
    "question": "a sentence that asks for information",
    "list": "a number of items written one after another",
    "number": "a word or symbol that tells how many",
    "sentence": "a group of words that expresses a complete thought",
    "function": "a named piece of code that takes inputs and returns a result",
    "variable": "a name that refers to a value in a program",
    "garden": "a piece of ground where flowers or vegetables are grown",
    "market": "a place where people buy and sell goods",
    "forest": "a large area covered with trees",
    "season": "one of the four parts of the year",
    "battery": "a device that stores energy and gives electricity",
    "kettle": "a pot used for boiling water",
    "journey": "a trip from one place to another",
}
_REQUESTS = (("make a cup of tea", ("Boil some water.", "Put a tea bag in a cup.", "Pour the water and wait three minutes.",
                                    "Remove the bag and add milk if you like.")),
             ("plan a short trip", ("Choose a place and a date.", "Check the train times.", "Pack a small bag.",
                                    "Tell a friend where you are going.")),
             ("learn new words", ("Read a little every day.", "Write down words you do not know.",
                                  "Use each new word in a sentence.", "Review the list at the end of the week.")),
             ("keep a plant alive", ("Put it near a window.", "Water it when the soil is dry.",
                                     "Turn it now and then so it grows straight.")),
             ("write a letter", ("Start with a greeting.", "Say why you are writing.", "Keep it short and clear.",
                                 "End with your name.")),
             ("save some money", ("Write down what you spend.", "Set a small goal each month.",
                                  "Cook at home more often.")))
_GREETINGS = (("Hello!", "Hello! How can I help you today?"), ("Good morning.", "Good morning! What would you like to do?"),
              ("Thank you.", "You are welcome."), ("Can you help me?", "Of course. What do you need?"),
              ("Goodbye.", "Goodbye, and have a nice day!"))
_ONES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_SHOPPING = ("milk", "bread", "eggs", "apples", "rice", "cheese", "tea", "butter", "onions", "soap", "pasta", "oranges")
_NOUNS = ("teacher", "farmer", "child", "doctor", "neighbour", "driver", "painter", "student", "baker", "sailor",
          "river", "window", "road", "letter", "song", "train", "city", "lamp", "bridge", "door", "cloud", "field")
_VERBS = ("opened", "watched", "carried", "painted", "found", "followed", "cleaned", "fixed", "visited", "counted",
          "described", "remembered", "passed", "closed", "built", "explained")
_ADVERBS = ("slowly", "carefully", "quickly", "quietly", "again", "together", "at last", "without a word", "twice")
_PREPS = ("near", "behind", "across", "under", "beside", "inside", "along", "past", "towards")
_FUNC_NAMES = ("add", "total", "combine", "merge", "plus")
_VARS = ("x", "y", "n", "count", "value", "item", "total", "score", "size")


def _number_words(n: int) -> str:
    """0..999 in English words: ``_number_words(42) == "forty-two"``."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else "-" + _ONES[n % 10])
    rest = n % 100
    return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " and " + _number_words(rest))


def _fill(rng: random.Random, template: str) -> str:
    return template.format(adj=rng.choice(_ADJECTIVES), n=rng.randint(2, 30), place=rng.choice(_PLACES),
                           animal=rng.choice(_ANIMALS))


def _topic_paragraph(rng: random.Random) -> str:
    topic = rng.choice(sorted(_TOPICS))
    lines = rng.sample(_TOPICS[topic], k=rng.randint(2, 4))
    intro = rng.choice((f"A few words about {topic}.", f"{topic.capitalize()}:", f"Notes on {topic}.", ""))
    return " ".join(x for x in [intro, *(_fill(rng, t) for t in lines)] if x)


def _story(rng: random.Random) -> str:
    a, b = rng.sample(_NAMES, 2)
    place, obj, animal = rng.choice(_PLACES), rng.choice(_OBJECTS), rng.choice(_ANIMALS)
    feeling = rng.choice(_FEELINGS)
    parts = [f"{rng.choice(_TIMES)}, {a} walked to {place}.",
             rng.choice((f"The streets were {rng.choice(_ADJECTIVES)}.", f"A {animal} followed {a} for a while.", "")),
             f"There, {a} found {obj}.",
             rng.choice((f"{a} showed it to {b}, who laughed.", f"{b} asked where it came from.",
                         f"{a} did not know what to do with it.")),
             rng.choice((f"Together they looked for its owner until the sun went down.",
                         f"In the end, {a} gave it to {b} as a present.", f"{a} took it home and kept it safe.")),
             f"{a} felt {feeling}."]
    return " ".join(p for p in parts if p)


def _plain_sentences(rng: random.Random) -> str:
    """Freely combined subject-verb-object sentences: the corpus's main source of variety."""

    def np() -> str:
        return f"{rng.choice(('the', 'a', 'every', 'one', 'that'))} {rng.choice(_ADJECTIVES + ('',) * 8)} {rng.choice(_NOUNS)}"

    sentences = []
    for _ in range(rng.randint(2, 5)):
        form = rng.randrange(3)
        if form == 0:
            s = f"{np()} {rng.choice(_VERBS)} {np()} {rng.choice(_ADVERBS)}"
        elif form == 1:
            s = f"{np()} {rng.choice(_VERBS)} {np()} {rng.choice(_PREPS)} {np()}"
        else:
            s = f"{rng.choice(_NAMES)} {rng.choice(_VERBS)} {np()}, and then {np()} {rng.choice(_VERBS)} {np()}"
        s = " ".join(s.split())
        sentences.append(s[0].upper() + s[1:] + rng.choice((".", ".", ".", "!")))
    return " ".join(sentences)


def _definition(rng: random.Random) -> str:
    word = rng.choice(sorted(_DEFINITIONS))
    meaning = _DEFINITIONS[word]
    article = "An" if word[0] in "aeiou" else "A"
    form = rng.randrange(3)
    if form == 0:
        return f"{article} {word} is {meaning}."
    if form == 1:
        return f"{word.capitalize()}: {meaning}."
    return f'The word "{word}" means {meaning}. For example: "{rng.choice(_NAMES)} talked about the {word}."'


def _dialogue(rng: random.Random) -> str:
    form = rng.randrange(4)
    if form == 0:
        word = rng.choice(sorted(_DEFINITIONS))
        return f"User: What is a {word}?\nAssistant: A {word} is {_DEFINITIONS[word]}."
    if form == 1:
        task, steps = rng.choice(_REQUESTS)
        body = " ".join(f"{i}. {s}" for i, s in enumerate(steps, 1)) if rng.random() < 0.5 else " Then ".join(steps)
        return f"User: How do I {task}?\nAssistant: Here is a simple way. {body}"
    if form == 2:
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        return f"User: What is {a} plus {b}?\nAssistant: {a} plus {b} is {a + b}."
    hi, reply = rng.choice(_GREETINGS)
    return f"User: {hi}\nAssistant: {reply}"


def _arithmetic(rng: random.Random) -> str:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    form = rng.randrange(5)
    if form == 0:
        return f"{_number_words(a).capitalize()} plus {_number_words(b)} is {_number_words(a + b)}. In digits: {a} + {b} = {a + b}."
    if form == 1:
        hi, lo = max(a, b), min(a, b)
        return f"{hi} - {lo} = {hi - lo}. Take {lo} away from {hi} and {hi - lo} are left."
    if form == 2:
        x, y = a % 13, b % 13
        return f"{x} times {y} is {x * y}, so {x} × {y} = {x * y}."
    if form == 3:
        name, fruit = rng.choice(_NAMES), rng.choice(("apples", "pears", "eggs", "books", "coins"))
        hi, lo = max(a, b), min(a, b)
        return f"{name} has {hi} {fruit} and gives away {lo}. Now {name} has {hi - lo} {fruit}."
    start = rng.randint(1, 20)
    return "Counting: " + ", ".join(_number_words(i) for i in range(start, start + rng.randint(3, 8))) + "."


def _python_snippet(rng: random.Random) -> str:
    v = rng.sample(_VARS, 2)
    form = rng.randrange(4)
    if form == 0:
        return f"def {rng.choice(_FUNC_NAMES)}({v[0]}, {v[1]}):\n    return {v[0]} + {v[1]}\n"
    if form == 1:
        k = rng.randint(2, 9)
        return f"for {v[0]} in range({k}):\n    print({v[0]} * {v[0]})\n"
    if form == 2:
        items = rng.sample(_SHOPPING, 3)
        return f"{v[0]} = {items!r}\nprint(len({v[0]}))  # prints 3\n"
    return f"if {v[0]} > {rng.randint(0, 9)}:\n    {v[1]} = {v[0]} - 1\nelse:\n    {v[1]} = 0\n"


def _list_doc(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return "Shopping list:\n" + "\n".join(f"- {x}" for x in rng.sample(_SHOPPING, rng.randint(3, 6)))
    task, steps = rng.choice(_REQUESTS)
    return f"How to {task}:\n" + "\n".join(f"{i}. {s}" for i, s in enumerate(steps, 1))


_KINDS = ((_plain_sentences, 3), (_topic_paragraph, 3), (_story, 3), (_definition, 2), (_dialogue, 3), (_arithmetic, 2),
          (_python_snippet, 1), (_list_doc, 1))


def general_corpus(seed: int = 0, n_docs: int = 4000) -> list[str]:
    """``n_docs`` generated general-text documents (~500 characters each), deterministic in ``seed``.

    Each document strings together 2-5 pieces of mixed kinds (paragraphs, stories, definitions,
    dialogue, arithmetic, code, lists). The default size is ~1.5 MB of text.
    """
    rng = random.Random(seed)
    makers = [m for m, w in _KINDS for _ in range(w)]
    docs = []
    for _ in range(n_docs):
        pieces = [rng.choice(makers)(rng) for _ in range(rng.randint(2, 5))]
        docs.append("\n\n".join(pieces))
    return docs


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------


def build_demo_tokenizer(texts: list[str], vocab_size: int = 1024, model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts``: specials at ids 0..3, all 256 byte symbols, then merges.

    Same special ids and pre-tokenisation as ``tokenization.byte_tokenizer``; the byte alphabet is
    seeded into the trainer, so any UTF-8 text (code symbols, accents, emoji) encodes without ``<unk>``.
    No BOS/EOS is added automatically (also as ``byte_tokenizer``); callers add them.
    """
    specials = list(SPECIAL_TOKENS.values())  # <s>, </s>, <pad>, <unk> -> 0, 1, 2, 3
    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=model_max_length, **SPECIAL_TOKENS)
    fast.padding_side = "right"
    return fast


# ---------------------------------------------------------------------------------------------
# Pretraining and the shipped directory
# ---------------------------------------------------------------------------------------------


@dataclass
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
            raise ValueError(f"DemoBaseConfig.num_attention_heads must divide by num_key_value_heads")
        if self.vocab_size < 260:
            raise ValueError(f"DemoBaseConfig.vocab_size must hold 4 specials + 256 bytes, got {self.vocab_size}")
        if self.seq_len > self.max_position_embeddings:
            raise ValueError(f"DemoBaseConfig.seq_len={self.seq_len} exceeds max_position_embeddings")

    def llama_kwargs(self, tokenizer: PreTrainedTokenizerFast) -> dict:
        """``LlamaConfig`` kwargs; the vocabulary size and special ids come from the trained tokenizer."""
        return dict(vocab_size=len(tokenizer), hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
                    num_hidden_layers=self.num_hidden_layers, num_attention_heads=self.num_attention_heads,
                    num_key_value_heads=self.num_key_value_heads, max_position_embeddings=self.max_position_embeddings,
                    tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id)


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
    module = PretrainModule(config.llama_kwargs(tokenizer), lr=config.lr, warmup_steps=config.warmup_steps,
                            max_steps=config.max_steps, weight_decay=config.weight_decay,
                            min_lr_ratio=config.min_lr_ratio)
    random_init_heldout = lm_loss(module.model, heldout_rows)
    loader = DataLoader(PackedDataset(train_rows), batch_size=config.batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(config.seed))
    history = LossHistory()
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        max_steps=config.max_steps, gradient_clip_val=1.0, callbacks=[history],
                        enable_progress_bar=progress, enable_model_summary=False, deterministic=True)
    trainer.fit(module, train_dataloaders=loader)
    losses = history.losses
    tail = losses[-min(20, len(losses)):]
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


_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "brainstacks_demo.json")


def shipped_demo_base_path() -> Path:
    """Where the package ships the prebuilt base: ``brainstacks_pl/assets/demo_base``."""
    return Path(__file__).resolve().parent / "assets" / "demo_base"


def _is_complete(path: Path) -> bool:
    return all((path / name).is_file() for name in _REQUIRED_FILES)


def demo_base_path() -> Path:
    """The demo base directory: the shipped one, else a user cache built on first use.

    The cache is ``$BRAINSTACKS_CACHE/demo_base`` when that variable is set, else
    ``~/.cache/brainstacks_pl/demo_base``; building it takes a few minutes on a CPU.
    """
    shipped = shipped_demo_base_path()
    if _is_complete(shipped):
        return shipped
    cache_root = Path(os.environ.get("BRAINSTACKS_CACHE", Path.home() / ".cache" / "brainstacks_pl")).expanduser()
    cached = cache_root / "demo_base"
    if not _is_complete(cached):
        from lightning.pytorch.utilities import rank_zero_info

        rank_zero_info(f"{DEMO_BASE_NAME}: no shipped base found, pretraining one into {cached} (a few minutes)")
        try:
            pretrain_demo_base(cached)
        except OSError:  # another process finished the same build first and won the rename
            if not _is_complete(cached):
                raise
    return cached


def resolve_model_name(name: str) -> str:
    """Map ``DEMO_BASE_NAME`` to the local demo base directory; return any other name unchanged."""
    return str(demo_base_path()) if name == DEMO_BASE_NAME else name
