"""Answer extraction from free-form model output.

Everything here runs in the caller's process, so every function is linear in the length of the text
(no backtracking-prone regexes, a bounded number of brace scans) and never raises on odd input. What cannot be
done in linear time (math-verify's own extraction of the last expression from a response without a final
answer) is left to a grading worker: :func:`find_answer` then hands back the text for it.

Which statement is the final answer (both modes):

* a **box group**: the last ``\\boxed{}``/``\\fbox{}`` together with the boxes right before it that belong to the
  same answer, i.e. that sit in the same math environment (``$$\\boxed{1} \\text{ and } \\boxed{2}$$``) or are
  separated only by connectors (commas, "and"/"or", ``\\quad``, ``$``, one line break). Several boxes become one
  comma-separated answer, which math-verify reads as a set / tuple;
* a **marker**: ``#### N``, ``Answer: ...`` / ``Final Answer: ...`` and (recall mode only) "the (final) answer
  is ...". The answer ends where the answer ends: a leading restatement ("The final answer is") and a trailing
  sentence are dropped, prose around a copula keeps what follows it ("The largest $n$ is 34." gives ``34``);
* whichever of the two **starts last** wins: a model that boxes intermediate results and then states "The final
  answer is $10{,}455$" means the statement. A marker whose text holds no usable answer does not override a box.

In recall mode (the default) a response with neither goes to math-verify's own extraction of its last
expression (see ``verify.answer_in_text``); in strict mode it has no answer.
"""

from __future__ import annotations

import bisect
import dataclasses
import re

__all__ = [
    "DEFAULT_MODE",
    "EXTRACTION_MODES",
    "Extraction",
    "check_mode",
    "extract_answer",
    "count_boxes",
    "final_boxed",
    "find_answer",
    "last_boxed",
    "last_integer",
    "strip_answer",
]

# Extracted answers longer than this are not graded symbolically (see verify.py); they are kept
# for the exact-string fast path only, and truncated in the returned ``pred``.
MAX_ANSWER_CHARS = 1000

#: "recall": every way a model states a final answer, and math-verify's own extraction when it states none.
#: "strict": only an explicit final answer (a box, an ``Answer:`` line, ``#### N``).
EXTRACTION_MODES = ("recall", "strict")
DEFAULT_MODE = "recall"

# Only the last few \boxed occurrences are tried: an unbalanced box costs one scan to the end of the text,
# so trying every one of thousands of truncated boxes would be quadratic.
_MAX_BOX_CANDIDATES = 16
# Tail of a response that math-verify's extraction sees when no final answer is stated: its regexes and parser
# are not linear, and the last expression is in the tail.
FALLBACK_CHARS = 2000
_MAX_GAP_CHARS = 200  # longer text between two boxes is never a mere connector

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")
_BRACE_RE = re.compile(r"\\.|[{}]", re.DOTALL)
_HASH_RE = re.compile(r"####")
_ANSWER_IS_RE = re.compile(r"\b(?:the\s+)?(?:final\s+)?answer\s+is\b\s*:?", re.IGNORECASE)
_ANSWER_COLON_RE = re.compile(r"\b(?:final\s+)?answer\s*\**\s*:\s*\**", re.IGNORECASE)  # also "**Answer**:"
_INT_RE = re.compile(r"[-+]?\d[\d,]*")
_SENTENCE_END_RE = re.compile(r"\.(?:\s|$)|\n")
# Math delimiters and line breaks, for the math-environment scan. "\$" is a dollar sign, not a delimiter.
_DELIM_RE = re.compile(r"\\\$|\$\$|\$|\\\[|\\\]|\\\(|\\\)|\\(?:begin|end)\{[a-zA-Z]+\*?\}|\n")
_CLOSER = {"$$": "$$", "$": "$", "\\[": "\\]", "\\(": "\\)"}
# What may stand between two boxes of one answer: space, "$", commas, "and"/"or" (also inside \text{}), spacing
# macros, alignment and line-break marks, display delimiters.
_CONNECTOR_RE = re.compile(
    r"(?:[\s$,;&~]|\\\\|\\(?:q?quad|hspace\{[^{}]*\})(?![a-zA-Z])|\\[,;:! ]|\\[\[\]()]"
    r"|\\(?:text|mbox|textrm|mathrm)\s*\{[\s,]*(?:and|or)?[\s,]*\}|\b(?:and|or)\b)*",
    re.IGNORECASE,
)
_BLANK_LINE_RE = re.compile(r"\n[ \t]*\n")
# A restatement at the start of a marker's text: "Final Answer: The final answer is $3$."
_RESTATED_RE = re.compile(r"^\s*(?:the\s+)?(?:final\s+)?answer\s+is\b\s*:?\s*", re.IGNORECASE)
# The last copula of a prose sentence: what follows it is the answer ("The largest $n$ is 34").
_COPULA_RE = re.compile(r"(?:\s(?:is|are|was|equals|becomes|gives)\b|=|:)\s*", re.IGNORECASE)
_MATH_AT_START_RE = re.compile(r"^\s*(?:\$\$|\$|\\\[|\\\()")
# "12 apples", "25 percent", "$5": a number with a currency sign and/or up to three unit words.
_NUMBER_WITH_UNIT_RE = re.compile(
    r"^(?:\\?\$\s*)?([-+]?\d[\d,]*(?:\.\d+)?)\s*(\\?%|percent\b)?((?:\s*[a-zA-Z]+\.?)?(?:\s+[a-zA-Z]+\.?){0,2})$"
)
# Words after a number that are mathematics or change its value, not a unit: "2 pi", "5 million".
_NOT_UNITS = frozenset(
    "pi e i sqrt root over plus minus times divided mod and or to of squared cubed hundred thousand million "
    "billion trillion dozen".split()
)
# Words right after a math answer that change its value: "$5$ million" is not 5.
_SCALE_WORDS = re.compile(r"(?:hundred|thousand|million|billion|trillion|dozen|times|squared|cubed)\b", re.I)
_PROSE_WORD_RE = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{2,}")
_INLINE_MATH_RE = re.compile(r"\$[^$]*\$|\\\(.*?\\\)")
# A clause after the answer: "0.125, as computed", "$x = 2$, which is positive".
_TRAILING_CLAUSE_RE = re.compile(
    r",\s+(?:which|as|since|because|so|where|when|that|but|we|i|this|it|thus|hence|therefore)\b", re.IGNORECASE
)
_HAS_MATH_RE = re.compile(r"[\d$\\]")


def check_mode(mode: object) -> str:
    """The extraction mode ``mode`` names (``"recall"`` / ``"strict"``, any case; None: the default).

    Raises:
        ValueError: for any other value, naming the allowed ones.
    """
    if mode is None:
        return DEFAULT_MODE
    name = str(mode).strip().lower()
    if name not in EXTRACTION_MODES:
        raise ValueError(f"extraction mode must be one of {list(EXTRACTION_MODES)}, got {mode!r}")
    return name


@dataclasses.dataclass(frozen=True)
class Extraction:
    """Where a response's final answer is.

    Attributes:
        answer: the explicit final answer (wrappers stripped), or None.
        parts: for ``source == "box"``: how many boxes the answer joins.
        source: ``"box"``, ``"marker"``, ``"text"`` (no explicit answer: math-verify extracts from ``text`` in a
            worker) or ``"none"``.
        text: for ``source == "text"``: the tail of the response to extract from.
    """

    answer: str | None
    source: str
    text: str | None = None
    parts: int = 1


def _balanced_group(text: str, open_pos: int) -> int | None:
    """Return the index just past the brace group opening at ``text[open_pos] == "{"``, or None if unbalanced.

    ``\\{`` and ``\\}`` are literal braces in LaTeX and do not open or close groups. Only braces and backslashes
    are visited (a regex scan), so a long stretch of plain text costs C speed, not a Python loop per character.
    """
    depth = 0
    for m in _BRACE_RE.finditer(text, open_pos):
        c = m.group()
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return m.end()
    return None


def _box_span(text: str, cmd_end: int) -> tuple[str, int] | None:
    """``(content, end)`` of a box whose command name ends at ``cmd_end`` (``\\boxed{...}`` or ``\\boxed 5``)."""
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
        return text[i + 1 : end - 1], end
    if i == cmd_end:
        return None  # "\boxedx" is another macro, not a box
    # "\boxed 5" style: the argument runs to the next "$", whitespace or end of text.
    j = i
    while j < n and text[j] not in "$ \t\n":
        j += 1
    return (text[i:j], j) if j > i else None


@dataclasses.dataclass(frozen=True)
class _Box:
    start: int
    end: int
    content: str


def _boxes(text: str) -> list[_Box]:
    """The last well-formed boxes of ``text`` in text order (at most ``_MAX_BOX_CANDIDATES`` tried).

    A box that contains another one is dropped: for ``\\boxed{\\boxed{5}}`` the innermost counts.
    """
    matches = [(m.start(), m.end()) for m in _BOX_RE.finditer(text)][-_MAX_BOX_CANDIDATES:]
    found: list[_Box] = []
    for start, cmd_end in reversed(matches):
        span = _box_span(text, cmd_end)
        if span is None:
            continue
        content, end = span
        if found and end > found[-1].start:
            continue  # an outer box around one already taken
        found.append(_Box(start, end, content))
    found.reverse()
    return found


def _math_spans(text: str) -> tuple[list[int], list[int]]:
    """Starts and ends of the math environments (``$``, ``$$``, ``\\[``, ``\\(``) in ``text``, in order.

    An inline ``$`` left open ends at the line break; other open environments run to the end of the text.
    """
    starts: list[int] = []
    ends: list[int] = []
    closer: str | None = None
    for m in _DELIM_RE.finditer(text):
        tok = m.group()
        if tok == "\\$":
            continue
        if closer is None:
            if tok in _CLOSER or tok.startswith("\\begin"):
                closer = _CLOSER.get(tok) or "\\end" + tok[6:]  # \begin{align*} ... \end{align*}
                starts.append(m.start())
        elif tok == closer or (closer == "$" and tok in ("$$", "\n")):
            ends.append(m.end())
            closer = None
    if closer is not None:
        ends.append(len(text))
    return starts, ends


def _env_of(pos: int, spans: tuple[list[int], list[int]]) -> tuple[int, int] | None:
    """``(start, end)`` of the math environment holding ``pos``, or None in text mode."""
    starts, ends = spans
    i = bisect.bisect_right(starts, pos) - 1
    return (starts[i], ends[i]) if i >= 0 and pos < ends[i] else None


def _is_connector(gap: str) -> bool:
    return len(gap) <= _MAX_GAP_CHARS and not _BLANK_LINE_RE.search(gap) and _CONNECTOR_RE.fullmatch(gap) is not None


def _same_answer(text: str, prev: _Box, cur: _Box, spans: tuple[list[int], list[int]]) -> bool:
    """Whether two consecutive boxes are parts of one answer: same math environment, or nothing but connectors
    between them (between their environments when both are in one: ``$x = \\boxed{1}$ or $x = \\boxed{2}$``)."""
    env_prev, env_cur = _env_of(prev.start, spans), _env_of(cur.start, spans)
    if env_prev is not None and env_prev == env_cur:
        return True
    if env_prev is not None and env_cur is not None:
        return _is_connector(text[env_prev[1] : env_cur[0]])
    return _is_connector(text[prev.end : cur.start])


def _box_group(text: str, boxes: list[_Box]) -> list[_Box]:
    """The last box and the boxes right before it that belong to the same answer."""
    group = [boxes[-1]]
    spans = _math_spans(text) if len(boxes) > 1 else ([], [])
    for prev in reversed(boxes[:-1]):
        if not _same_answer(text, prev, group[-1], spans):
            break
        group.append(prev)
    group.reverse()
    return group


def _join(contents: list[str]) -> str | None:
    parts = [p for p in (strip_answer(c) for c in contents) if p]
    return ", ".join(parts) if parts else None


def last_boxed(text: str) -> str | None:
    """Content of the last well-formed ``\\boxed{...}`` / ``\\fbox{...}`` in ``text``.

    "Last" is by start position, so for nested boxes (``\\boxed{\\boxed{5}}``) the innermost one wins.

    Args:
        text: model output.

    Returns:
        The box content, or None when no well-formed box exists.
    """
    boxes = _boxes(text)
    return boxes[-1].content if boxes else None


def final_boxed(text: str, *, every_box: bool = False, at_least: int = 1) -> str | None:
    """The boxed final answer: the last box group, its boxes joined by ``", "`` (wrappers stripped).

    Args:
        text: model output or reference solution.
        every_box: join every box of the text, whatever stands between them (for ground truths, which hold
            nothing but the answer: ``\\boxed{1} papers and \\boxed{2} bins`` is the answer ``1, 2``).
        at_least: take at least this many of the last boxes even when prose separates them (a ground truth of
            k boxes is answered by k boxes: "\\boxed{3} red and \\boxed{4} blue").

    Returns:
        The answer, or None when there is no well-formed, non-empty box.
    """
    boxes = _boxes(text)
    if not boxes:
        return None
    group = boxes if every_box else _box_group(text, boxes)
    if len(group) < at_least:
        group = boxes[-at_least:]
    return _join([b.content for b in group])


def count_boxes(text: str) -> int:
    """Number of well-formed boxes in ``text`` (nested ones count once; at most the last 16 are looked at)."""
    return len(_boxes(text))


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
    end = text.find("\n", pos, pos + 4 * MAX_ANSWER_CHARS)
    end = min(len(text), pos + 4 * MAX_ANSWER_CHARS) if end < 0 else end
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


def _leading_math(segment: str) -> str | None:
    """The math environment(s) a marker's text starts with, joined when connected ("$2$ or $3$"), else None."""
    if not _MATH_AT_START_RE.match(segment):
        return None
    starts, ends = _math_spans(segment)
    contents: list[str] = []
    pos = 0
    for s, e in zip(starts, ends, strict=False):
        if contents and not _is_connector(segment[pos:s]):
            break
        contents.append(segment[s:e])
        pos = e
    rest = segment[pos:].strip()
    if _SCALE_WORDS.match(rest):
        return None  # "$5$ million": the words after the math belong to the answer
    joined = _join(contents)
    if joined and len(contents) == 1 and rest.startswith(("\\%", "%", "percent")):
        return joined + "\\%"  # "$25$%"
    return joined


def _number_with_unit(answer: str) -> str:
    """``"12 apples"`` -> ``"12"``, ``"25 percent"`` -> ``"25\\%"``, ``"$5"`` -> ``"5"``; anything else unchanged."""
    m = _NUMBER_WITH_UNIT_RE.match(answer) if len(answer) <= 200 else None
    if not m:
        return answer
    number, percent, words = m.groups()
    if any(w.rstrip(".").lower() in _NOT_UNITS for w in words.split()):
        return answer
    return number + ("\\%" if percent else "")


def _prose_words(answer: str) -> int:
    """Words of two or more letters outside inline math and not LaTeX commands."""
    return len(_PROSE_WORD_RE.findall(_INLINE_MATH_RE.sub(" ", answer)))


def _marker_answer(segment: str) -> str | None:
    """The answer stated in the text after a marker: the answer itself, not the sentence around it."""
    for _ in range(3):
        seg = _RESTATED_RE.sub("", segment, count=1)
        if seg == segment:
            break
        segment = seg
    math = _leading_math(segment)
    if math is not None:
        return math
    clause = _TRAILING_CLAUSE_RE.search(segment)
    answer = strip_answer(segment[: clause.start()] if clause else segment)
    if not answer:
        return None
    unit_free = _number_with_unit(answer)
    if unit_free != answer:
        return unit_free
    if _prose_words(answer) >= 2:
        # A sentence: keep what follows its last copula ("The largest $n$ is 34" -> "34").
        # Math is masked (same length): an "=" inside "$\\binom{5}{2} = 10$" is not the sentence's copula.
        masked = _INLINE_MATH_RE.sub(lambda m: "#" * len(m.group()), answer)
        copula = None
        for copula in _COPULA_RE.finditer(masked):  # noqa: B007 - the last copula
            pass
        after = answer[copula.end() :].strip() if copula is not None else ""
        if after:
            answer = _leading_math(after) or _number_with_unit(strip_answer(after))
    return answer or None


def _last_marker(text: str, mode: str, after: int) -> tuple[int, str] | None:
    """``(start, answer)`` of the last final-answer marker that holds an answer, or None.

    A marker that starts after position ``after`` (a box) must state something mathematical (a digit, ``$`` or a
    command) to count: "\\boxed{5}. I am sure the answer is correct." keeps the box.
    """
    patterns: list[tuple[re.Pattern[str], bool]] = [(_HASH_RE, False), (_ANSWER_COLON_RE, True)]
    if mode == "recall":
        patterns.append((_ANSWER_IS_RE, True))
    best: tuple[int, str] | None = None
    for pattern, prose in patterns:
        m = _last_match(pattern, text)
        if m is None or (best is not None and m.start() <= best[0]):
            continue
        segment = _line_after(text, m.end(), stop_at_sentence_end=prose)
        cand = _marker_answer(segment) if prose else strip_answer(segment)
        if cand and (m.start() < after or _HAS_MATH_RE.search(cand)):
            best = (m.start(), cand)
    return best


def find_answer(text: str, mode: str = DEFAULT_MODE) -> Extraction:
    """Locate the final answer of a model's output.

    Args:
        text: model output; non-str input is converted with ``str``.
        mode: ``"recall"`` (default) or ``"strict"`` (see the module docstring and docs/reward.md).

    Returns:
        The :class:`Extraction`: an explicit answer, or (recall mode) the tail of the text for math-verify's own
        extraction, or nothing.

    Raises:
        ValueError: for an unknown ``mode``.
    """
    mode = check_mode(mode)
    if not isinstance(text, str):
        text = str(text)
    boxes = _boxes(text)
    box: tuple[int, str] | None = None
    parts = 0
    if boxes:
        group = _box_group(text, boxes)
        joined = _join([b.content for b in group])
        if joined:
            box, parts = (group[0].start, joined), len(group)
    marker = _last_marker(text, mode, after=box[0] if box is not None else len(text))
    if marker is not None and (box is None or marker[0] > box[0]):
        return Extraction(marker[1], "marker")
    if box is not None:
        return Extraction(box[1], "box", parts=parts)
    if mode == "recall":
        tail = text[-FALLBACK_CHARS:]
        if _HAS_MATH_RE.search(tail):  # math-verify extracts numbers and LaTeX only
            return Extraction(None, "text", tail)
    return Extraction(None, "none")


def extract_answer(text: str, mode: str = DEFAULT_MODE) -> str | None:
    """The explicit final answer of a model's output (box group or final-answer marker), or None.

    Args:
        text: model output; non-str input is converted with ``str``.
        mode: ``"recall"`` or ``"strict"``; both give the same explicit answers except that strict ignores
            "the answer is ..." prose. Responses without an explicit answer give None here; in recall mode the
            grader still extracts from them with math-verify (:func:`find_answer`).

    Returns:
        The answer string with ``$``/bold/final-period wrappers removed, or None if nothing was found.
    """
    return find_answer(text, mode).answer


def last_integer(text: str) -> str | None:
    """The last integer written in ``text`` (thousands separators allowed), or None."""
    m = _last_match(_INT_RE, text)
    if m is None:
        return None
    return m.group(0).rstrip(",")
