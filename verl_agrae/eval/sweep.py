"""Sweeps: a YAML grid of runs x benchmarks x sampling settings, run locally or one cell per SLURM task.

Example (see ``examples/sweeps/cpu_arithmetic.yaml`` and ``docs/eval.md``)::

    output_dir: outputs/eval/cpu_arithmetic
    runs:
      - {name: demo, model: demo}                 # or a HF model dir / verl checkpoint step dir
    benchmarks:
      - {name: arithmetic, preset: arithmetic, limit: 32}
    sampling:
      - {name: t0.6, n: 16, max_tokens: 64}       # unspecified keys: the paper's protocol
    generation: {backend: auto, shard_size: 8, batch_size: 64}
    grading: {timeout: 10}
    report: {num_boot: 2000, compare: [[demo, base]]}

Cells are numbered run-major (run, then benchmark, then sampling), 0-based, so that
``--cell $SLURM_ARRAY_TASK_ID`` with ``--array=0-$((N-1))`` (``N`` from ``--num-cells``) covers the grid.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from verl_agrae.eval.cell import generate_cell, grade_cell
from verl_agrae.eval.datasets import BenchmarkSpec, load_benchmark
from verl_agrae.eval.report import CellRef, write_report
from verl_agrae.eval.sampling import GenerationConfig, SamplingConfig, resolve_model
from verl_agrae.yaml_files import read_yaml

logger = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class RunSpec:
    """A model to evaluate: ``name`` (label) and ``model`` (``demo``, HF dir, or verl checkpoint dir)."""

    name: str
    model: str


@dataclass
class SweepConfig:
    """A parsed sweep YAML."""

    output_dir: Path
    runs: list[RunSpec]
    benchmarks: list[BenchmarkSpec]
    sampling: list[SamplingConfig]
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    grading: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None

    @property
    def report_dir(self) -> Path:
        """Where the merged report goes."""
        return self.output_dir / "report"

    def cells(self) -> list[tuple[RunSpec, BenchmarkSpec, SamplingConfig]]:
        """All cells, run-major."""
        return [(r, b, s) for r in self.runs for b in self.benchmarks for s in self.sampling]

    def cell_ref(self, run: RunSpec, bench: BenchmarkSpec, samp: SamplingConfig) -> CellRef:
        """Reference (labels + directory) of one cell."""
        ref = CellRef(run.name, bench.name, samp.name, "")
        return CellRef(run.name, bench.name, samp.name, str(self.output_dir / "cells" / ref.cell_id))


def check_names(kind: str, names: list[str]) -> None:
    """Refuse names that cannot label a cell directory (``<run>__<benchmark>__<sampling>``) or repeat.

    Raises:
        ValueError: naming the bad or duplicate names.
    """
    for n in names:
        if not _NAME_RE.match(n) or "__" in n:
            raise ValueError(f"{kind} name {n!r} must match {_NAME_RE.pattern} and not contain '__' (used in paths)")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"duplicate {kind} name(s): {dupes}")


def load_sweep(path: str | os.PathLike[str], *, output_dir: str | None = None) -> SweepConfig:
    """Parse and validate a sweep YAML.

    Args:
        path: the YAML file.
        output_dir: override ``output_dir`` (relative paths in the YAML are relative to the working directory).

    Raises:
        ValueError: invalid YAML (naming the file, line and column), a missing section, unknown key or bad name,
            naming it.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"sweep file not found: {p}")
    raw = read_yaml(p)
    if not isinstance(raw, dict):
        raise ValueError(f"{p}: a sweep file must be a mapping")
    allowed = {"output_dir", "runs", "benchmarks", "sampling", "generation", "grading", "report", "data_dir"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ValueError(f"{p}: unknown top-level key(s) {unknown}; allowed: {sorted(allowed)}")
    for key in ("runs", "benchmarks"):
        if not raw.get(key):
            raise ValueError(f"{p}: '{key}' must list at least one entry")
    runs = []
    for i, r in enumerate(raw["runs"]):
        if not isinstance(r, dict) or "model" not in r:
            raise ValueError(f"{p}: runs[{i}] needs 'model' (and 'name')")
        runs.append(RunSpec(name=str(r.get("name", Path(str(r["model"])).name)), model=str(r["model"])))
    benches = [BenchmarkSpec.from_dict(b) for b in raw["benchmarks"]]
    samp_raw = raw.get("sampling") or [{}]
    if isinstance(samp_raw, dict):
        samp_raw = [samp_raw]
    sampling = [SamplingConfig.from_dict(s) for s in samp_raw]
    check_names("run", [r.name for r in runs])
    check_names("benchmark", [b.name for b in benches])
    check_names("sampling", [s.name for s in sampling])
    grading = dict(raw.get("grading") or {})
    bad = sorted(set(grading) - {"timeout", "num_workers", "dapo", "extraction"})
    if bad:
        raise ValueError(f"{p}: unknown grading key(s) {bad}; allowed: timeout, num_workers, dapo, extraction")
    if "extraction" in grading:
        from verl_agrae.reward.extract import check_mode

        try:
            grading["extraction"] = check_mode(grading["extraction"])
        except ValueError as e:
            raise ValueError(f"{p}: grading.extraction: {e}") from e
    report = dict(raw.get("report") or {})
    bad = sorted(set(report) - {"ks", "num_boot", "seed", "maj", "maj_draws", "compare", "num_perm"})
    if bad:
        raise ValueError(f"{p}: unknown report key(s) {bad}")
    out = output_dir or raw.get("output_dir")
    if not out:
        raise ValueError(f"{p}: 'output_dir' is required (or pass --output-dir)")
    return SweepConfig(
        output_dir=Path(out),
        runs=runs,
        benchmarks=benches,
        sampling=sampling,
        generation=GenerationConfig.from_dict(dict(raw.get("generation") or {})),
        grading=grading,
        report=report,
        data_dir=raw.get("data_dir"),
    )


def run_cell(cfg: SweepConfig, index: int, *, progress: bool = True) -> CellRef:
    """Generate and grade one cell (resuming whatever a previous attempt finished).

    Args:
        cfg: the sweep.
        index: 0-based cell number (``--list-cells`` shows them).
        progress: tqdm bars.

    Returns:
        The cell's reference.
    """
    cells = cfg.cells()
    if not 0 <= index < len(cells):
        raise IndexError(f"cell index {index} out of range: this sweep has {len(cells)} cells (0..{len(cells) - 1})")
    run, bench, samp = cells[index]
    ref = cfg.cell_ref(run, bench, samp)
    problems = load_benchmark(bench, cache_dir=cfg.output_dir / "data", data_dir=cfg.data_dir)
    model_dir = resolve_model(run.model)
    label = f"[{index + 1}/{len(cells)}] {ref.cell_id}"
    generate_cell(problems, model_dir, ref.cell_dir, samp, cfg.generation, progress=progress, desc=f"{label} generate")
    grade_cell(
        ref.cell_dir,
        timeout=float(cfg.grading.get("timeout", 10.0)),
        num_workers=cfg.grading.get("num_workers"),
        dapo=bool(cfg.grading.get("dapo", False)),
        progress=progress,
        desc=f"{label} grade",
        extraction=cfg.grading.get("extraction", "recall"),
    )
    return ref


def report_sweep(cfg: SweepConfig, *, allow_missing: bool = False) -> dict[str, Any]:
    """Merge all cells into the report under ``output_dir/report``.

    Args:
        cfg: the sweep.
        allow_missing: report the finished cells only instead of failing on unfinished ones.
    """
    from verl_agrae.eval.cell import load_cell_results

    refs = []
    missing = []
    for run, bench, samp in cfg.cells():
        ref = cfg.cell_ref(run, bench, samp)
        try:
            load_cell_results(ref.cell_dir)
        except FileNotFoundError as exc:
            missing.append(f"{ref.cell_id}: {exc}")
            continue
        refs.append(ref)
    if missing and not allow_missing:
        raise FileNotFoundError(f"{len(missing)} cell(s) unfinished:\n  " + "\n  ".join(missing))
    if not refs:
        raise FileNotFoundError("no finished cell to report")
    rep = cfg.report
    compare = [tuple(pair) for pair in rep["compare"]] if rep.get("compare") is not None else None
    ks = rep.get("ks")
    return write_report(
        refs,
        cfg.report_dir,
        ks=None if ks in (None, "auto") else [int(k) for k in ks],
        num_boot=int(rep.get("num_boot", 2000)),
        seed=int(rep.get("seed", 0)),
        maj=bool(rep.get("maj", True)),
        maj_draws=int(rep.get("maj_draws", 256)),
        compare=compare,  # type: ignore[arg-type]
        num_perm=int(rep.get("num_perm", 10000)),
    )


def run_sweep(cfg: SweepConfig, *, progress: bool = True, report: bool = True) -> dict[str, Any] | None:
    """Run every cell in this process (each resumes), then write the report."""
    for i in range(len(cfg.cells())):
        run_cell(cfg, i, progress=progress)
    return report_sweep(cfg) if report else None
