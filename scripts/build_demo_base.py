"""Rebuild the shipped demo base: ``python scripts/build_demo_base.py [--out DIR]``.

Generates the general corpus, trains the byte-level BPE tokenizer, pretrains the tiny Llama
with a plain causal-LM phase on CPU and writes a ``save_pretrained`` directory (default:
``brainstacks_pl/assets/demo_base``, the copy the package ships). See ``docs/demo_base.md``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from brainstacks_pl.assets import shipped_demo_base_path
from brainstacks_pl.demo_base import DemoBaseConfig, pretrain_demo_base


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=shipped_demo_base_path(), help="output directory (replaced atomically)"
    )
    parser.add_argument("--max-steps", type=int, default=None, help="override DemoBaseConfig.max_steps")
    parser.add_argument("--threads", type=int, default=None, help="override DemoBaseConfig.num_threads (default 1)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    overrides = {"max_steps": args.max_steps, "num_threads": args.threads}
    config = replace(DemoBaseConfig(), **{k: v for k, v in overrides.items() if v is not None})
    out = pretrain_demo_base(args.out, config, progress=not args.no_progress)
    report = json.loads((out / "brainstacks_demo.json").read_text())
    keys = ("initial_loss", "final_loss", "heldout_loss", "random_init_heldout_loss", "build_seconds")
    print(f"wrote {out}: " + ", ".join(f"{k}={report[k]:.4g}" for k in keys))
    return out


if __name__ == "__main__":
    main()
