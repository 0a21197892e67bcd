"""Stack files and the manifest: exact round trips, atomic writes, and loud refusals."""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import asdict

import pytest
import torch

from brainstacks_pl import StackConfig
from brainstacks_pl.storage import SCHEMA_VERSION, Manifest, StackFileError, StackRecord, load_tensors, save_tensors


def _tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "layers.0.q_proj.in_proj": torch.randn(72, 32, generator=gen).to(torch.bfloat16),
        "layers.0.q_proj.B": torch.randn(32, 64, generator=gen).to(torch.bfloat16),
        "basis": torch.randn(32, 4, generator=gen),
    }


def _manifest() -> Manifest:
    return Manifest(
        base_model_id="tiny-llama",
        layer_shapes={"layers.0.q_proj": [32, 32], "layers.0.up_proj": [32, 64]},
        stack_config=StackConfig().to_dict(),
        domains=["chat", "code"],
    )


def test_round_trip_is_bit_exact(tmp_path):
    tensors = _tensors()
    sha = save_tensors(tmp_path / "s.safetensors", tensors, metadata={"domain": "chat", "round": "1"})
    loaded, metadata = load_tensors(
        tmp_path / "s.safetensors", expected_sha256=sha, expected_shapes={k: tuple(v.shape) for k, v in tensors.items()}
    )
    assert metadata == {"domain": "chat", "round": "1"}
    assert loaded.keys() == tensors.keys()
    for key, value in tensors.items():
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value), key


def test_flipped_byte_fails_the_checksum(tmp_path):
    path = tmp_path / "s.safetensors"
    sha = save_tensors(path, _tensors())
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # inside the tensor data: still parses, so only the checksum can tell
    path.write_bytes(bytes(data))
    load_tensors(path)  # without the checksum the damage goes unnoticed ...
    with pytest.raises(StackFileError, match="sha256") as err:
        load_tensors(path, expected_sha256=sha)  # ... with it, it is refused
    assert str(path) in str(err.value)


def test_truncated_file_is_refused_naming_it(tmp_path):
    path = tmp_path / "s.safetensors"
    save_tensors(path, _tensors())
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(StackFileError, match="s.safetensors") as err:
        load_tensors(path)
    assert str(path) in str(err.value)


def test_wrong_shape_names_tensor_and_both_shapes(tmp_path):
    path = tmp_path / "s.safetensors"
    save_tensors(path, _tensors())
    with pytest.raises(
        StackFileError, match=r"'layers\.0\.q_proj\.B' has shape \(32, 64\), this model needs \(48, 64\)"
    ):
        load_tensors(path, expected_shapes={"layers.0.q_proj.B": (48, 64)})
    with pytest.raises(StackFileError, match="lacks 1 tensors"):
        load_tensors(path, expected_shapes={"layers.9.q_proj.B": (32, 64)})


@pytest.mark.parametrize("writer", ["torch.save", "torch.save legacy", "pickle.dumps"])
def test_pickles_are_refused(tmp_path, writer):
    path = tmp_path / "evil.safetensors"
    payload = {"B": torch.zeros(2, 2)}
    if writer == "torch.save":
        torch.save(payload, path)
    elif writer == "torch.save legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(StackFileError, match="pickle"):
        load_tensors(path)


def test_missing_file(tmp_path):
    with pytest.raises(StackFileError, match="missing"):
        load_tensors(tmp_path / "nope.safetensors")


def test_atomic_write_leaves_only_the_file(tmp_path):
    save_tensors(tmp_path / "s.safetensors", _tensors())
    save_tensors(tmp_path / "s.safetensors", _tensors())  # overwrite goes through the same rename
    assert sorted(os.listdir(tmp_path)) == ["s.safetensors"]


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "s.safetensors"
    sha = save_tensors(path, _tensors())
    old_bytes = path.read_bytes()

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        save_tensors(path, {"other": torch.ones(3)})
    assert path.read_bytes() == old_bytes
    assert sorted(os.listdir(tmp_path)) == ["s.safetensors"]
    monkeypatch.undo()
    load_tensors(path, expected_sha256=sha)


def test_manifest_round_trip(tmp_path):
    manifest = _manifest()
    manifest.stacks.append(
        StackRecord(file="stacks/chat_r0.safetensors", sha256="ab" * 32, domain="chat", round=0, val_losses=[2.5, 2.25])
    )
    manifest.completed_domains.append("chat")
    manifest.null_space["code"] = {"file": "null_space/code.safetensors", "sha256": "cd" * 32}
    assert not Manifest.exists(tmp_path)
    manifest.save(tmp_path)
    assert Manifest.exists(tmp_path)
    loaded = Manifest.load(tmp_path)
    assert loaded == manifest
    assert isinstance(loaded.stacks[0], StackRecord)
    assert StackConfig.from_dict(loaded.stack_config) == StackConfig()
    assert loaded.stack_shapes()["layers.0.up_proj.B"] == (64, 64)
    assert loaded.stack_shapes()["layers.0.up_proj.in_proj"] == (4 * 16 + 8, 32)


def test_manifest_missing_or_malformed(tmp_path):
    with pytest.raises(StackFileError, match="no manifest"):
        Manifest.load(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(StackFileError, match="not valid JSON"):
        Manifest.load(tmp_path)
    raw = asdict(_manifest())
    raw["schema_version"] = SCHEMA_VERSION + 1
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(StackFileError, match="schema_version"):
        Manifest.load(tmp_path)
    raw["schema_version"] = SCHEMA_VERSION
    raw["unexpected_field"] = 1
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(StackFileError, match="malformed"):
        Manifest.load(tmp_path)
    (tmp_path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(StackFileError, match="schema_version"):
        Manifest.load(tmp_path)


def test_check_compatible_refuses_other_models_and_configs():
    manifest = _manifest()
    manifest.completed_domains = ["chat"]
    config = StackConfig().to_dict()
    manifest.check_compatible(manifest.layer_shapes, config, ["chat", "code"], where="run")  # same run: fine
    with pytest.raises(StackFileError, match="different base model"):
        manifest.check_compatible(
            {"layers.0.q_proj": [32, 32], "layers.0.up_proj": [32, 96]}, config, ["chat", "code"], where="run"
        )
    with pytest.raises(StackFileError, match="different base model"):
        manifest.check_compatible({"layers.0.q_proj": [32, 32]}, config, ["chat", "code"], where="run")
    with pytest.raises(StackFileError, match="StackConfig.rank=16"):
        manifest.check_compatible(manifest.layer_shapes, StackConfig(rank=8).to_dict(), ["chat", "code"], where="run")
    with pytest.raises(StackFileError, match="target_modules"):
        manifest.check_compatible(
            manifest.layer_shapes, StackConfig(target_modules=["q_proj"]).to_dict(), ["chat", "code"], where="run"
        )
    with pytest.raises(StackFileError, match="curriculum"):
        manifest.check_compatible(manifest.layer_shapes, config, ["code", "chat"], where="run")


def test_the_manifest_file_name_is_written_once():
    """Code that opens, names or reports the manifest uses ``MANIFEST_NAME``; the literal lives in
    ``storage/manifest.py`` alone (docstrings and help text may mention the file)."""
    import ast
    from pathlib import Path

    from brainstacks_pl.storage import MANIFEST_NAME

    repo = Path(__file__).resolve().parents[1]
    spelled = set()
    for path in [*(repo / "brainstacks_pl").rglob("*.py"), *(repo / "benchmarks").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            # a path literal, or the name inside an f-string (an error message naming the file)
            exact = isinstance(node, ast.Constant) and node.value == MANIFEST_NAME
            pieces = node.values if isinstance(node, ast.JoinedStr) else []
            inside = any(isinstance(p, ast.Constant) and MANIFEST_NAME in p.value for p in pieces)
            if exact or inside:
                spelled.add(path.relative_to(repo).as_posix())
    assert spelled == {"brainstacks_pl/storage/manifest.py"}, spelled


def test_the_manifest_records_a_valid_prompt_template(tmp_path):
    from brainstacks_pl.config import StackConfig
    from brainstacks_pl.errors import StackFileError
    from brainstacks_pl.storage import Manifest

    manifest = Manifest("b", {}, StackConfig().to_dict(), ["a"], prompt_template="chat")
    manifest.save(tmp_path)
    assert Manifest.load(tmp_path).prompt_template == "chat"
    raw = json.loads((tmp_path / "manifest.json").read_text())
    raw.pop("prompt_template")  # a run from before the field: trained with the plain default
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    assert Manifest.load(tmp_path).prompt_template.startswith("### Prompt:")
    raw["prompt_template"] = "no placeholder"
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(StackFileError, match="prompt_template"):
        Manifest.load(tmp_path)
