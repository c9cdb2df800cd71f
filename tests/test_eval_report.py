"""Report files, plots and paired comparisons from hand-built graded cells (no model needed)."""

from __future__ import annotations

import json
from fractions import Fraction
from math import comb

import numpy as np
import pandas as pd
import pytest

from verl_agrae.eval.cell import load_cell_results
from verl_agrae.eval.report import CellRef, write_report
from verl_agrae.eval.shards import ensure_meta, shard_name, shard_ranges, write_jsonl_atomic


def make_graded_cell(cell_dir, correct_counts, n, *, shard_size=3, answer_of_wrong="0"):
    """A graded cell whose problem i has correct_counts[i] correct samples out of n."""
    problems = [
        {"index": i, "uid": f"q{i}", "ground_truth": str(i + 100), "data_source": "arithmetic"}
        for i in range(len(correct_counts))
    ]
    write_jsonl_atomic(cell_dir / "problems.jsonl", problems)
    ensure_meta(cell_dir / "samples", {"model": "x", "shard_size": shard_size, "num_problems": len(problems)})
    for start, end in shard_ranges(len(problems), shard_size):
        recs = []
        for i in range(start, end):
            for s in range(n):
                ok = s < correct_counts[i]
                recs.append(
                    {
                        "index": i,
                        "uid": f"q{i}",
                        "sample": s,
                        "acc": ok,
                        "score": float(ok),
                        "pred": str(i + 100) if ok else answer_of_wrong,
                        "timeout": False,
                        "n_tokens": 10,
                        "finish_reason": "stop",
                    }
                )
        write_jsonl_atomic(cell_dir / "samples" / shard_name(start, end), [{"index": start}])
        write_jsonl_atomic(cell_dir / "graded" / shard_name(start, end), recs)


def exact_mean_pass(counts, n, k):
    return float(sum(1 - Fraction(comb(n - c, k), comb(n, k)) for c in counts) / len(counts))


def test_report_tables_plot_and_json(tmp_path):
    n = 8
    counts_a = [0, 1, 3, 8, 2, 0, 5]
    counts_b = [0, 0, 1, 8, 1, 0, 4]
    make_graded_cell(tmp_path / "a", counts_a, n)
    make_graded_cell(tmp_path / "b", counts_b, n)
    cells = [CellRef("runA", "bench", "s", str(tmp_path / "a")), CellRef("runB", "bench", "s", str(tmp_path / "b"))]
    summary = write_report(cells, tmp_path / "report", num_boot=500, compare=[("runA", "runB")], num_perm=2000)
    rep = tmp_path / "report"
    for name in ("summary.md", "passk.csv", "comparisons.csv", "summary.json", "passk_bench__s.png"):
        assert (rep / name).is_file(), name
    assert (rep / "per_problem" / "runA__bench__s.csv").is_file()

    table = pd.read_csv(rep / "passk.csv")
    for run, counts in (("runA", counts_a), ("runB", counts_b)):
        rows = table[(table.run == run) & (table.metric == "pass@k")]
        assert sorted(rows.k) == [1, 2, 4, 8]
        for _, row in rows.iterrows():
            assert row.value == pytest.approx(exact_mean_pass(counts, n, int(row.k)), rel=1e-5)
            assert row.ci_low <= row.value <= row.ci_high
    per = pd.read_csv(rep / "per_problem" / "runA__bench__s.csv")
    np.testing.assert_array_equal(per.c, counts_a)
    assert per["maj@8"].tolist() == [1.0 if 2 * c > n else 0.5 if 2 * c == n else 0.0 for c in counts_a]

    md = (rep / "summary.md").read_text()
    assert "| runA | 7 |" in md and "Pass@8" in md and "![Pass@k bench s](passk_bench__s.png)" in md
    comp = pd.read_csv(rep / "comparisons.csv")
    k1 = comp[comp.k == 1].iloc[0]
    assert k1.wins == 4 and k1.losses == 0 and k1.ties == 3
    assert k1["diff"] == pytest.approx(np.mean(np.array(counts_a) - np.array(counts_b)) / n)
    assert json.loads((rep / "summary.json").read_text())["cells"]["runA__bench__s"]["num_problems"] == 7
    assert summary["comparisons"][0]["a"] == "runA"

    import matplotlib.image as mpimg

    img = mpimg.imread(rep / "passk_bench__s.png")
    assert img.shape[0] > 200 and img.shape[1] > 300
    # more than a blank canvas: two coloured curves with CI bands and axes
    assert len(np.unique(img.reshape(-1, img.shape[-1]), axis=0)) > 20
    assert (rep / "passk_bench__s.png").stat().st_size > 10_000


def test_unfinished_cell_is_reported_by_name(tmp_path):
    make_graded_cell(tmp_path / "a", [1, 2, 3, 4], 4, shard_size=2)
    (tmp_path / "a" / "graded" / shard_name(2, 4)).unlink()
    with pytest.raises(FileNotFoundError, match="graded shard"):
        load_cell_results(tmp_path / "a")


def test_pairing_refuses_different_problem_lists(tmp_path):
    make_graded_cell(tmp_path / "a", [1, 2, 3], 4)
    make_graded_cell(tmp_path / "b", [1, 2, 3, 0], 4)
    cells = [CellRef("A", "bench", "s", str(tmp_path / "a")), CellRef("B", "bench", "s", str(tmp_path / "b"))]
    with pytest.raises(ValueError, match="problem lists differ"):
        write_report(cells, tmp_path / "rep", num_boot=100)
