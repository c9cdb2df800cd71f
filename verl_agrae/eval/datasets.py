"""Evaluation problems: verl RL parquet, plain problem/answer tables, benchmark presets, arithmetic.

Everything reads local files; nothing is downloaded. Benchmark presets reuse the converters of
:mod:`verl_agrae.data.converters` (same columns, same answer extraction, same prompt suffix as the
training data) and cache the converted verl RL parquet next to the sweep outputs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

#: Environment variable naming the directory where benchmark preset files live.
DATA_DIR_ENV = "VERL_AGRAE_EVAL_DATA"
DEFAULT_DATA_DIR = "data/eval"

#: preset -> (converter name, candidate paths relative to the data dir, what the file must hold)
PRESETS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "math500": (
        "math500",
        ("math500/test.jsonl", "math500/test.parquet", "math500.jsonl", "math500.parquet", "MATH-500/test.jsonl"),
        "MATH-500 (HuggingFaceH4/MATH-500 test.jsonl): columns 'problem' and 'answer' (or 'solution')",
    ),
    "math": (
        "math",
        ("math/test.jsonl", "math/test.parquet", "math/test", "MATH/test"),
        "MATH test (Hendrycks, 5,000 problems): columns 'problem' and 'solution' (answer = last \\boxed{}), "
        "as JSONL/parquet or the original directory of per-problem .json files",
    ),
    "aime2024": (
        "aime2024",
        ("aime2024.jsonl", "aime2024.parquet", "aime2024/test.jsonl", "aime2024/train.jsonl"),
        "AIME 2024 (30 problems): columns 'problem' (or 'question') and 'answer'",
    ),
    "aime2025": (
        "aime2025",
        ("aime2025.jsonl", "aime2025.parquet", "aime2025/test.jsonl", "aime2025/train.jsonl"),
        "AIME 2025 (30 problems): columns 'problem' (or 'question') and 'answer'",
    ),
    "amc23": (
        "amc23",
        ("amc23.jsonl", "amc23.parquet", "amc23/test.jsonl"),
        "AMC 2023 (40 problems): columns 'question' (or 'problem') and 'answer'",
    ),
    "gsm8k": (
        "gsm8k",
        ("gsm8k/test.jsonl", "gsm8k/test.parquet", "gsm8k.jsonl", "gsm8k.parquet"),
        "GSM8K test (1,319 problems): columns 'question' and 'answer' (final answer after '####')",
    ),
}


class EvalDataError(ValueError):
    """A benchmark file is missing or does not have the expected columns."""


@dataclass(frozen=True)
class EvalProblem:
    """One problem to sample.

    Attributes:
        uid: stable identifier within its benchmark (row index unless the file provides one).
        prompt: chat messages (``[{"role": ..., "content": ...}]``) given to the chat template.
        ground_truth: reference answer passed to the grader.
        data_source: reward routing key (``arithmetic``, ``math500``, ...).
    """

    uid: str
    prompt: list[dict[str, str]]
    ground_truth: str
    data_source: str


@dataclass
class BenchmarkSpec:
    """One benchmark of a sweep.

    Attributes:
        name: label in tables and output paths.
        preset: ``arithmetic``, a key of :data:`PRESETS`, ``rl_parquet`` (an already converted verl
            RL parquet) or ``table`` (a JSONL/CSV/parquet with problem/answer columns).
        path: file or directory; optional for presets (looked up under the data dir).
        limit: keep only the first ``limit`` problems (quick subsets).
        data_source: override the reward routing key.
        options: preset-specific options (arithmetic: ``task`` (a name in ``verl_agrae.data.arithmetic.TASKS``,
            e.g. ``cpu_demo``: the problems a training config generates), ``n_train``, ``n_val``, ``seed``,
            ``split``, and the generator's options such as ``max_operand`` and ``suffix``).
    """

    name: str
    preset: str = "rl_parquet"
    path: str | None = None
    limit: int | None = None
    data_source: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchmarkSpec:
        """Build from a sweep YAML entry; unknown keys go to ``options``."""
        if "name" not in d:
            raise EvalDataError(f"benchmark entry {d!r} has no 'name'")
        known = {"name", "preset", "path", "limit", "data_source"}
        preset = d.get("preset")
        if preset is None:
            preset = d["name"] if (d["name"] in PRESETS or d["name"] == "arithmetic") else "rl_parquet"
        return cls(
            name=str(d["name"]),
            preset=str(preset),
            path=None if d.get("path") is None else str(d["path"]),
            limit=None if d.get("limit") is None else int(d["limit"]),
            data_source=d.get("data_source"),
            options={k: v for k, v in d.items() if k not in known},
        )


def _messages_of(value: Any, where: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    try:
        msgs = [{"role": str(m["role"]), "content": str(m["content"])} for m in value]
    except (TypeError, KeyError) as exc:
        raise EvalDataError(f"{where}: 'prompt' must be a string or a list of {{role, content}} messages") from exc
    if not msgs:
        raise EvalDataError(f"{where}: empty 'prompt'")
    return msgs


def load_rl_parquet(path: str | os.PathLike[str], *, limit: int | None = None) -> list[EvalProblem]:
    """Read a verl RL parquet (``prompt``, ``reward_model.ground_truth``, ``data_source``).

    Args:
        path: parquet file.
        limit: keep the first ``limit`` rows.

    Returns:
        The problems in file order; ``uid`` is ``extra_info.index`` when present, else the row number.
    """
    p = Path(path)
    if not p.is_file():
        raise EvalDataError(f"verl RL parquet not found: {p}")
    table = pq.read_table(p)
    missing = [c for c in ("prompt", "reward_model", "data_source") if c not in table.column_names]
    if missing:
        raise EvalDataError(
            f"{p}: not a verl RL parquet, missing column(s) {missing} (found {table.column_names}); "
            "for a plain problem/answer table use preset 'table'"
        )
    rows = table.to_pylist()
    if limit is not None:
        rows = rows[:limit]
    problems = []
    seen: set[str] = set()
    for i, row in enumerate(rows):
        where = f"{p}: row {i}"
        rm = row.get("reward_model") or {}
        gt = rm.get("ground_truth") if isinstance(rm, dict) else None
        if gt is None or str(gt).strip() == "":
            raise EvalDataError(f"{where}: empty reward_model.ground_truth")
        info = row.get("extra_info") or {}
        uid = str(info.get("index", i)) if isinstance(info, dict) else str(i)
        if uid in seen:
            uid = str(i)  # duplicate indices (several splits concatenated): fall back to the row number
        seen.add(uid)
        problems.append(
            EvalProblem(
                uid=uid,
                prompt=_messages_of(row["prompt"], where),
                ground_truth=str(gt),
                data_source=str(row["data_source"]),
            )
        )
    if not problems:
        raise EvalDataError(f"{p}: no rows")
    return problems


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The directory preset files are looked up in: argument, ``$VERL_AGRAE_EVAL_DATA``, or ``data/eval``."""
    return Path(data_dir or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)


def preset_path(preset: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Find a preset's local file, or raise naming the paths tried and the expected columns."""
    _, candidates, expected = PRESETS[preset]
    root = resolve_data_dir(data_dir)
    for rel in candidates:
        cand = root / rel
        if cand.exists():
            return cand
    tried = ", ".join(str(root / rel) for rel in candidates)
    raise EvalDataError(
        f"benchmark preset {preset!r}: no local file found (tried {tried}). Expected {expected}. "
        f"Nothing is downloaded: put the file there, set ${DATA_DIR_ENV}, or give 'path:' in the sweep YAML."
    )


def load_benchmark(
    spec: BenchmarkSpec,
    *,
    cache_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
) -> list[EvalProblem]:
    """Load a benchmark's problems.

    Presets are converted once into ``cache_dir/<name>.parquet`` (verl RL format) with the data
    package's converters, so that evaluation prompts match training prompts.

    Args:
        spec: the benchmark.
        cache_dir: directory for converted parquet files.
        data_dir: where preset files are looked up (see :func:`resolve_data_dir`).

    Returns:
        The problems, in a fixed order.
    """
    cache = Path(cache_dir)
    preset = spec.preset
    if preset == "arithmetic":
        from verl_agrae.data.arithmetic import task_options, write_arithmetic_dataset

        try:
            opts = task_options(spec.options)  # `task: cpu_demo`: the demo's own problems, prompt and split sizes
        except ValueError as e:
            raise EvalDataError(f"benchmark {spec.name!r}: {e}") from e
        split = str(opts.pop("split", "val"))
        if split not in ("train", "val"):
            raise EvalDataError(f"benchmark {spec.name!r}: arithmetic split must be 'train' or 'val', got {split!r}")
        kwargs = {
            "n_train": int(opts.pop("n_train", 1024)),
            "n_val": int(opts.pop("n_val", 128)),
            "seed": int(opts.pop("seed", 0)),
        }
        # Every generator option is in the cache key: two specs share files only if they make the same problems.
        key = hashlib.sha256(json.dumps({**kwargs, **opts}, sort_keys=True, default=str).encode()).hexdigest()[:12]
        out = cache / f"arithmetic_{kwargs['n_train']}_{kwargs['n_val']}_{kwargs['seed']}_{key}"
        path = out / f"{split}.parquet"
        if not path.is_file():
            path = write_arithmetic_dataset(out, **kwargs, **opts)[split]
        problems = load_rl_parquet(path, limit=spec.limit)
    elif preset == "rl_parquet":
        if not spec.path:
            raise EvalDataError(f"benchmark {spec.name!r}: preset 'rl_parquet' needs 'path'")
        problems = load_rl_parquet(spec.path, limit=spec.limit)
    elif preset in PRESETS or preset == "table":
        from verl_agrae.data.converters import convert

        if preset == "table":
            if not spec.path:
                raise EvalDataError(f"benchmark {spec.name!r}: preset 'table' needs 'path'")
            # The aime converters take generic problem/question + answer columns, nothing else.
            converter, src = "aime2024", Path(spec.path)
        else:
            converter, src = PRESETS[preset][0], Path(spec.path) if spec.path else preset_path(preset, data_dir)
        if not src.exists():
            raise EvalDataError(f"benchmark {spec.name!r}: file not found: {src}")
        out = cache / f"{spec.name}.parquet"
        if not out.is_file() or out.stat().st_mtime < src.stat().st_mtime:
            convert(
                converter,
                src,
                out,
                split="test",
                data_source=spec.data_source or ("math" if preset == "table" else None),
                question_column=spec.options.get("question_column"),
                answer_column=spec.options.get("answer_column"),
            )
        problems = load_rl_parquet(out, limit=spec.limit)
    else:
        raise EvalDataError(
            f"benchmark {spec.name!r}: unknown preset {preset!r}; "
            f"expected one of arithmetic, rl_parquet, table, {', '.join(PRESETS)}"
        )
    if spec.data_source:
        problems = [
            EvalProblem(p.uid, p.prompt, p.ground_truth, spec.data_source) if p.data_source != spec.data_source else p
            for p in problems
        ]
    logger.info("benchmark %s: %d problems", spec.name, len(problems))
    return problems
