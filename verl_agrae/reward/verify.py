"""Symbolic equivalence with math-verify, meant to run inside a grading worker process.

math-verify's own ``parsing_timeout``/``timeout_seconds`` install a SIGALRM handler; that only works on a
process's main thread and, when it fires, turns a timeout into a silent ``False``. We therefore pass ``None``
for both and bound the call from outside: a soft timer in the worker (``worker.py``) and a hard kill by the
pool (``pool.py``).
"""

from __future__ import annotations

import logging
from functools import lru_cache

from verl_agrae.reward.normalize import clean_for_parser

__all__ = ["answer_in_text", "math_equal", "quiet_math_verify"]


def quiet_math_verify() -> None:
    """Silence math-verify's "timeout is disabled" warning: disabling it is deliberate here."""
    for name in ("math_verify", "math_verify.parser", "math_verify.grader", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.ERROR)


@lru_cache(maxsize=1)
def _configs() -> tuple:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    return (LatexExtractionConfig(), ExprExtractionConfig())


def _parse(answer: str) -> list:
    from math_verify import parse

    # "$...$" makes math-verify read the whole answer as one LaTeX expression; wrapping in \boxed{} instead
    # loses forms such as "50\%".
    return parse("$" + clean_for_parser(answer) + "$", extraction_config=_configs(), parsing_timeout=None)


def math_equal(pred: str, truth: str) -> bool:
    """Whether ``pred`` is mathematically equivalent to ``truth`` according to math-verify.

    Unbounded in time (sympy can run for ever on a power tower): call it only inside a grading worker.

    Args:
        pred: extracted prediction (LaTeX or plain text).
        truth: ground truth.

    Returns:
        math-verify's verdict; False when either side cannot be parsed.
    """
    from math_verify import verify

    gold = _parse(truth)
    target = _parse(pred)
    if not gold or not target:
        return False
    return bool(verify(gold, target, timeout_seconds=None))


def answer_in_text(text: str, truth: str) -> tuple[bool, str]:
    """math-verify's own extraction of the answer from a response that states none explicitly, and its verdict.

    The response is parsed as math-verify parses any model output (LaTeX and plain expressions; "answer" anchors
    first, then the last expression). Unbounded in time like :func:`math_equal`: call it only inside a worker.

    Args:
        text: the tail of a model output (see ``extract.FALLBACK_CHARS``).
        truth: ground truth.

    Returns:
        ``(equal, extracted)``: the verdict and the text math-verify extracted ("" when it found nothing).
    """
    from math_verify import parse, verify

    found = parse(text, extraction_config=_configs(), parsing_timeout=None)
    extracted = next((f for f in found if isinstance(f, str)), "")
    gold = _parse(truth)
    if not gold or not found:
        return False, extracted
    return bool(verify(gold, found, timeout_seconds=None)), extracted
