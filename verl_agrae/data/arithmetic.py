"""Synthetic arithmetic: the task of the CPU demo (small models learn it in minutes).

Problems are 1-2 digit additions and subtractions and 1-digit products (``What is 37 + 5?``), answers are
decimal integer strings, and the reward is an exact-integer match (``data_source="arithmetic"``).
Generation is deterministic for a seed and never repeats a problem, so train and validation splits drawn
from one stream are disjoint.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

from verl_agrae.data.rl_parquet import PROMPT_SUFFIX, make_rl_row, write_rl_parquet

DATA_SOURCE = "arithmetic"
OPS = ("+", "-", "*")

#: Named arithmetic tasks: the one definition that training (``run.arithmetic_data.task``) and evaluation (sweep
#: benchmark ``preset: arithmetic`` with ``task:``) both read, so a trained demo checkpoint is evaluated on its own
#: held-out problems, prompt and reward rule.
TASKS: dict[str, dict[str, object]] = {
    # The CPU demo (verl-agrae train --config-name cpu_demo). Operands up to 20 (products up to 9 x 9):
    # SmolLM2-135M starts at about 31% greedy accuracy, room to learn either way; with up to 99 it starts at 23%
    # and samples at T=0.7 are right only 12% of the time. It answers short questions directly with this
    # instruction; the default "reason step by step ... \boxed{}" makes it ramble past the length limit.
    "cpu_demo": {
        "n_train": 256,
        "n_val": 64,
        "seed": 0,
        "max_operand": 20,
        "suffix": "Answer with the final number only.",
    },
}


def task_options(spec: Mapping[str, object]) -> dict[str, object]:
    """Expand ``task: NAME`` in an arithmetic-data spec into :data:`TASKS` ``[NAME]``; other keys override it.

    Keys whose value is None are dropped (a config's "unset": the task's value, or the caller's default, applies).

    Raises:
        ValueError: an unknown task name, listing the known ones.
    """
    options = {k: v for k, v in spec.items() if v is not None}
    name = options.pop("task", None)
    if name is None:
        return options
    if name not in TASKS:
        raise ValueError(f"unknown arithmetic task {name!r}; known: {sorted(TASKS)}")
    return {**TASKS[name], **options}


def _candidates(op: str, max_operand: int, max_factor: int, allow_negative: bool) -> list[tuple[int, int]]:
    """All operand pairs of one operation (the space is small enough to enumerate)."""
    if op == "+":
        return [(a, b) for a in range(max_operand + 1) for b in range(max_operand + 1)]
    if op == "-":
        return [(a, b) for a in range(max_operand + 1) for b in range(max_operand + 1) if allow_negative or a >= b]
    if op == "*":
        return [(a, b) for a in range(max_factor + 1) for b in range(max_factor + 1)]
    raise ValueError(f"unknown operation {op!r}; expected one of {OPS}")


def _evaluate(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    return a * b


def generate_problems(
    n: int,
    seed: int = 0,
    *,
    ops: Sequence[str] = OPS,
    max_operand: int = 99,
    max_factor: int = 9,
    allow_negative: bool = False,
) -> list[dict[str, str]]:
    """Draw ``n`` distinct arithmetic problems.

    Each problem picks an operation uniformly among those not yet exhausted, then an unused operand pair
    of that operation, so the mix stays balanced while the small product table lasts.

    Args:
        n: Number of problems.
        seed: Seed; the same arguments always give the same list, and a longer list starts with a shorter one.
        ops: Operations to mix, from ``("+", "-", "*")``.
        max_operand: Largest operand of additions and subtractions (99: 1-2 digits).
        max_factor: Largest factor of products (9: 1 digit).
        allow_negative: Whether subtractions may have a negative result.

    Returns:
        Dicts with ``question`` (e.g. ``"What is 37 + 5?"``) and ``answer`` (decimal integer string, e.g. ``"42"``).

    Raises:
        ValueError: If ``n`` is negative or larger than the number of distinct problems available.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not ops:
        raise ValueError("ops must name at least one operation")
    rng = random.Random(seed)
    pools: dict[str, list[tuple[int, int]]] = {}
    for op in dict.fromkeys(ops):  # dedupe, keep order
        pool = _candidates(op, max_operand, max_factor, allow_negative)
        rng.shuffle(pool)
        pools[op] = pool
    available = sum(len(pool) for pool in pools.values())
    if n > available:
        raise ValueError(f"asked for {n} problems but only {available} distinct ones exist for ops={list(pools)}")
    problems: list[dict[str, str]] = []
    live = [op for op in pools if pools[op]]
    while len(problems) < n:
        op = rng.choice(live)
        a, b = pools[op].pop()
        if not pools[op]:
            live.remove(op)
        problems.append({"question": f"What is {a} {op} {b}?", "answer": str(_evaluate(a, op, b))})
    return problems


def write_arithmetic_dataset(
    out_dir: str | os.PathLike[str],
    n_train: int = 1024,
    n_val: int = 128,
    seed: int = 0,
    *,
    suffix: str | None = PROMPT_SUFFIX,
    **problem_kwargs,
) -> dict[str, Path]:
    """Write disjoint train and validation splits of the arithmetic task as verl RL parquet.

    Args:
        out_dir: Directory receiving ``train.parquet`` and ``val.parquet``.
        n_train: Training problems.
        n_val: Validation problems (disjoint from training).
        seed: Generation seed.
        suffix: Instruction appended to each question (default: the paper's ``\\boxed{}`` instruction).
        **problem_kwargs: Passed to :func:`generate_problems` (``ops``, ``max_operand``, ...).

    Returns:
        ``{"train": path, "val": path}``.
    """
    if n_train < 1 or n_val < 1:
        raise ValueError(f"n_train and n_val must be >= 1, got {n_train} and {n_val}")
    problems = generate_problems(n_train + n_val, seed=seed, **problem_kwargs)
    out = Path(out_dir)
    paths: dict[str, Path] = {}
    for split, chunk in (("train", problems[:n_train]), ("val", problems[n_train:])):
        rows = [
            make_rl_row(p["question"], p["answer"], data_source=DATA_SOURCE, split=split, index=i, suffix=suffix)
            for i, p in enumerate(chunk)
        ]
        paths[split] = write_rl_parquet(rows, out / f"{split}.parquet")
    return paths
