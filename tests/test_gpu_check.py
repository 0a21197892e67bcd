"""The prepared GPU check runs on the CPU too (FSDP2 case, one process), so it cannot rot between GPU loans."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_cpu_path_records_throughput_and_memory(tmp_path, capsys):
    out = tmp_path / "check.json"
    load_gpu_check().main(
        [
            "--shape",
            "tiny",
            "--accelerator",
            "cpu",
            "--steps",
            "4",
            "--rounds",
            "1",
            "--seq_len",
            "96",
            "--batch_size",
            "2",
            "--cases",
            "fsdp_dense",
            "--out",
            str(out),
        ]
    )
    results = json.loads(out.read_text())
    by_case = {case["case"]: case for case in results["cases"]}
    assert list(by_case) == ["fsdp_dense"]
    assert by_case["fsdp_dense"]["status"] == "ok", by_case["fsdp_dense"].get("stderr_tail")
    rounds = by_case["fsdp_dense"]["rounds"]
    assert [r["stack"] for r in rounds] == ["chat/stack0"]
    for record in rounds:
        assert record["measured_steps"] == 2  # 4 steps minus 2 warm-up steps
        assert record["tokens"] > 0 and math.isfinite(record["tokens_per_s"]) and record["tokens_per_s"] > 0
        assert record["peak_memory_gib"] > 0
    assert "fsdp_dense" in capsys.readouterr().out
