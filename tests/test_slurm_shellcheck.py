"""Every shell script of slurm/, examples/, scripts/ and the test stubs is shellcheck-clean (all severities)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _shell_scripts() -> list[Path]:
    files = [*ROOT.glob("slurm/**/*.sh"), *ROOT.glob("slurm/*.sbatch"), *ROOT.glob("examples/**/*.sh")]
    files += [*ROOT.glob("scripts/*.sh")]
    files += [p for p in (ROOT / "tests" / "stubs").iterdir() if p.is_file()]
    return sorted(set(files))


def test_scripts_exist_and_are_bash():
    scripts = _shell_scripts()
    names = {p.relative_to(ROOT).as_posix() for p in scripts}
    assert {"slurm/lib/ray_cluster.sh", "slurm/train.sbatch", "slurm/eval_sweep.sbatch", "tests/stubs/ray"} <= names
    for p in scripts:
        head = p.read_text().splitlines()[0]
        assert head in ("#!/usr/bin/env bash", "# shellcheck shell=bash"), f"{p}: {head}"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (CI installs it)")
def test_shellcheck_clean():
    scripts = [str(p) for p in _shell_scripts()]
    res = subprocess.run(
        ["shellcheck", "--external-sources", "--severity=style", *scripts], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stdout + res.stderr
