"""CurriculumDataModule: masking, packing, the split, decontamination, demo data and errors."""

from __future__ import annotations

import json
import logging
import random

import pytest
import torch

from brainstacks_pl.data import CurriculumDataModule, DomainConfig, EpochShuffleSampler, Example, demo_domains
from brainstacks_pl.data.decontaminate import drop_overlapping, remove_duplicates, split_hash, split_train_val
from brainstacks_pl.data.formats import format_prompt

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike oscar papa".split()


def qa_rows(tag: str, n: int, seed: int = 0) -> list[dict]:
    r = random.Random(f"{tag}{seed}")
    return [
        {
            "prompt": f"{tag} question {i}: {' '.join(r.sample(WORDS, 3))}?",
            "completion": f"{tag} answer {i} is {r.randint(0, 999)}.",
        }
        for i in range(n)
    ]


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def make_dm(tmp_path, tokenizer, domains: dict[str, list[dict]], **kwargs) -> CurriculumDataModule:
    configs = [DomainConfig(n, write_jsonl(tmp_path / f"{n}.jsonl", rows)) for n, rows in domains.items()]
    kwargs = {"max_seq_len": 128, "batch_size": 4, "val_fraction": 0.2, **kwargs}
    dm = CurriculumDataModule(configs, **kwargs)
    dm.set_tokenizer(tokenizer)
    return dm


# --------------------------------------------------------------------------- masking and packing


def test_labels_mask_prompt_and_padding(tmp_path, tokenizer):
    dm = make_dm(tmp_path, tokenizer, {"a": qa_rows("a", 24)}, pack=False, max_seq_len=128)
    dm.setup()
    rows = [b for batch in dm.text_dataloader("a", "train", batch_size=5) for b in zip(*batch.values())]
    examples = dm.examples("a", "train")
    assert len(rows) == len(examples) > 0
    for (ids, mask, labels), ex in zip(rows, examples):
        n = int(mask.sum())
        assert mask[:n].all() and not mask[n:].any() and (labels[n:] == -100).all()
        supervised = labels[labels != -100]
        assert tokenizer.decode(supervised) == ex.response + tokenizer.eos_token
        assert ids[0] == tokenizer.bos_token_id
        assert tokenizer.decode(ids[:n][labels[:n] == -100]) == tokenizer.bos_token + format_prompt(ex.prompt)


def test_packing_rows_are_full_and_keep_the_masking(tmp_path, tokenizer):
    dm = make_dm(tmp_path, tokenizer, {"a": qa_rows("a", 40)}, pack=True, max_seq_len=100, batch_size=3)
    dm.setup()
    batches = list(dm.train_dataloader())
    ids = torch.cat([b["input_ids"] for b in batches])
    labels = torch.cat([b["labels"] for b in batches])
    mask = torch.cat([b["attention_mask"] for b in batches])
    assert ids.shape[1] == 100 and labels.shape == ids.shape == mask.shape
    n_real = int(mask.sum())
    expected_tokens = sum(
        1 + len(format_prompt(ex.prompt).encode()) + len(ex.response.encode()) + 1 for ex in dm.examples("a", "train")
    )
    assert n_real == expected_tokens and ids.numel() - n_real < 100  # only the last row has a padded tail
    assert (labels[mask == 0] == -100).all()
    n_supervised = int((labels != -100).sum())
    assert n_supervised == sum(len(ex.response.encode()) + 1 for ex in dm.examples("a", "train"))
    assert (labels[labels != -100] == ids[labels != -100]).all()


def test_validation_is_never_packed(tmp_path, tokenizer):
    dm = make_dm(tmp_path, tokenizer, {"a": qa_rows("a", 40)}, pack=True, val_fraction=0.3)
    batch = next(iter(dm.val_dataloader()))
    first_val = dm.examples("a", "val")[0]
    n = int(batch["attention_mask"][0].sum())
    assert tokenizer.decode(batch["input_ids"][0, :n]) == (
        tokenizer.bos_token + format_prompt(first_val.prompt) + first_val.response + tokenizer.eos_token
    )


def test_truncation_keeps_length_and_is_counted(tmp_path, tokenizer, caplog):
    rows = [{"prompt": "long " * 40 + f"end {i}", "completion": f"short {i}"} for i in range(10)]
    dm = make_dm(tmp_path, tokenizer, {"a": rows}, pack=False, max_seq_len=32, val_fraction=0.3)
    with caplog.at_level(logging.WARNING, logger="brainstacks_pl.data.curriculum"):
        dm.setup()
    assert dm.decontamination_report["a"]["truncated"] == 10
    assert "truncated 10 examples" in caplog.text
    for batch in dm.text_dataloader("a", "train"):
        assert batch["input_ids"].shape[1] <= 32
        for labels in batch["labels"]:
            assert tokenizer.decode(labels[labels != -100]).startswith("short")


# --------------------------------------------------------------------------- split


def test_split_is_stable_when_examples_are_added_or_reordered():
    base = [Example(f"prompt number {i}", f"r{i}", "d") for i in range(200)]
    extra = [Example(f"another prompt {i}", f"x{i}", "d") for i in range(300)]
    train1, val1 = split_train_val(base, 0.2, seed=3)
    mixed = base + extra
    random.Random(0).shuffle(mixed)
    train2, val2 = split_train_val(mixed, 0.2, seed=3)
    val2_prompts = {ex.prompt for ex in val2}
    assert {ex.prompt for ex in val1} <= val2_prompts
    assert not {ex.prompt for ex in train1} & val2_prompts
    assert 20 < len(val1) < 60  # roughly val_fraction
    assert split_train_val(base, 0.2, seed=4)[1] != val1  # the seed matters


def test_no_prompt_in_both_splits(tmp_path, tokenizer):
    rows = [{"prompt": f"Same prompt {i % 15}", "completion": f"answer {i}"} for i in range(90)]
    dm = make_dm(tmp_path, tokenizer, {"a": rows}, val_fraction=0.3)
    dm.setup()
    train = {ex.prompt for ex in dm.examples("a", "train")}
    val = {ex.prompt for ex in dm.examples("a", "val")}
    assert train and val and not train & val
    hashes = [split_hash(ex.prompt) for ex in dm.examples("a", "val")]
    assert hashes == sorted(hashes)  # validation order is deterministic (hash order)


def test_val_loader_is_capped_prefix_of_examples(tmp_path, tokenizer):
    dm = make_dm(tmp_path, tokenizer, {"a": qa_rows("a", 80)}, val_fraction=0.5, max_val_examples=7, eval_batch_size=3)
    dm.setup()
    loader = dm.val_dataloader_for("a")
    assert len(loader.dataset) == 7 and len(dm.examples("a", "val")) > 7
    assert len(dm.text_dataloader("a", "val").dataset) == len(dm.examples("a", "val"))
    again = [b["input_ids"].tolist() for b in dm.val_dataloader_for("a")]
    assert again == [b["input_ids"].tolist() for b in loader]


# --------------------------------------------------------------------------- decontamination


def test_cross_domain_duplicates_are_dropped_from_later_domain(tmp_path, tokenizer, caplog):
    a, b = qa_rows("a", 30), qa_rows("b", 30)
    planted = [{"prompt": r["prompt"].upper() + "  ", "completion": r["completion"] + "!"} for r in a[:4]]
    dm = make_dm(tmp_path, tokenizer, {"a": a, "b": b + planted + [b[0]]})
    with caplog.at_level(logging.INFO):
        dm.setup()
    report = dm.decontamination_report
    assert report["a"]["dropped_cross_domain"] == 0 and report["a"]["kept"] == 30
    assert report["b"]["loaded"] == 35
    assert report["b"]["dropped_cross_domain"] == 4 and report["b"]["dropped_duplicate"] == 1
    assert report["b"]["kept"] == report["b"]["train"] + report["b"]["val"] == 30
    assert "data 'b': 35 rows loaded, 5 dropped (duplicate 1, cross_domain 4), 27 train / 3 val" in caplog.text


def test_a_domain_losing_more_than_a_fifth_of_its_rows_warns(tmp_path, tokenizer):
    a = qa_rows("a", 30)
    copies = [{"prompt": r["prompt"], "completion": r["completion"]} for r in a[:12]]
    dm = make_dm(tmp_path, tokenizer, {"a": a, "b": copies + qa_rows("b", 20)})
    with pytest.warns(
        UserWarning, match=r"data 'b': 32 rows loaded, 12 dropped \(cross_domain 12\).*38% of the domain's rows dropped"
    ):
        dm.setup()


def test_decontaminate_off_keeps_everything(tmp_path, tokenizer):
    a = qa_rows("a", 30)
    dm = make_dm(tmp_path, tokenizer, {"a": a, "b": qa_rows("b", 30) + a[:4]}, decontaminate="off")
    dm.setup()
    assert dm.decontamination_report["b"]["kept"] == 34


def test_reassign_keeps_shared_example_in_best_matching_domain():
    math = [Example(f"what is {i} plus {i + 1}", f"{2 * i + 1}", "math") for i in range(20)]
    med = [Example(f"patient dose {i} mg per kg", f"give {i} mg", "medical") for i in range(20)]
    shared = Example("patient weighs 10 kg dose 5 mg per kg", "50 mg", "")
    kept, counts = remove_duplicates({"math": math + [shared], "medical": med + [shared]}, mode="reassign")
    assert shared not in kept["math"] and shared in kept["medical"]
    assert counts["math"]["dropped_cross_domain"] == 1 and counts["medical"]["reassigned"] == 1
    kept, counts = remove_duplicates({"math": math + [shared], "medical": med + [shared]}, mode="drop")
    assert shared in kept["math"] and counts["medical"]["dropped_cross_domain"] == 1


def test_ngram_overlap_with_other_domains_validation():
    long_val = Example("the quick brown fox jumps over the lazy dog near the river bank today", "ok", "a")
    short_val = Example("tiny", "text", "a")
    train = {
        "a": [Example(long_val.prompt, "same domain is fine", "a")],
        "b": [
            # shares a 13-gram:
            Example("intro: The quick brown fox jumps over the lazy dog near the river bank", "x", "b"),
            Example("quick brown fox jumps over the lazy dog", "different ending", "b"),  # 8 words only
            Example("a tiny text here", "y", "b"),  # contains the whole short validation text
            Example("unrelated", "z", "b"),
        ],
    }
    kept, dropped = drop_overlapping(train, {"a": [long_val, short_val], "b": []})
    assert dropped == {"a": 0, "b": 2}
    assert [ex.response for ex in kept["b"]] == ["different ending", "z"]


# --------------------------------------------------------------------------- demo data and paths


def test_demo_domains_load_and_planted_duplicates_are_found(tokenizer):
    dm = CurriculumDataModule(demo_domains(), max_seq_len=256)
    dm.set_tokenizer(tokenizer)
    dm.setup()
    assert dm.domain_names == ["chat", "code", "math", "medical", "reasoning"]
    report = dm.decontamination_report
    assert report["medical"]["dropped_cross_domain"] == 5 and report["reasoning"]["dropped_cross_domain"] == 3
    for name in dm.domain_names:
        counts = report[name]
        assert counts["loaded"] >= 390 and counts["train"] > 250 and counts["val"] > 15, counts
        assert report[name]["dropped_invalid"] == 0
    chat_text = " ".join(ex.prompt + ex.response for ex in dm.examples("chat", "train"))
    for marker in ("<|im_start|>", "<start_of_turn>", "[INST]", "<|eot_id|>", "</s>"):
        assert marker not in chat_text
    assert all(ex.response.split("\n")[-1].startswith("#### ") for ex in dm.examples("math", "val"))
    dm.set_domain("code")
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (8, 256)


def test_directory_glob_and_parquet_paths(tmp_path, tokenizer, monkeypatch):
    import datasets

    folder = tmp_path / "qa"
    folder.mkdir()
    for part in range(2):
        datasets.Dataset.from_list(qa_rows(f"p{part}", 15)).to_parquet(str(folder / f"part{part}.parquet"))
    write_jsonl(tmp_path / "g1.jsonl", qa_rows("g", 20))
    monkeypatch.chdir(tmp_path)  # relative paths resolve against the current directory
    dm = CurriculumDataModule(
        [DomainConfig("dir", "qa"), DomainConfig("glob", "g*.jsonl", max_examples=12)], val_fraction=0.2
    )
    dm.set_tokenizer(tokenizer)
    dm.setup()
    assert dm.decontamination_report["dir"]["loaded"] == 30
    assert dm.decontamination_report["glob"]["loaded"] == 12


def test_column_mapping_through_the_datamodule(tmp_path, tokenizer):
    rows = [{"query": r["prompt"], "reply": r["completion"], "id": i} for i, r in enumerate(qa_rows("m", 20))]
    path = write_jsonl(tmp_path / "m.jsonl", rows)
    cfg = DomainConfig("m", path, columns={"prompt": "query", "response": "reply"})
    dm = CurriculumDataModule([cfg], val_fraction=0.2)
    dm.set_tokenizer(tokenizer)
    assert all(ex.prompt.startswith("m question") for ex in dm.examples("m", "train"))


# --------------------------------------------------------------------------- domains, state, sampler


def test_set_domain_state_dict_and_unknown_domain(tmp_path, tokenizer):
    dm = make_dm(tmp_path, tokenizer, {"a": qa_rows("a", 20), "b": qa_rows("b", 20)})
    assert dm.current_domain == "a"
    dm.set_domain("b")
    state = dm.state_dict()
    fresh = make_dm(tmp_path, tokenizer, {"a": qa_rows("a", 20), "b": qa_rows("b", 20)})
    fresh.load_state_dict(state)
    assert fresh.current_domain == "b"
    with pytest.raises(KeyError, match=r"unknown domain 'c'; the curriculum has \['a', 'b'\]"):
        dm.set_domain("c")
    with pytest.raises(KeyError, match="unknown domain 'zzz'"):
        dm.val_dataloader_for("zzz")


def test_sampler_is_deterministic_per_epoch(tmp_path, tokenizer):
    sampler = EpochShuffleSampler(50, seed=7)
    first = list(sampler)
    assert sorted(first) == list(range(50)) and first == list(EpochShuffleSampler(50, seed=7))
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first
    sampler.set_epoch(0)
    assert list(sampler) == first
    dm = make_dm(tmp_path, tokenizer, {"a": qa_rows("a", 40)}, pack=False)
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, EpochShuffleSampler) and hasattr(loader.sampler, "set_epoch")
    order = [b["input_ids"].tolist() for b in loader]
    assert order == [b["input_ids"].tolist() for b in dm.train_dataloader()]


# --------------------------------------------------------------------------- bad input


def _setup(configs, tokenizer, **kwargs):
    dm = CurriculumDataModule(configs, **kwargs)
    dm.set_tokenizer(tokenizer)
    dm.setup()
    return dm


def test_missing_path_names_domain_and_path(tmp_path, tokenizer):
    with pytest.raises(FileNotFoundError, match=r"domain 'gone'.*nope\.jsonl"):
        _setup([DomainConfig("gone", str(tmp_path / "nope.jsonl"))], tokenizer)
    with pytest.raises(FileNotFoundError, match=r"domain 'd'.*no bundled demo data 'demo:nope'"):
        _setup([DomainConfig("d", "demo:nope")], tokenizer)


def test_empty_domain(tmp_path, tokenizer):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match=r"domain 'e': no examples in .*empty\.jsonl"):
        _setup([DomainConfig("e", str(tmp_path / "empty.jsonl"))], tokenizer)


def test_empty_after_decontamination(tmp_path, tokenizer):
    a = qa_rows("a", 20)
    with pytest.raises(ValueError, match="domain 'b': no training examples left after decontamination"):
        _setup(
            [
                DomainConfig("a", write_jsonl(tmp_path / "a.jsonl", a)),
                DomainConfig("b", write_jsonl(tmp_path / "b.jsonl", a[:5])),
            ],
            tokenizer,
        )


def test_missing_columns_name_domain_column_and_found(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "x.jsonl", [{"q": "a", "r": "b"}])
    with pytest.raises(ValueError, match=r"domain 'x'.*column 'question'.*columns found: \['q', 'r'\]"):
        _setup([DomainConfig("x", path, format="question_answer")], tokenizer)
    with pytest.raises(ValueError, match=r"domain 'x'.*'missing'.*columns found: \['q', 'r'\]"):
        _setup([DomainConfig("x", path, columns={"prompt": "missing", "response": "r"})], tokenizer)
    with pytest.raises(ValueError, match=r"domain 'x'.*cannot detect the format"):
        _setup([DomainConfig("x", path)], tokenizer)


def test_unknown_format_and_duplicate_names():
    with pytest.raises(ValueError, match=r"domain 'x': unknown format 'yaml'"):
        DomainConfig("x", "demo:chat", format="yaml")
    with pytest.raises(ValueError, match=r"duplicate domain names: \['chat'\]"):
        CurriculumDataModule([DomainConfig("chat", "demo:chat"), DomainConfig("chat", "demo:code")])
    with pytest.raises(ValueError, match="decontaminate must be one of"):
        CurriculumDataModule(demo_domains(), decontaminate="maybe")


def test_non_utf8_file_is_named(tmp_path, tokenizer):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"prompt": "caf\xe9", "completion": "ok"}\n')
    with pytest.raises(ValueError, match=r"domain 'l': file .*latin1\.jsonl is not valid UTF-8 \(byte 15"):
        _setup([DomainConfig("l", str(path))], tokenizer)


def test_tokenizer_loads_lazily_from_a_local_path(tmp_path, tokenizer):
    tokenizer.save_pretrained(tmp_path / "tok")
    path = write_jsonl(tmp_path / "a.jsonl", qa_rows("a", 20))
    dm = CurriculumDataModule([DomainConfig("a", path)], tokenizer=str(tmp_path / "tok"), val_fraction=0.2)
    assert dm._tokenizer is None  # nothing loaded at construction (the CLI builds it from YAML)
    batch = next(iter(dm.val_dataloader()))
    assert dm.tokenizer.eos_token_id == tokenizer.eos_token_id and batch["input_ids"][0, 0] == tokenizer.bos_token_id
    with pytest.raises(ValueError, match="no tokenizer"):
        CurriculumDataModule([DomainConfig("a", path)]).setup()
