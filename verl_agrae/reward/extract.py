"""Answer extraction from free-form model output.

Everything here runs in the caller's process, so every function is linear in the length of the text
(no backtracking-prone regexes, a bounded number of brace scans) and never raises on odd input.
"""

from __future__ import annotations

import re

__all__ = ["extract_answer", "last_boxed", "last_integer", "strip_answer"]

# Extracted answers longer than this are not graded symbolically (see verify.py); they are kept
# for the exact-string fast path only, and truncated in the returned ``pred``.
MAX_ANSWER_CHARS = 1000

# Only the last few \boxed occurrences are tried: an unbalanced box costs one scan to the end of the text,
# so trying every one of thousands of truncated boxes would be quadratic.
_MAX_BOX_CANDIDATES = 8

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")
_HASH_RE = re.compile(r"####")
_ANSWER_IS_RE = re.compile(r"\b(?:the\s+)?(?:final\s+)?answer\s+is\b\s*:?", re.IGNORECASE)
_ANSWER_COLON_RE = re.compile(r"\b(?:final\s+)?answer\s*\**\s*:", re.IGNORECASE)  # also "**Answer**:"
_INT_RE = re.compile(r"[-+]?\d[\d,]*")
_SENTENCE_END_RE = re.compile(r"\.(?:\s|$)|\n")


def _balanced_group(text: str, open_pos: int) -> int | None:
    """Return the index just past the brace group opening at ``text[open_pos] == "{"``, or None if unbalanced.

    ``\\{`` and ``\\}`` are literal braces in LaTeX and do not open or close groups.
    """
    depth = 0
    i = open_pos
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2  # skip the escaped character, whatever it is
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def _box_content(text: str, cmd_end: int) -> str | None:
    """Content of a box whose command name ends at ``cmd_end`` (``\\boxed{...}`` or ``\\boxed 5``)."""
    i = cmd_end
    n = len(text)
    while i < n and text[i] in " \t":
        i += 1
    if i >= n:
        return None
    if text[i] == "{":
        end = _balanced_group(text, i)
        if end is None:
            return None
        return text[i + 1 : end - 1]
    if i == cmd_end:
        return None  # "\boxedx" is another macro, not a box
    # "\boxed 5" style: the argument runs to the next "$", whitespace or end of text.
    j = i
    while j < n and text[j] not in "$ \t\n":
        j += 1
    return text[i:j] if j > i else None


def last_boxed(text: str) -> str | None:
    """Content of the last well-formed ``\\boxed{...}`` / ``\\fbox{...}`` in ``text``.

    "Last" is by start position, so for nested boxes (``\\boxed{\\boxed{5}}``) the innermost one wins.

    Args:
        text: model output.

    Returns:
        The box content, or None when no well-formed box exists.
    """
    starts = [m.end() for m in _BOX_RE.finditer(text)]
    for cmd_end in reversed(starts[-_MAX_BOX_CANDIDATES:]):
        content = _box_content(text, cmd_end)
        if content is None:
            continue
        return content
    return None


def strip_answer(ans: str) -> str:
    """Remove the wrappers models put around a bare answer: whitespace, ``$``, bold ``**``, a final period."""
    s = ans.strip()
    for _ in range(3):
        before = s
        s = s.strip().strip("*").strip()
        if len(s) >= 2 and s.startswith("$") and s.endswith("$"):
            s = s.strip("$")
        elif s.startswith("\\(") and s.endswith("\\)") or s.startswith("\\[") and s.endswith("\\]"):
            s = s[2:-2]
        if s.endswith(".") and not s.endswith(".."):
            s = s[:-1]
        if s == before:
            break
    return s.strip()


def _line_after(text: str, pos: int, stop_at_sentence_end: bool) -> str:
    """Text from ``pos`` to the end of its line (or sentence), bounded in length."""
    end = text.find("\n", pos)
    end = len(text) if end < 0 else end
    end = min(end, pos + 4 * MAX_ANSWER_CHARS)
    segment = text[pos:end]
    if stop_at_sentence_end:
        m = _SENTENCE_END_RE.search(segment)
        if m:
            segment = segment[: m.start()]
    return segment


def _last_match(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    last = None
    for last in pattern.finditer(text):  # noqa: B007 - we want the final match
        pass
    return last


def extract_answer(text: str) -> str | None:
    """Extract the final answer from a model's output.

    Order: the last well-formed ``\\boxed{...}``/``\\fbox{...}`` (also ``\\boxed 5``); otherwise the last of
    ``#### N`` (GSM8K), "The (final) answer is ...", "Answer: ...".

    Args:
        text: model output; non-str input is converted with ``str``.

    Returns:
        The answer string with ``$``/bold/final-period wrappers removed, or None if nothing was found.
    """
    if not isinstance(text, str):
        text = str(text)
    boxed = last_boxed(text)
    if boxed is not None:
        boxed = strip_answer(boxed)
        return boxed or None

    best: tuple[int, str] | None = None
    for pattern, sentence in ((_HASH_RE, False), (_ANSWER_IS_RE, True), (_ANSWER_COLON_RE, True)):
        m = _last_match(pattern, text)
        if m is None:
            continue
        cand = strip_answer(_line_after(text, m.end(), sentence))
        if cand and (best is None or m.start() > best[0]):
            best = (m.start(), cand)
    return best[1] if best else None


def last_integer(text: str) -> str | None:
    """The last integer written in ``text`` (thousands separators allowed), or None."""
    m = _last_match(_INT_RE, text)
    if m is None:
        return None
    return m.group(0).rstrip(",")
