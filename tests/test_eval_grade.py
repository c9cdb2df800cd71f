"""``verl-agrae eval grade``: the extraction option reaches the grader, and the command ends cleanly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from verl_agrae.eval import cell as cell_mod
from verl_agrae.eval.shards import ensure_meta, shard_name, write_jsonl_atomic

ROOT = Path(__file__).resolve().parents[1]


def _make_cell(cell: Path, texts: list[str], truth: str) -> Path:
    problems = [{"index": 0, "uid": "p0", "ground_truth": truth, "data_source": "math"}]
    write_jsonl_atomic(cell / "problems.jsonl", problems)
    ensure_meta(cell / "samples", {"model": "m", "shard_size": 1, "num_problems": 1})
    recs = [
        {"index": 0, "uid": "p0", "sample": j, "text": t, "n_tokens": 5, "finish_reason": "stop"}
        for j, t in enumerate(texts)
    ]
    write_jsonl_atomic(cell / "samples" / shard_name(0, 1), recs)
    return cell


def test_grade_command_ends_without_a_traceback(tmp_path):
    # Every answer here is settled without a symbolic check, so the grading pool closes while its template process
    # is still importing math-verify; that process used to die on a BrokenPipeError and print its traceback.
    cell = _make_cell(tmp_path / "cell", [r"so \boxed{12}", r"\boxed{12.0}", "#### 12"], "12")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(
        [sys.executable, "-m", "verl_agrae.eval", "grade", str(cell), "--num-workers", "1", "--no-progress"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "graded 1 shard(s); 3 responses" in proc.stdout
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr
    assert cell_mod.load_cell_results(cell).correct == [[True, True, True]]


def test_extraction_mode_reaches_the_grader(tmp_path):
    texts = ["Adding the parts gives 7 + 5 = 12, so she has 12 marbles.", "Answer: 12", "The answer is 12."]
    recall = _make_cell(tmp_path / "recall", texts, "12")
    strict = _make_cell(tmp_path / "strict", texts, "12")
    assert cell_mod.grade_cell(recall, timeout=60, progress=False) == 1
    assert cell_mod.grade_cell(strict, timeout=60, progress=False, extraction="strict") == 1
    assert cell_mod.load_cell_results(recall).correct == [[True, True, True]]
    assert cell_mod.load_cell_results(strict).correct == [[False, True, False]]
    # Grades made in one mode are not silently mixed with the other's.
    with pytest.raises(ValueError, match="extraction"):
        cell_mod.grade_cell(recall, timeout=60, progress=False, extraction="strict")
    with pytest.raises(ValueError, match="extraction mode must be one of"):
        cell_mod.grade_cell(recall, timeout=60, progress=False, extraction="loose")
