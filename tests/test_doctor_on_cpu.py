"""`verl-agrae doctor` on a local CPU Ray cluster, and its mismatch rules."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from verl_agrae.doctor import EXPECTED_ESTIMATOR, find_problems


def _doctor(tmp_path: Path, **env) -> tuple[subprocess.CompletedProcess, str]:
    exe = shutil.which("verl-agrae", path=str(Path(sys.executable).parent))
    assert exe, "the verl-agrae console script is not installed next to this Python"
    report = tmp_path / "doctor.json"
    proc = subprocess.run(
        [exe, "doctor", "--address", "local", "--json", str(report)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **env},
    )
    return proc, report.read_text() if report.exists() else ""


@pytest.mark.parametrize("plugins", ["auto", "none"])
def test_doctor_on_local_cluster(tmp_path, plugins):
    proc, report = _doctor(tmp_path, VERL_USE_EXTERNAL_PLUGINS=plugins)
    if plugins == "auto":
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "'agrae' registered everywhere" in proc.stdout
        assert EXPECTED_ESTIMATOR in report
    else:
        assert proc.returncode == 1
        assert "VERL_USE_EXTERNAL_PLUGINS=none" in proc.stderr
        assert "FAILED" in proc.stderr


def _rep(node="10.0.0.1", **kw):
    base = {
        "node": node,
        "python": "3.11.7",
        "torch": "2.13.0",
        "verl": "0.9.1",
        "vllm": None,
        "ray": "2.60.0",
        "verl_agrae": "0.1.0",
        "transformers": "5.10.4",
        "agrae": EXPECTED_ESTIMATOR,
    }
    return {**base, **kw}


def test_find_problems_flags_mismatches_and_missing_plugin():
    driver = _rep("driver")
    assert find_problems(driver, [_rep(), _rep("10.0.0.2")]) == []
    problems = find_problems(driver, [_rep(), _rep("10.0.0.2", verl="0.9.0")])
    assert len(problems) == 1 and "verl versions differ" in problems[0] and "10.0.0.2=0.9.0" in problems[0]
    problems = find_problems(driver, [_rep(), _rep("10.0.0.2", agrae=None, error="No module named 'verl_agrae'")])
    assert any("10.0.0.2" in p and "No module named" in p for p in problems)
    assert find_problems(driver, []) == ["the Ray cluster has no alive node"]
