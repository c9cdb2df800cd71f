"""Sharded, atomically written JSONL outputs: what makes a killed sweep resumable.

A shard holds every record of one problem range ``[start, end)``. It is written with
:func:`verl_agrae.atomic.atomic_write_text` (a temporary file in the same directory, then ``os.replace``),
so a shard file either exists complete or not at all. A rerun skips the shards that exist and redoes
the others; temporary files left by a killed run are deleted. A ``meta.json`` fingerprint refuses to
mix shards produced under different settings.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from verl_agrae.atomic import atomic_write_text

logger = logging.getLogger(__name__)

_SHARD_RE = re.compile(r"^shard_(\d{6})_(\d{6})\.jsonl$")


def shard_ranges(num_problems: int, shard_size: int) -> list[tuple[int, int]]:
    """Split ``range(num_problems)`` into consecutive ``[start, end)`` ranges of ``shard_size``."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    return [(s, min(s + shard_size, num_problems)) for s in range(0, num_problems, shard_size)]


def shard_name(start: int, end: int) -> str:
    """File name of the shard holding problems ``[start, end)``."""
    return f"shard_{start:06d}_{end:06d}.jsonl"


def write_jsonl_atomic(path: str | os.PathLike[str], records: Iterable[dict[str, Any]]) -> Path:
    """Write records as JSON Lines atomically (see :func:`verl_agrae.atomic.atomic_write_text`)."""
    text = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)
    return atomic_write_text(path, text)


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a JSON Lines file."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def clean_partial(directory: str | os.PathLike[str]) -> int:
    """Delete temporary files a killed writer left in ``directory``; returns how many."""
    d = Path(directory)
    if not d.is_dir():
        return 0
    removed = 0
    for tmp in d.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
        removed += 1
    if removed:
        logger.info("removed %d partial file(s) in %s", removed, d)
    return removed


def pending_ranges(directory: str | os.PathLike[str], ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The ranges whose shard file does not exist yet."""
    d = Path(directory)
    return [r for r in ranges if not (d / shard_name(*r)).is_file()]


def read_shards(directory: str | os.PathLike[str], ranges: list[tuple[int, int]]) -> list[dict[str, Any]]:
    """Concatenate the records of all shards, in range order; raises if one is missing."""
    d = Path(directory)
    out: list[dict[str, Any]] = []
    for r in ranges:
        p = d / shard_name(*r)
        if not p.is_file():
            raise FileNotFoundError(f"missing shard {p}: the step that writes it has not finished")
        out.extend(read_jsonl(p))
    return out


def stray_shards(directory: str | os.PathLike[str], ranges: list[tuple[int, int]]) -> list[Path]:
    """Shard files in ``directory`` that do not belong to ``ranges`` (another shard size was used)."""
    d = Path(directory)
    expected = {shard_name(*r) for r in ranges}
    return sorted(p for p in d.glob("shard_*.jsonl") if _SHARD_RE.match(p.name) and p.name not in expected)


def ensure_meta(directory: str | os.PathLike[str], meta: dict[str, Any]) -> None:
    """Record the settings a directory's shards are produced with, or check they are unchanged.

    Raises:
        ValueError: ``meta.json`` exists with different settings (mixing would corrupt the results).
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = d / "meta.json"
    canonical = json.loads(json.dumps(meta, sort_keys=True))
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old != canonical:
            diff = sorted(k for k in set(old) | set(canonical) if old.get(k) != canonical.get(k))
            raise ValueError(
                f"{d} holds outputs made with different settings (changed: {diff}). "
                "Use another output directory, or delete it to start over."
            )
        return
    atomic_write_text(path, json.dumps(canonical, indent=2, sort_keys=True) + "\n")
