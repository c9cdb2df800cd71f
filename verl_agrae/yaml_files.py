"""Read a YAML file of ours (sweeps, experiments) with errors that name the file, line and column."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

__all__ = ["read_yaml"]


def read_yaml(path: str | Path) -> Any:
    """The parsed file (``{}`` when it is empty).

    Raises:
        FileNotFoundError: no such file.
        ValueError: invalid YAML, as ``<path>: not valid YAML: line L, column C: <problem> (<context>)`` (PyYAML's own
            message is several lines about ``<unicode string>``).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"file not found: {p}")
    try:
        return yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise ValueError(f"{p}: not valid YAML: {where}" + (f"{problem} ({context})" if context else problem)) from None
