"""The authors' Geometry3K reward (0.9 accuracy + 0.1 format) as a reward option; success stays acc."""

from __future__ import annotations

import pytest

from verl_agrae.reward.format_reward import accuracy_and_format_score, format_ok

GOOD = "<think>The angles sum to 180, so x = 180 - 110 = 70.</think> The answer is \\boxed{70}."


@pytest.mark.parametrize(
    ("response", "truth", "score", "acc", "fmt"),
    [
        (GOOD, "70", 1.0, True, True),
        (GOOD, "60", 0.1, False, True),  # well formatted, wrong: only the format part
        ("x = 70, so \\boxed{70}", "70", 0.9, True, False),  # right, no think block
        ("\\boxed{70} <think>checked</think>", "70", 0.9, True, False),  # the think block must come first
        ("<think>70</think> 70", "60", 0.0, False, False),  # no box: no format point (and wrong anyway)
        ("no idea", "70", 0.0, False, False),
    ],
)
def test_score_is_point_nine_accuracy_plus_point_one_format(response, truth, score, acc, fmt):
    out = accuracy_and_format_score("geometry3k", response, truth, None, format_weight=0.1)
    assert out["score"] == pytest.approx(score) and out["acc"] is acc and out["format"] is fmt


def test_format_needs_the_think_block_before_the_box():
    assert format_ok("<think>\nlines\n</think>\n\\boxed{3}")
    assert not format_ok("\\boxed{3} <think>late</think>")
    assert not format_ok("")


def test_bad_weight_and_dapo_are_refused():
    with pytest.raises(ValueError, match="format_weight must be in"):
        accuracy_and_format_score("geometry3k", GOOD, "70", None, format_weight=1.5)
    with pytest.raises(ValueError, match="dapo"):
        accuracy_and_format_score("geometry3k", GOOD, "70", None, format_weight=0.1, dapo=True)
