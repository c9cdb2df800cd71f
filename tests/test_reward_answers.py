"""Answer-equivalence table for the math reward (MATH and math-verify conventions).

Each row is (model's boxed answer, ground truth, expected verdict). Expectations are written from the MATH
grading convention (units, degree signs, percent signs, thousands separators and formatting do not matter;
values do) and math-verify's documented behaviour (sets are unordered, intervals keep their brackets,
"x = 5" answers the value 5); they are not read back from the implementation.
"""

from __future__ import annotations

import pytest

from verl_agrae.reward import compute_score, get_default_pool, score_batch

EQUIVALENT = [
    # fractions and decimals
    (r"\frac{3}{4}", "0.75"),
    ("3/4", r"\frac{3}{4}"),
    (r"\dfrac{3}{4}", r"\frac34"),
    (r"\tfrac{1}{2}", "0.5"),
    ("0.5", r"\frac{1}{2}"),
    (".5", "0.5"),
    ("0.50", "0.5"),
    ("3.0", "3"),
    ("1.5", r"\frac{3}{2}"),
    (r"\frac{2}{6}", r"\frac{1}{3}"),
    (r"\frac{-1}{2}", r"-\frac{1}{2}"),
    (r"-\frac{1}{2}", "-0.5"),
    # roots and pi
    (r"\sqrt 2", r"\sqrt{2}"),
    (r"\frac{1}{2}\sqrt{3}", r"\frac{\sqrt{3}}{2}"),
    (r"\sqrt{8}", r"2\sqrt{2}"),
    (r"\frac{1}{\sqrt{2}}", r"\frac{\sqrt{2}}{2}"),
    (r"2 \pi", r"2\pi"),
    (r"\pi/2", r"\frac{\pi}{2}"),
    # thousands separators
    ("1,000", "1000"),
    ("1{,}000", "1000"),
    (r"1\,000", "1000"),
    ("1,234,567", "1234567"),
    # percentages, units, degrees, text wrappers
    (r"50\%", "50"),
    ("50", r"50\%"),
    (r"5\text{ cm}", "5"),
    (r"10^\circ", "10"),
    (r"30^{\circ}", "30"),
    (r"\text{(B)}", "B"),
    (r"\$5", "5"),
    (r"5\text{ dollars}", "5"),
    (r"\frac{3}{4}\text{ inches}", "0.75"),
    ("Monday", r"\text{Monday}"),
    # tuples, intervals, sets
    ("(1, 2)", "(1,2)"),
    (r"\left(1,2\right)", "(1,2)"),
    ("[1, 2)", "[1,2)"),
    (r"(-\infty,3]", r"(-\infty, 3]"),
    (r"\{2,1\}", r"\{1,2\}"),
    ("2,1", "1,2"),
    ("(1,2,3)", "(1, 2, 3)"),
    (r"\begin{pmatrix}1\\2\end{pmatrix}", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}"),
    (r"\infty", r"\infty"),
    # negative signs, equations, expressions
    ("-3", "-3"),
    ("-0", "0"),
    ("2+3i", "3i+2"),
    ("x = 5", "5"),
    ("1024", "2^{10}"),
    ("(x+1)^2", "x^2+2x+1"),
    ("2x+2", "2(x+1)"),
    # ground truth given with its own box
    ("4", r"\boxed{4}"),
]

NOT_EQUIVALENT = [
    (r"\frac{3}{4}", "0.76"),
    ("3/4", "4/3"),
    (r"\sqrt{2}", r"\sqrt{3}"),
    (r"\sqrt{2}", "2"),
    ("3", "-3"),
    ("-3", "3"),
    (r"-\frac12", r"\frac12"),
    ("[1,2)", "(1,2]"),
    ("(1,3)", "(1,2)"),
    ("[1,2]", "(1,2)"),
    (r"\{1,2,3\}", r"\{1,2\}"),
    ("100", "1000"),
    ("1,001", "1000"),
    (r"\pi", r"2\pi"),
    ("3.14", r"\pi"),
    ("0.33", r"\frac{1}{3}"),
    ("(x-1)^2", "x^2+2x+1"),
    ("2^{11}", "1024"),
    ("5.01", "5"),
    ("y", "x"),
    ("2.718", "e"),
    ("21", "12"),
    ("15", "1.5"),
    ("2", r"\frac{1}{2}"),
    ("0", "1"),
    ("(1,3,2)", "(1,2,3)"),
    (r"\begin{pmatrix}1\\3\end{pmatrix}", r"\begin{pmatrix}1\\2\end{pmatrix}"),
    (r"\text{Tuesday}", r"\text{Monday}"),
    ("2-3i", "2+3i"),
]


@pytest.fixture(scope="module")
def grading_pool():
    # The process-wide pool, shared with other test modules; closed at interpreter exit.
    return get_default_pool().start()


ROWS = [(p, g, True) for p, g in EQUIVALENT] + [(p, g, False) for p, g in NOT_EQUIVALENT]


def test_table_is_large_enough():
    assert len(ROWS) >= 60
    assert len({(p, g) for p, g, _ in ROWS}) == len(ROWS), "duplicate rows"


@pytest.fixture(scope="module")
def table_results(grading_pool):
    # One batch for the whole table: every row still gets its own assertion below.
    solutions = [f"Let me work this out step by step.\nSo the final answer is $\\boxed{{{p}}}$." for p, _, _ in ROWS]
    return score_batch(solutions, [g for _, g, _ in ROWS], "math", pool=grading_pool, timeout=10.0)


@pytest.mark.parametrize("index", range(len(ROWS)), ids=[f"{p} vs {g}" for p, g, _ in ROWS])
def test_answer_pair(index, table_results):
    pred, truth, expected = ROWS[index]
    res = table_results[index]
    assert not res["timeout"], f"{pred!r} vs {truth!r} timed out"
    assert res["acc"] is expected, f"{pred!r} vs {truth!r}: got {res}"
    assert res["score"] == (1.0 if expected else 0.0)


def test_dapo_scores_keep_acc(grading_pool):
    good = compute_score("math", r"\boxed{\frac{3}{4}}", "0.75", dapo=True, pool=grading_pool)
    bad = compute_score("math", r"\boxed{0.76}", "0.75", extra_info={"dapo": True}, pool=grading_pool)
    none = compute_score("math", "I give up.", "0.75", reward_kwargs=None, extra_info={"reward_kwargs": {"dapo": 1}})
    assert (good["score"], good["acc"]) == (1.0, True)
    assert (bad["score"], bad["acc"]) == (-1.0, False)
    assert (none["score"], none["acc"], none["pred"]) == (-1.0, False, "")


@pytest.mark.parametrize(
    ("pred", "truth", "equal"),
    [
        (r"3\mathrm{e}", "3", False),  # Euler's number, not a unit
        (r"2\mathrm{i}", "2", False),  # imaginary unit
        (r"10 \text{ million}", "10", False),  # a scale word changes the value
        (r"5\text{ cm}", r"5\text{ m}", False),  # different units
        ("1, 234", "1234", False),  # a list, not a thousands separator
        (r"5\text{ cm}", "5", True),
        ("1,234", "1234", True),
        (r"1\,000", "1000", True),
        ("0.50", ".5", True),
    ],
)
def test_fast_path_never_calls_near_misses_equal(pred, truth, equal):
    from verl_agrae.reward.normalize import fast_equal

    assert fast_equal(pred, truth) is equal
