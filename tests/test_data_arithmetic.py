"""The synthetic arithmetic task: determinism, uniqueness, correct answers, disjoint splits, verl schema."""

from __future__ import annotations

import ast
import operator
import re

import pytest

from verl_agrae.data.arithmetic import generate_problems, write_arithmetic_dataset
from verl_agrae.data.rl_parquet import PROMPT_SUFFIX, RL_COLUMNS, read_rl_parquet

_QUESTION = re.compile(r"^What is (\d+) ([-+*]) (\d+)\?$")
_PY_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def _reference_answer(question: str) -> int:
    """Independent evaluation: parse the expression with Python's own parser."""
    expr = _QUESTION.match(question)
    assert expr, question
    node = ast.parse(f"{expr[1]} {expr[2]} {expr[3]}", mode="eval").body
    return _PY_OPS[type(node.op)](node.left.value, node.right.value)


def test_answers_are_correct_and_operands_in_range():
    problems = generate_problems(3000, seed=3)
    for p in problems:
        a, op, b = _QUESTION.match(p["question"]).groups()
        assert p["answer"] == str(_reference_answer(p["question"]))
        if op == "*":
            assert int(a) <= 9 and int(b) <= 9
        else:
            assert int(a) <= 99 and int(b) <= 99
        assert int(p["answer"]) >= 0  # allow_negative=False by default


def test_deterministic_unique_and_mixed():
    first, second = generate_problems(500, seed=7), generate_problems(500, seed=7)
    assert first == second
    assert generate_problems(500, seed=8) != first
    assert len({p["question"] for p in first}) == 500
    ops = {_QUESTION.match(p["question"])[2] for p in first}
    assert ops == {"+", "-", "*"}
    # A longer draw extends a shorter one: the same seed gives nested sets.
    assert generate_problems(800, seed=7)[:500] == first


def test_negative_results_allowed_on_request():
    problems = generate_problems(2000, seed=0, ops=("-",), allow_negative=True)
    assert any(int(p["answer"]) < 0 for p in problems)
    assert all(p["answer"] == str(_reference_answer(p["question"])) for p in problems)


def test_too_many_problems_refused():
    # 10 x 10 products only: 100 distinct problems.
    assert len(generate_problems(100, ops=("*",))) == 100
    with pytest.raises(ValueError, match="only 100 distinct"):
        generate_problems(101, ops=("*",))


def test_written_splits_are_disjoint_and_follow_verl_schema(tmp_path):
    paths = write_arithmetic_dataset(tmp_path / "arith", n_train=64, n_val=16, seed=1)
    assert set(paths) == {"train", "val"}
    train, val = read_rl_parquet(paths["train"]), read_rl_parquet(paths["val"])
    assert (len(train), len(val)) == (64, 16)
    assert not {r["extra_info"]["question"] for r in train} & {r["extra_info"]["question"] for r in val}
    for split, rows in (("train", train), ("val", val)):
        for i, row in enumerate(rows):
            assert set(RL_COLUMNS) <= set(row)
            assert row["data_source"] == "arithmetic"
            assert row["reward_model"] == {"style": "rule", "ground_truth": row["extra_info"]["answer"]}
            assert row["extra_info"]["split"] == split and row["extra_info"]["index"] == i
            (message,) = row["prompt"]
            assert message["role"] == "user"
            assert message["content"] == f"{row['extra_info']['question']} {PROMPT_SUFFIX}"
            assert row["reward_model"]["ground_truth"] == str(_reference_answer(row["extra_info"]["question"]))
