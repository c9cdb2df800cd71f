"""One verl RL row builder and one atomic parquet writer, shared by every dataset in this package.

The schema is the one verl 0.9.1's ``RLHFDataset`` (``verl/utils/dataset/rl_dataset.py``) reads:

- ``data_source`` (str): selects the reward function (``arithmetic``, ``math``, ``gsm8k``, ...).
- ``prompt`` (list of ``{"role", "content"}`` chat messages): the dataset's ``prompt_key``.
- ``ability`` (str): free-form task tag, ``"math"`` here.
- ``reward_model`` (``{"style": "rule", "ground_truth": str}``): the reference answer.
- ``extra_info`` (dict): ``split``, ``index`` (row number in its split, what verl logs as ``index``),
  ``question`` (the raw problem, without the instruction suffix), ``answer``, plus converter-specific keys.
- ``images`` (only for multimodal rows): list of ``{"bytes": png/jpeg bytes, "path": str | None}``; every
  ``<image>`` placeholder in the prompt text is replaced by the next image (verl's ``image_key``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from verl_agrae.atomic import atomic_target

logger = logging.getLogger(__name__)

#: The instruction the paper (and the released code) appends to every math prompt.
PROMPT_SUFFIX = "Please reason step by step, and put your final answer within \\boxed{}."

#: Columns every row written by this package has (``images`` is added for multimodal rows only).
RL_COLUMNS = ("data_source", "prompt", "ability", "reward_model", "extra_info")


class DatasetFormatError(ValueError):
    """A source file cannot be converted: the message names the file, the row and the column."""


def build_prompt_text(question: str, suffix: str | None = PROMPT_SUFFIX) -> str:
    """Join a problem statement and the instruction suffix with one space (verl's example convention).

    Args:
        question: The problem statement.
        suffix: Instruction appended after the question; ``None`` or ``""`` appends nothing.

    Returns:
        The user message text.
    """
    question = question.strip()
    if not suffix:
        return question
    return f"{question} {suffix}"


def make_rl_row(
    question: str,
    answer: str,
    *,
    data_source: str,
    split: str,
    index: int,
    ability: str = "math",
    suffix: str | None = PROMPT_SUFFIX,
    system_prompt: str | None = None,
    images: Sequence[dict[str, Any]] | None = None,
    extra_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build one verl RL row.

    Args:
        question: Problem statement without instruction (stored in ``extra_info.question`` as is).
        answer: Reference answer; stripped, must be non-empty.
        data_source: Reward routing key written to ``data_source``.
        split: Split name (``train``, ``test``, ...), stored in ``extra_info.split``.
        index: Row number within the split, stored in ``extra_info.index``.
        ability: Task tag.
        suffix: Instruction appended to the question in the user message.
        system_prompt: Optional system message put before the user message.
        images: For multimodal rows, one ``{"bytes", "path"}`` dict per ``<image>`` placeholder.
        extra_info: Additional keys merged into ``extra_info`` (they must not shadow the standard ones).

    Returns:
        The row as a plain dict.

    Raises:
        ValueError: If the question or the answer is empty, or the image count does not match the placeholders.
    """
    answer = str(answer).strip()
    if not question or not question.strip():
        raise ValueError("empty question")
    if not answer:
        raise ValueError("empty answer")
    messages: list[dict[str, str]] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": build_prompt_text(question, suffix)})
    info: dict[str, Any] = {"split": split, "index": int(index), "question": question.strip(), "answer": answer}
    for key, value in (extra_info or {}).items():
        if key in info:
            raise ValueError(f"extra_info key {key!r} is reserved")
        info[key] = value
    row: dict[str, Any] = {
        "data_source": data_source,
        "prompt": messages,
        "ability": ability,
        "reward_model": {"style": "rule", "ground_truth": answer},
        "extra_info": info,
    }
    if images is not None:
        n_placeholders = sum(m["content"].count("<image>") for m in messages)
        if n_placeholders != len(images):
            raise ValueError(f"{len(images)} image(s) but {n_placeholders} <image> placeholder(s) in the prompt")
        row["images"] = [dict(image) for image in images]
    return row


def write_rl_parquet(rows: Iterable[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write rows to ``path`` atomically (:func:`verl_agrae.atomic.atomic_target`).

    A crash mid-write leaves either the previous file or none, never a truncated parquet that verl would
    half-read.

    Args:
        rows: Rows built by :func:`make_rl_row`.
        path: Destination ``.parquet`` file; parent directories are created.

    Returns:
        The destination path.

    Raises:
        ValueError: If there are no rows (an empty parquet has no schema and verl fails on it later).
    """
    rows = list(rows)
    if not rows:
        raise ValueError(f"refusing to write an empty dataset to {path}")
    dest = Path(path)
    table = pa.Table.from_pylist(rows)
    with atomic_target(dest) as tmp:
        pq.write_table(table, tmp)
    logger.info("wrote %d rows to %s", len(rows), dest)
    return dest


def read_rl_parquet(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a parquet written by :func:`write_rl_parquet` back as a list of row dicts.

    Args:
        path: A ``.parquet`` file.

    Returns:
        The rows, in file order.
    """
    return pq.read_table(path).to_pylist()
