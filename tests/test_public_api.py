"""The public names DESIGN.md promises, and the command line entry point."""

from __future__ import annotations

import subprocess
import sys

import pytest

import brainstacks_pl

PUBLIC = [
    "MoELoRA",
    "StackedLinear",
    "StackConfig",
    "BrainstacksModel",
    "StackSFTModule",
    "RouterModule",
    "DPOModule",
    "GRPOModule",
    "BestStackCallback",
    "ResidualBoosting",
    "NullSpaceProjection",
    "ForgettingMatrix",
    "ThroughputRecorder",
    "CurriculumDataModule",
    "MetaRouter",
    "RoutedGenerator",
    "cli_main",
]


@pytest.mark.parametrize("name", PUBLIC)
def test_public_name_is_importable(name):
    assert getattr(brainstacks_pl, name).__name__ == name


def test_unknown_attribute_raises():
    with pytest.raises(AttributeError, match="no_such_thing"):
        _ = brainstacks_pl.no_such_thing


def test_command_line_help():
    done = subprocess.run(
        [sys.executable, "-m", "brainstacks_pl", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "fit" in done.stdout
