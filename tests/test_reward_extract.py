"""Answer extraction, the normalised fast path and the arithmetic exact-integer rule (no worker processes)."""

from __future__ import annotations

import time

import pytest

from verl_agrae.reward import compute_score, extract_answer, fast_equal, last_integer, normalize_answer
from verl_agrae.reward.extract import FALLBACK_CHARS, Extraction, final_boxed, find_answer

EXTRACT_CASES = [
    (r"so $\boxed{5}$.", "5"),
    (r"first \boxed{3}, then corrected: \boxed{4}", "4"),
    (r"\fbox{x+1}", "x+1"),
    (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
    (r"\boxed{\{1,2\}}", r"\{1,2\}"),  # escaped braces do not close the box
    (r"\boxed{\boxed{7}}", "7"),  # nested boxes: innermost
    (r"answer \boxed 5$ done", "5"),  # "\boxed 5" style
    (r"old \boxed{2} then truncated \boxed{\frac{1}{", "2"),  # last box unbalanced: previous well-formed one
    ("Natalia sold 48 clips.\n#### 72", "72"),
    ("The answer is 12.", "12"),
    ("Thus the final answer is $\\frac{3}{4}$. I hope it is correct.", r"\frac{3}{4}"),
    ("Reasoning...\nAnswer: **42**", "42"),
    ("**Final Answer**: $-7$", "-7"),
    ("Final Answer: The final answer is $3.14$. I hope it is correct.", "3.14"),
    ("The answer is 3.\nWait, recheck. Final Answer: 5", "5"),  # the later statement wins
    ("no answer here at all", None),
    ("", None),
    (r"\boxed{}", None),
    (r"\boxedx{5}", None),  # another macro, not a box
    (r"\boxed{", None),
    # several boxes of one answer: connectors, one math environment, environments joined by a connector
    (r"\boxed{1}, \boxed{2} and \boxed{3}", "1, 2, 3"),
    (r"$$\boxed{x=1} \text{ for (a), and } \boxed{y=2}$$", "x=1, y=2"),
    (r"$x = \boxed{-1}$ or $x = \boxed{3}$", "-1, 3"),
    ("\\begin{cases} a = \\boxed{1} \\\\ b = \\boxed{2} \\end{cases}", "1, 2"),
    (r"try \boxed{3}. That fails, so \boxed{4}", "4"),  # prose between: the last box alone
    ("\\boxed{3}\n\n\\boxed{4}", "4"),  # a blank line separates answers
    # markers end at the answer
    ("Final Answer: The largest $n$ is 34.", "34"),
    ("The answer is 12 apples.", "12"),
    ("The answer is 25 percent.", "25\\%"),
    ("The answer is $5$ million.", "$5$ million"),  # the scale word stays with the number
    (r"Answer: the count is $\binom{5}{2} = 10$", r"\binom{5}{2} = 10"),
    ("So the answer is 0.125, as computed.", "0.125"),
    # a later final-answer statement replaces earlier boxes; one without mathematics does not
    (r"\boxed{200}, \boxed{255}. The final answer is $10{,}455$.", "10{,}455"),
    ("\\boxed{5}\n\nI am sure the answer is correct.", "5"),
]


@pytest.mark.parametrize(("text", "expected"), EXTRACT_CASES)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_box_beats_fallbacks():
    assert extract_answer("The answer is 3. Actually \\boxed{4}") == "4"
    assert extract_answer("#### 7 then \\boxed{8}") == "8"


def test_strict_mode_and_fallback():
    assert extract_answer("The answer is 12.", "strict") is None
    assert extract_answer("Answer: 12", "strict") == "12"
    assert extract_answer("#### 12", "strict") == "12"
    assert extract_answer(r"\boxed{200}. The final answer is 10.", "strict") == "200"
    long_prose = "We add them up. " * 500 + "So she has 12 marbles."
    found = find_answer(long_prose)
    assert found == Extraction(None, "text", long_prose[-FALLBACK_CHARS:])
    assert find_answer(long_prose, "strict") == Extraction(None, "none")
    assert find_answer("I cannot solve it.") == Extraction(None, "none")  # nothing math-verify could read
    with pytest.raises(ValueError, match="extraction mode must be one of"):
        find_answer("x", "lenient")


def test_ground_truth_boxes_all_count():
    assert final_boxed(r"\boxed{1} papers and \boxed{2} bins", every_box=True) == "1, 2"
    assert final_boxed(r"\boxed{1} papers and \boxed{2} bins") == "2"
    assert final_boxed(r"\boxed{3} red and \boxed{4} blue", at_least=2) == "3, 4"


def test_extract_linear_on_huge_adversarial_text():
    # 1 MB of opening boxes never closed, and 1 MB of braces: must stay linear (no per-box rescans).
    adversarial = (
        "\\boxed{" * 150_000,
        "{" * 1_000_000 + "\\boxed{1",
        "x" * 1_000_000 + " The answer is 5",
        "\\boxed{" * 20 + "x" * 1_000_000,  # every candidate box scans to the end
        "$\\boxed{1}$ " * 100_000,  # many boxes and math environments
    )
    for text in adversarial:
        start = time.perf_counter()
        extract_answer(text)
        assert time.perf_counter() - start < 20.0  # quadratic rescans take hours on these inputs


def test_last_integer():
    assert last_integer("12 + 30 = 42, so 42 apples") == "42"
    assert last_integer("it is -7") == "-7"
    assert last_integer("about 1,000,") == "1,000"
    assert last_integer("none") is None


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        (r"\dfrac{1}{2}", r"\frac{1}{2}", True),
        (r"\left( 1, 2 \right)", "(1,2)", True),
        ("1,000", "1000", True),
        (r"1\,000\,000", "1000000", True),
        ("0.50", ".5", True),
        (r"90^\circ", "90", True),
        (r"5\text{ cm}", "5", True),
        ("1,2", "12", False),  # a list, not a thousands separator
        ("0.5", "1/2", False),  # fast path does not know; the symbolic check decides
        ("", "", False),
        ("3", "-3", False),
    ],
)
def test_fast_equal(a, b, equal):
    assert fast_equal(a, b) is equal


def test_normalize_is_idempotent():
    for s in [r"\dfrac{1}{2}", r"\left(1,2\right)", "1,000", r"90^{\circ}", " $ 5 $ "]:
        once = normalize_answer(s)
        assert normalize_answer(once) == once


ARITHMETIC_CASES = [
    ("12 + 30 = 42", "42", True, "42"),
    (r"The sum is \boxed{42}.", "42", True, "42"),
    (r"\boxed{042}", "42", True, "042"),
    (r"\boxed{42.0}", "42", True, "42.0"),
    (r"\boxed{-5}", "-5", True, "-5"),
    (r"\boxed{5}", "-5", False, "5"),
    (r"\boxed{-0}", "0", True, "-0"),
    (r"\boxed{1,024}", "1024", True, "1,024"),
    (r"\boxed{41} although 42", "42", False, "41"),  # a box decides: no fallback to the last integer
    (r"\boxed{x}", "42", False, "x"),
    ("The answer is 42 apples. 6*7=42", "42", True, "42"),
    ("I think it is 41", "42", False, "41"),
    ("no digits", "42", False, ""),
    ("", "42", False, ""),
    ("9" * 5000, "9" * 5000, True, None),  # beyond int()'s 4300-digit limit: compared as strings
]


@pytest.mark.parametrize(("solution", "truth", "acc", "pred"), ARITHMETIC_CASES)
def test_arithmetic_exact_integer(solution, truth, acc, pred):
    res = compute_score("arithmetic", solution, truth)
    assert set(res) >= {"score", "acc", "pred", "timeout"}
    assert res["acc"] is acc
    assert res["score"] == (1.0 if acc else 0.0)
    assert res["timeout"] is False
    if pred is not None:
        assert res["pred"] == pred


def test_arithmetic_dapo():
    assert compute_score("arithmetic", r"\boxed{3}", "3", dapo=True)["score"] == 1.0
    assert compute_score("arithmetic", r"\boxed{4}", "3", dapo=True)["score"] == -1.0


def test_arithmetic_needs_no_pool(monkeypatch):
    import verl_agrae.reward.score as score_mod

    def boom():
        raise AssertionError("the arithmetic rule must not start grading workers")

    monkeypatch.setattr(score_mod, "get_default_pool", boom)
    assert compute_score("arithmetic", r"\boxed{7}", "7")["acc"] is True


INTEGER_PAIRS = [
    ("124", "123"),
    ("-5", "5"),
    ("1,001", "1000"),
    (r"5\text{ cm}", "6"),
    ("(2, 1)", "(1,2)"),
    ("[1, 2]", "[1,3]"),
    (r"\left(3, 4, 5\right)", "(3,4,6)"),
    ("(12, 7)", "(12,7)"),
    ("0", "-1"),
    ("(1,2)", "(1,2]"),  # brackets differ: undecided (interval rules are math-verify's)
    ("(1,2,3)", "(1,2)"),  # lengths differ: undecided
    ("10 \\text{ million}", "10"),  # scale word: undecided
    ("0.5", "1/2"),
]


def test_integer_verdicts_agree_with_math_verify():
    # The cheap "different" for integer answers must say what math-verify says, or leave the item to it.
    from verl_agrae.reward.normalize import fast_verdict
    from verl_agrae.reward.verify import math_equal, quiet_math_verify

    quiet_math_verify()
    decided = 0
    for pred, truth in INTEGER_PAIRS:
        verdict = fast_verdict(pred, truth)
        if verdict is not None:
            decided += 1
            assert verdict is math_equal(pred, truth), (pred, truth)
    assert decided == 9
