"""Converters from the benchmark files users download into verl RL parquet (schema: :mod:`rl_parquet`).

Supported sets (``verl-agrae data <name> INPUT -o OUTPUT.parquet``):

============  ==========================  ===============================================================
name          data_source                 answer taken from
============  ==========================  ===============================================================
math          ``math``                    last ``\\boxed{}`` of ``solution`` (MATH train/test)
math500       ``math500``                 ``answer``; else last ``\\boxed{}`` of ``solution``
aime2024      ``aime2024``                ``answer``
aime2025      ``aime2025``                ``answer``
amc23         ``amc23``                   ``answer`` (``27.0`` becomes ``27``)
gsm8k         ``gsm8k``                   text after ``####`` in ``answer`` (thousands commas removed)
dapo_math     ``math_dapo``               ``reward_model.ground_truth`` (or ``answer``); the problem is cut
                                          out of DAPO's own prompt template; duplicates are dropped
geometry3k    ``geometry3k``              ``answer``; ``images`` kept for verl's multimodal dataset
============  ==========================  ===============================================================

Column names are matched case-insensitively against a list of aliases (``problem``/``question``/...),
and can be forced with ``question_column``/``answer_column``. Any row with an empty question or answer,
or a solution without ``\\boxed{}``, stops the conversion with an error naming the file, the row and the
column, unless ``skip_invalid`` is set (then such rows are dropped and counted).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from verl_agrae.data.rl_parquet import PROMPT_SUFFIX, DatasetFormatError, make_rl_row, write_rl_parquet
from verl_agrae.data.sources import Record, file_columns, iter_file_records, list_source_files
from verl_agrae.reward.extract import final_boxed

logger = logging.getLogger(__name__)

_QUESTION_ALIASES = ("problem", "question", "prompt", "query", "input")
_ANSWER_ALIASES = ("answer", "final_answer", "expected_answer", "ground_truth", "target")
_IMAGE_ALIASES = ("images", "image")
_BOXED = re.compile(r"\\(?:boxed|fbox)")
# DAPO-Math-17k wraps every problem in this template; the converter keeps only the problem.
_DAPO_HEAD = re.compile(r"^Solve the following math problem step by step\..*?\n\n", re.DOTALL)
_DAPO_TAIL = re.compile(r"\n\nRemember to put your answer on its own line after \"Answer:\"\.?\s*$")


def last_boxed_answer(text: str) -> str | None:
    """The boxed final answer of a reference solution: the last well-formed ``\\boxed{...}`` (or ``\\fbox``),
    joined with the boxes right before it that belong to the same answer (``$\\boxed{2}, \\boxed{3}$`` gives
    ``2, 3``), or ``None``.

    Uses the reward module's ``final_boxed`` (the same code that extracts graded predictions). Unlike the
    reward's ``extract_answer`` there is no fallback to "The answer is ...": a reference answer must be boxed.
    """
    if not _BOXED.search(text):
        return None
    answer = final_boxed(text)
    return answer.strip() if answer else None


def gsm8k_answer(text: str) -> str | None:
    """The final number of a GSM8K solution: the text after ``####``, thousands commas removed."""
    if "####" not in text:
        return None
    return text.rsplit("####", 1)[1].strip().replace(",", "") or None


def normalize_number_text(value: Any) -> str:
    """Render an answer cell as text; integral floats (``27.0``, common in AMC23 copies) become ``27``."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value) and value == int(value):
            return str(int(value))
        return repr(value)
    text = str(value).strip()
    if re.fullmatch(r"-?\d+\.0+", text):
        return text.split(".")[0]
    return text


def _text_of(value: Any) -> str:
    """Plain text of a question cell: a string, or the last user message of a chat-message list."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, Sequence) and value and all(isinstance(m, dict) for m in value):
        users = [m for m in value if m.get("role") == "user"] or list(value)
        return str(users[-1].get("content") or "")
    if isinstance(value, float) and math.isnan(value):  # empty CSV/pandas cell
        return ""
    return str(value)


def _answer_of(value: Any) -> str:
    """Plain text of an answer cell: a scalar, or the ``ground_truth`` of a verl ``reward_model`` dict."""
    if value is None:
        return ""
    if isinstance(value, dict):
        value = value.get("ground_truth", "")
        if value is None:
            return ""
    if isinstance(value, float) and math.isnan(value):
        return ""
    if isinstance(value, list | tuple):  # some copies store a one-element list of answers
        return normalize_number_text(value[0]) if len(value) == 1 else ""
    return normalize_number_text(value)


def _strip_dapo_template(text: str) -> str:
    return _DAPO_TAIL.sub("", _DAPO_HEAD.sub("", text, count=1)).strip()


@dataclass(frozen=True)
class ConverterSpec:
    """How one benchmark's files map to verl RL rows.

    Attributes:
        name: CLI name.
        data_source: Value of the ``data_source`` column (routes the reward function).
        question_columns: Aliases of the problem column, tried in order (case-insensitive).
        answer_columns: Aliases of the answer column; empty when the answer comes from a solution.
        solution_columns: Aliases of a worked solution whose last ``\\boxed{}`` is the answer (fallback).
        answer_parser: Turns the answer cell's text into the answer (GSM8K's ``####``); ``None``: as is.
        question_parser: Turns the question cell's text into the problem (DAPO's template); ``None``: as is.
        keep_columns: Columns copied into ``extra_info`` when present (level, subject, ids...).
        multimodal: Rows carry images (Geometry3K).
        dedupe: Drop repeated problems (DAPO-Math-17k repeats each problem many times).
        description: One line for ``--help``.
    """

    name: str
    data_source: str
    question_columns: tuple[str, ...] = _QUESTION_ALIASES
    answer_columns: tuple[str, ...] = _ANSWER_ALIASES
    solution_columns: tuple[str, ...] = ()
    answer_parser: Callable[[str], str | None] | None = None
    question_parser: Callable[[str], str] | None = None
    keep_columns: tuple[str, ...] = ()
    multimodal: bool = False
    dedupe: bool = False
    description: str = ""


CONVERTERS: dict[str, ConverterSpec] = {
    spec.name: spec
    for spec in (
        ConverterSpec(
            "math",
            "math",
            question_columns=("problem", "question"),
            answer_columns=(),
            solution_columns=("solution",),
            keep_columns=("level", "type", "subject", "unique_id"),
            description="MATH train/test (Hendrycks): answer = last \\boxed{} of the solution",
        ),
        ConverterSpec(
            "math500",
            "math500",
            question_columns=("problem", "question"),
            answer_columns=("answer",),
            solution_columns=("solution",),
            keep_columns=("level", "subject", "unique_id"),
            description="MATH-500: answer column, else last \\boxed{} of the solution",
        ),
        ConverterSpec("aime2024", "aime2024", keep_columns=("id", "year", "url"), description="AIME 2024 (30)"),
        ConverterSpec("aime2025", "aime2025", keep_columns=("id", "year", "url"), description="AIME 2025 (30)"),
        ConverterSpec("amc23", "amc23", keep_columns=("id", "url"), description="AMC 2023 (40)"),
        ConverterSpec(
            "gsm8k",
            "gsm8k",
            question_columns=("question", "problem"),
            answer_columns=("answer",),
            answer_parser=gsm8k_answer,
            description="GSM8K: answer = text after '####'",
        ),
        ConverterSpec(
            "dapo_math",
            "math_dapo",
            question_columns=("prompt", "problem", "question", "source_prompt"),
            answer_columns=("reward_model", "answer", "ground_truth"),
            question_parser=_strip_dapo_template,
            dedupe=True,
            description="DAPO-Math-17k: problem cut out of DAPO's prompt, duplicates dropped",
        ),
        ConverterSpec(
            "geometry3k",
            "geometry3k",
            question_columns=("problem", "question"),
            answer_columns=("answer",),
            multimodal=True,
            description="Geometry3K (multimodal): images kept as verl's `images` column",
        ),
    )
}


@dataclass
class ConversionResult:
    """What a conversion read and wrote.

    Attributes:
        name: Converter name.
        output: Parquet written.
        n_read: Source rows read.
        n_written: Rows written.
        n_duplicates: Repeated problems dropped (dedupe converters).
        skipped: Locations and reasons of rows dropped with ``skip_invalid``.
    """

    name: str
    output: Path
    n_read: int
    n_written: int
    n_duplicates: int = 0
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line of counts for the CLI."""
        return (
            f"{self.name}: read {self.n_read} rows, wrote {self.n_written} to {self.output}"
            f" ({self.n_duplicates} duplicates dropped, {len(self.skipped)} invalid rows skipped)"
        )


def _resolve_column(columns: list[str], aliases: Sequence[str], forced: str | None, source: str) -> str | None:
    """Pick the source column for a role: the forced name (must exist) or the first alias present."""
    if forced:
        if forced not in columns:
            raise DatasetFormatError(f"{source}: missing column {forced!r}; found columns {columns}")
        return forced
    lowered = {c.lower(): c for c in columns}
    for alias in aliases:
        if alias.lower() in lowered:
            return lowered[alias.lower()]
    return None


def _image_entry(value: Any, rec: Record, column: str) -> dict[str, Any]:
    """One image cell as ``{"bytes", "path"}`` (verl's RLHFDataset opens ``bytes`` with PIL)."""
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
    elif isinstance(value, bytes | bytearray):
        data, path = bytes(value), None
    elif isinstance(value, str):
        data, path = None, value
    else:
        raise DatasetFormatError(f"{rec.where(column)}: unsupported image value of type {type(value).__name__}")
    if not data:
        if not path:
            raise DatasetFormatError(f"{rec.where(column)}: image has neither bytes nor a path")
        file = Path(path) if Path(path).is_absolute() else rec.file.parent / path
        if not file.is_file():
            raise DatasetFormatError(f"{rec.where(column)}: image file not found: {file}")
        data = file.read_bytes()
    return {"bytes": bytes(data), "path": os.path.basename(path) if path else None}


def convert(
    name: str,
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    split: str = "train",
    data_source: str | None = None,
    question_column: str | None = None,
    answer_column: str | None = None,
    suffix: str | None = PROMPT_SUFFIX,
    system_prompt: str | None = None,
    skip_invalid: bool = False,
    limit: int | None = None,
) -> ConversionResult:
    """Convert local files of one benchmark into a verl RL parquet.

    Args:
        name: Converter name (a key of :data:`CONVERTERS`).
        inputs: One or more files or directories (read in order).
        output: Destination ``.parquet`` (written atomically).
        split: Split name stored in ``extra_info.split``.
        data_source: Override the converter's ``data_source``.
        question_column: Force the problem column instead of the aliases.
        answer_column: Force the answer column (for ``math``, which has none: the solution column).
        suffix: Instruction appended to each problem (default: the paper's).
        system_prompt: Optional system message.
        skip_invalid: Drop rows with an empty question/answer instead of failing (they are counted).
        limit: Keep only the first ``limit`` valid rows (quick subsets).

    Returns:
        Counts and the output path.

    Raises:
        KeyError: Unknown converter.
        DatasetFormatError: Missing column, empty question or answer, bad image; the message names the
            file, the row and the column.
    """
    if name not in CONVERTERS:
        raise KeyError(f"unknown converter {name!r}; available: {', '.join(CONVERTERS)}")
    spec = CONVERTERS[name]
    paths = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
    if not paths:
        raise ValueError("no input given")
    files = [file for p in paths for file in list_source_files(p)]

    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    seen: set[str] = set()
    n_duplicates = n_read = 0
    progress = tqdm(desc=f"convert {name}", unit=" rows", disable=None)  # disable=None: only on a terminal
    for file in files:
        if limit is not None and len(rows) >= limit:
            break
        columns = file_columns(file)
        q_col = _resolve_column(columns, spec.question_columns, question_column, str(file))
        if q_col is None:
            raise DatasetFormatError(
                f"{file}: missing question column: expected one of {list(spec.question_columns)}, found {columns}"
            )
        if answer_column:
            # A forced column is a worked solution for converters without an answer column (math).
            a_col = _resolve_column(columns, (), answer_column, str(file))
            use_solution = not spec.answer_columns
        else:
            a_col = _resolve_column(columns, spec.answer_columns, None, str(file))
            use_solution = False
            if a_col is None and spec.solution_columns:
                a_col = _resolve_column(columns, spec.solution_columns, None, str(file))
                use_solution = a_col is not None
        if a_col is None:
            expected = list(spec.answer_columns) + list(spec.solution_columns)
            raise DatasetFormatError(f"{file}: missing answer column: expected one of {expected}, found {columns}")
        img_col = _resolve_column(columns, _IMAGE_ALIASES, None, str(file)) if spec.multimodal else None
        if spec.multimodal and img_col is None:
            raise DatasetFormatError(f"{file}: missing image column: expected one of {list(_IMAGE_ALIASES)}")
        keep = {c: _resolve_column(columns, (c,), None, str(file)) for c in spec.keep_columns}

        for rec in iter_file_records(file):
            if limit is not None and len(rows) >= limit:
                break
            n_read += 1
            progress.update()
            question = _text_of(rec.data.get(q_col)).strip()
            if spec.question_parser is not None:
                question = spec.question_parser(question)
            raw_answer = rec.data.get(a_col)
            if use_solution:
                answer = last_boxed_answer(_text_of(raw_answer)) or ""
                problem_col, why = a_col, "no \\boxed{} answer in the solution"
            else:
                answer = _answer_of(raw_answer)
                if spec.answer_parser is not None and answer:
                    answer = spec.answer_parser(answer) or ""
                    why = "no '####' final answer" if spec.name == "gsm8k" else "unparseable answer"
                else:
                    why = "empty answer"
                problem_col = a_col
            error = None
            if not question:
                error = f"{rec.where(q_col)}: empty question"
            elif not answer:
                error = f"{rec.where(problem_col)}: {why}"
            if error:
                if not skip_invalid:
                    raise DatasetFormatError(error + " (use --skip-invalid to drop such rows)")
                skipped.append(error)
                continue
            if spec.dedupe:
                if question in seen:
                    n_duplicates += 1
                    continue
                seen.add(question)
            images = None
            if spec.multimodal:
                cell = rec.data.get(img_col)
                cells = [] if cell is None else (list(cell) if isinstance(cell, list | tuple) else [cell])
                images = [_image_entry(v, rec, img_col) for v in cells]
                n_tags = question.count("<image>")
                if n_tags == 0 and images:
                    # verl replaces each <image> tag by the next image; sets without tags get them up front.
                    question = "<image>" * len(images) + question
                elif n_tags != len(images):
                    raise DatasetFormatError(
                        f"{rec.where(img_col)}: {len(images)} image(s) but {n_tags} <image> tag(s) in the question"
                    )
            extra = {"source_file": rec.file.name, "source_row": rec.row}
            for key, col in keep.items():
                if col is not None and rec.data.get(col) is not None:
                    extra[key] = _text_of(rec.data[col])
            rows.append(
                make_rl_row(
                    question,
                    answer,
                    data_source=data_source or spec.data_source,
                    split=split,
                    index=len(rows),
                    suffix=suffix,
                    system_prompt=system_prompt,
                    images=images,
                    extra_info=extra,
                )
            )
    progress.close()
    if n_read == 0:
        raise DatasetFormatError(f"{', '.join(map(str, paths))}: no rows")
    if not rows:
        raise DatasetFormatError(f"{', '.join(map(str, paths))}: no valid rows ({len(skipped)} skipped)")
    out = write_rl_parquet(rows, output)
    result = ConversionResult(name, out, n_read, len(rows), n_duplicates, skipped)
    logger.info("%s", result.summary())
    return result
