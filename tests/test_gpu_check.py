"""The prepared GPU check runs its DDP and NF4 cases on the CPU, so it cannot rot between GPU loans."""

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


def test_gpu_check_cpu_path_records_throughput_per_round(tmp_path, capsys):
    out = tmp_path / "check.json"
    load_gpu_check().main([
        "--shape", "tiny", "--accelerator", "cpu", "--steps", "4", "--rounds", "2", "--seq_len", "96",
        "--batch_size", "2", "--cases", "ddp_nf4", "fsdp_nf4", "--out", str(out),
    ])
    results = json.loads(out.read_text())
    by_case = {case["case"]: case for case in results["cases"]}
    assert by_case["ddp_nf4"]["status"] == "ok", by_case["ddp_nf4"].get("stderr_tail")
    rounds = by_case["ddp_nf4"]["rounds"]
    assert [r["stack"] for r in rounds] == ["chat/stack0", "chat/stack1"]
    for record in rounds:
        assert record["measured_steps"] == 2  # 4 steps minus 2 warm-up steps
        assert record["tokens"] > 0 and math.isfinite(record["tokens_per_s"]) and record["tokens_per_s"] > 0
        assert record["peak_memory_gib"] > 0
    assert by_case["fsdp_nf4"] == {"case": "fsdp_nf4", "status": "skipped", "reason": "torch FSDP needs a CUDA device"}
    assert "ddp_nf4" in capsys.readouterr().out
