"""Cheap string normalisation: the fast path before the symbolic check.

``normalize_answer`` only applies rewrites that keep the mathematical value (spacing, ``\\dfrac`` vs ``\\frac``,
``\\left``/``\\right``, thousands separators, trailing zeros of decimals, degree signs, text-only units after a
number), so ``fast_equal`` has no false positives: when it says False the symbolic check decides.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

__all__ = ["clean_for_parser", "fast_equal", "fast_verdict", "normalize_answer"]

_SPACING_MACROS = re.compile(r"\\(?:(?:left|right|displaystyle|textstyle)(?![a-zA-Z])|[!,;: ])")
_FRAC_VARIANTS = re.compile(r"\\[dt]frac(?![a-zA-Z])")
_DEGREE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?")
# "5 \text{ cm}" / "5\mbox{ dollars}": a number followed only by a text-mode unit word (2+ letters). Not
# \mathrm: \mathrm{e} and \mathrm{i} are constants, not units.
_NUMBER_THEN_TEXT = re.compile(r"^([-+]?[\d.,]+)\s*\\(?:text|mbox|textrm)\{\s*([a-zA-Z][a-zA-Z ]*[a-zA-Z])\s*\}$")
# Words that change the value rather than name a unit: "10 \text{ million}" is not 10.
_SCALE_WORDS = {"hundred", "thousand", "million", "billion", "trillion", "percent", "dozen"}
_THOUSANDS = re.compile(r"^[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_BRACED_COMMA = re.compile(r"(\d)\{,\}(\d)")
_PLAIN_DECIMAL = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)$")
_WHITESPACE = re.compile(r"\s+")
# An integer written canonically (no leading zeros, no "-0"), and a parenthesised / bracketed list of them.
_CANONICAL_INT = r"(?:0|-?[1-9]\d{0,99})"
_INT_SCALAR = re.compile(rf"^{_CANONICAL_INT}$")
_INT_TUPLE = re.compile(rf"^([(\[])({_CANONICAL_INT}(?:,{_CANONICAL_INT})+)([)\]])$")
# "1\,000" and "12{,}000" are thousands separators, not products or lists, for the parser as well.
_LATEX_THOUSANDS = re.compile(r"(\d)(?:\\,|\{,\})(\d{3})(?!\d)")


def _sub_all(pattern: re.Pattern[str], repl: str, s: str) -> str:
    # Matches share their boundary digit ("1\\,000\\,000"), so substitute until nothing changes.
    for _ in range(64):
        new = pattern.sub(repl, s)
        if new == s:
            return s
        s = new
    return s


def normalize_answer(ans: str) -> str:
    """Canonical string form of an answer, for exact comparison only.

    Args:
        ans: an extracted answer or a ground truth (LaTeX or plain text).

    Returns:
        The normalised string (may be empty).
    """
    return _normalize(ans)[0]


def _normalize(ans: str) -> tuple[str, str]:
    """``(normalised answer, stripped unit word or "")``."""
    s = ans.strip().strip("$").strip()
    s = _sub_all(_LATEX_THOUSANDS, r"\1\2", s)
    s = _sub_all(_BRACED_COMMA, r"\1,\2", s)
    s = _SPACING_MACROS.sub("", s)
    s = _FRAC_VARIANTS.sub(r"\\frac", s)
    s = _DEGREE.sub("", s)
    s = s.replace("~", " ")
    unit = ""
    m = _NUMBER_THEN_TEXT.match(s)
    if m and not set(m.group(2).lower().split()) & _SCALE_WORDS:
        s, unit = m.group(1), " ".join(m.group(2).lower().split())
    # Thousands separators before spaces go: "1, 234" is a list, "1,234" a number.
    if _THOUSANDS.match(s.strip()):
        s = s.replace(",", "")
    s = _WHITESPACE.sub("", s)
    if s.endswith(".") and _PLAIN_DECIMAL.match(s[:-1] or "x"):
        s = s[:-1]
    return s, unit


def _decimal(s: str) -> Decimal | None:
    # Bounded length: Decimal of a huge digit string is cheap, but there is no reason to accept one here.
    if len(s) > 200 or not _PLAIN_DECIMAL.match(s):
        return None
    try:
        return Decimal(s)
    except InvalidOperation:
        return None


def fast_equal(pred: str, truth: str) -> bool:
    """True when ``pred`` and ``truth`` are the same answer up to harmless formatting.

    Args:
        pred: extracted prediction.
        truth: ground truth.

    Returns:
        True if equal after normalisation (or equal as plain decimal numbers); False means "unknown".
    """
    a, unit_a = _normalize(pred)
    b, unit_b = _normalize(truth)
    if not a or not b:
        return False
    if unit_a and unit_b and unit_a != unit_b:
        return False  # "5 cm" vs "5 m": not ours to call equal
    if a == b:
        return True
    da, db = _decimal(a), _decimal(b)
    return da is not None and db is not None and da == db


def clean_for_parser(ans: str) -> str:
    """Light clean-up before handing an answer to math-verify: LaTeX thousands separators become digits."""
    s = ans.strip().strip("$").strip()
    return _sub_all(_LATEX_THOUSANDS, r"\1\2", s)


def _integers(norm: str) -> tuple[str, ...] | None:
    """The shape of a normalised answer made of integers only: ``("5",)`` or ``("(", "1", "2", ")")``, else None."""
    if _INT_SCALAR.match(norm):
        return (norm,)
    m = _INT_TUPLE.match(norm)
    return (m.group(1), *m.group(2).split(","), m.group(3)) if m else None


def fast_verdict(pred: str, truth: str) -> bool | None:
    """``fast_equal``, plus a cheap "different" for answers made of integers only.

    Two integers, or two tuples / intervals of integers with the same brackets and length, are equal exactly when
    every integer is (math-verify compares integers exactly and reads such tuples in order), so no symbolic check
    is needed to call them different. Anything else that is not equal after normalisation is undecided.

    Args:
        pred: extracted prediction.
        truth: ground truth.

    Returns:
        True (equal), False (different integers), or None (the symbolic check decides).
    """
    if fast_equal(pred, truth):
        return True
    a, unit_a = _normalize(pred)
    b, unit_b = _normalize(truth)
    ia, ib = _integers(a), _integers(b)
    if ia is None or ib is None or len(ia) != len(ib):
        return None
    if len(ia) > 1 and (ia[0], ia[-1]) != (ib[0], ib[-1]):
        return None  # "(1,2)" vs "[1,2)": math-verify's interval rules decide
    if unit_a and unit_b and unit_a != unit_b:
        return None
    return ia == ib
