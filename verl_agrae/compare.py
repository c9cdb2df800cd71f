"""``verl-agrae compare``: train methods on the same data with several seeds, evaluate Pass@k, report the difference.

The question A-GRAE's paper asks: does a method keep exploring, so that Pass@k at large k holds up better than
under GRPO while Pass@1 keeps pace? One run per method on greedy Pass@1 cannot answer it. An experiment file names
methods (packaged configs), seeds and an evaluation; the command

1. trains every (method, seed) with ``verl-agrae train`` into ``<output_dir>/runs/<method>-seed<s>`` (a finished
   run is skipped, an interrupted one resumes from its checkpoint);
2. writes ``<output_dir>/sweep.yaml`` (the base model and every final checkpoint, on the held-out benchmark) and
   runs it with the evaluation sweep machinery (resumable per shard; on a cluster the same file runs as a SLURM
   array, ``verl-agrae eval sweep <output_dir>/sweep.yaml --cell $SLURM_ARRAY_TASK_ID``);
3. writes ``<output_dir>/report/compare.md`` with PNGs: Pass@k per method with 95% bootstrap CIs over problems and
   seeds, paired differences (each method minus the baseline, paired by seed and problem) with CIs, and the
   training curves (score, entropy, mu, suppression) side by side.

Steps can run alone (``--train INDEX``, ``--eval``, ``--write-sweep``, ``--report``); on SLURM,
``slurm/submit_compare.sh EXPERIMENT.yaml`` submits every training run as a ``slurm/train.sbatch`` job, then the
sweep file, the evaluation as an array (one task per cell) and the report, each waiting for the step before.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from verl_agrae.trainer.plots import ENTROPY_KEYS

__all__ = [
    "CompareSpec",
    "MethodSpec",
    "TrainRun",
    "bootstrap_over_seeds_and_problems",
    "load_compare",
    "main",
    "method_tables",
    "run_name",
]

logger = logging.getLogger(__name__)

#: Config keys a seed sets: the data order and the rollout's sampling seed.
SEED_KEYS = ("data.seed", "actor_rollout_ref.rollout.seed")
#: Overrides of every training run, before the experiment's own: checkpoints also hold Hugging Face weights
#: (``actor/huggingface``), which the evaluation loads (verl saves only FSDP shards unless asked).
TRAIN_OVERRIDES = ("actor_rollout_ref.actor.checkpoint.save_contents=[model,optimizer,extra,hf_model]",)
#: Training curves of the report: (metric keys, first present wins; label).
CURVES = (
    (("critic/score/mean",), "score"),
    (ENTROPY_KEYS, "entropy"),
    (("agrae/mu",), "mu"),
    (("agrae/suppression",), "suppression"),
)


def run_name(method: str, seed: int) -> str:
    """The name of one training run: its directory under ``runs/`` and its row in the evaluation sweep."""
    return f"{method}-seed{seed}"


@dataclass(frozen=True)
class MethodSpec:
    """One method: a label, the packaged config it trains with, and its own overrides."""

    name: str
    config: str
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrainRun:
    """One training run of the experiment."""

    method: str
    seed: int
    run_dir: Path
    argv: tuple[str, ...]

    @property
    def name(self) -> str:
        return run_name(self.method, self.seed)


@dataclass
class CompareSpec:
    """A parsed experiment file (see the module docstring and ``examples/compare/cpu_demo.yaml``)."""

    path: Path
    output_dir: Path
    base_model: str
    methods: list[MethodSpec]
    baseline: str
    seeds: list[int]
    overrides: list[str]
    evaluation: dict[str, Any]
    report: dict[str, Any] = field(default_factory=dict)

    def train_runs(self) -> list[TrainRun]:
        """Every (method, seed), seed-major, so the first runs already pair each method with the baseline."""
        runs = []
        for seed in self.seeds:
            for m in self.methods:
                run_dir = self.output_dir / "runs" / run_name(m.name, seed)
                argv = (
                    "--config-name",
                    m.config,
                    f"run.dir={run_dir}",
                    *(f"{k}={seed}" for k in SEED_KEYS),
                    *TRAIN_OVERRIDES,
                    *self.overrides,
                    *m.overrides,
                )
                runs.append(TrainRun(m.name, seed, run_dir, argv))
        return runs

    @property
    def sweep_path(self) -> Path:
        return self.output_dir / "sweep.yaml"

    @property
    def report_dir(self) -> Path:
        return self.output_dir / "report"


def _fail(path: Path, message: str) -> ValueError:
    return ValueError(f"{path}: {message}")


def load_compare(path: str | Path) -> CompareSpec:
    """Parse and check an experiment file.

    Raises:
        ValueError: invalid YAML (file, line), a missing or unknown key, a bad name or an unknown baseline.
    """
    from verl_agrae.eval.sweep import check_names
    from verl_agrae.yaml_files import read_yaml

    p = Path(path)
    raw = read_yaml(p)
    allowed = {"output_dir", "base_model", "methods", "baseline", "seeds", "overrides", "evaluation", "report"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise _fail(p, f"unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    for key in ("output_dir", "base_model", "methods", "baseline", "seeds", "evaluation"):
        if raw.get(key) in (None, [], {}):
            raise _fail(p, f"'{key}' is required")
    methods = []
    for i, m in enumerate(raw["methods"]):
        if not isinstance(m, dict) or not {"name", "config"} <= set(m) or set(m) - {"name", "config", "overrides"}:
            raise _fail(p, f"methods[{i}] needs name and config (and optionally overrides), got {m!r}")
        methods.append(MethodSpec(str(m["name"]), str(m["config"]), tuple(str(o) for o in m.get("overrides") or ())))
    names = [m.name for m in methods]
    if "base" in names:
        raise _fail(p, "'base' is the base model's row in the report; name the method otherwise")
    if raw["baseline"] not in names:
        raise _fail(p, f"baseline {raw['baseline']!r} is not one of the methods {names}")
    seeds = raw["seeds"]
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise _fail(p, f"seeds must be a list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise _fail(p, f"duplicate seeds in {seeds}")
    try:  # methods and runs label the evaluation's cells
        check_names("method", names)
        check_names("run", ["base", *(run_name(m, s) for s in seeds for m in names)])
    except ValueError as exc:
        raise _fail(p, str(exc)) from None
    evaluation = dict(raw["evaluation"])
    bad = sorted(set(evaluation) - {"benchmark", "sampling", "generation", "grading"})
    if bad or "benchmark" not in evaluation or "sampling" not in evaluation:
        raise _fail(p, f"evaluation needs benchmark and sampling (optional: generation, grading); unknown: {bad}")
    return CompareSpec(
        path=p,
        output_dir=Path(raw["output_dir"]),
        base_model=str(raw["base_model"]),
        methods=methods,
        baseline=str(raw["baseline"]),
        seeds=list(seeds),
        overrides=[str(o) for o in raw.get("overrides") or ()],
        evaluation=evaluation,
        report=dict(raw.get("report") or {}),
    )


# ------------------------------------------------------------------------------------------------ training


def _finished(run: TrainRun) -> bool:
    summary = run.run_dir / "summary.json"
    if not summary.is_file():
        return False
    data = json.loads(summary.read_text(encoding="utf-8"))
    return data.get("exit_code") == 0 and bool(data.get("checkpoint_step"))


def _run_at(runs: list[TrainRun], index: int) -> TrainRun:
    if not 0 <= index < len(runs):
        raise IndexError(f"training run index {index} out of range: the experiment has runs 0..{len(runs) - 1}")
    return runs[index]


def train(spec: CompareSpec, index: int | None = None) -> None:
    """Train every run (or run ``index`` only) with ``verl-agrae train``, skipping finished ones.

    Raises:
        RuntimeError: a training run failed (its exit status and run directory named).
    """
    runs = spec.train_runs()
    chosen = runs if index is None else [_run_at(runs, index)]
    for run in chosen:
        if _finished(run):
            logger.info("%s: finished already, skipped", run.name)
            continue
        cmd = [sys.executable, "-m", "verl_agrae.trainer.main", *run.argv]
        print(f"training {run.name} ({runs.index(run) + 1}/{len(runs)})", flush=True)
        code = subprocess.call(cmd)
        if code != 0:
            raise RuntimeError(f"training {run.name} failed with exit status {code}; see {run.run_dir}/train.log")


def final_checkpoint(run: TrainRun) -> Path:
    """The run's last saved step directory (``checkpoints/global_step_N``)."""
    steps = sorted(
        (int(d.name.rsplit("_", 1)[1]), d) for d in (run.run_dir / "checkpoints").glob("global_step_*") if d.is_dir()
    )
    if not steps:
        raise FileNotFoundError(f"{run.name}: no checkpoint in {run.run_dir / 'checkpoints'}; train first")
    return steps[-1][1]


# ---------------------------------------------------------------------------------------------- evaluation


def write_sweep(spec: CompareSpec) -> Path:
    """The evaluation as a sweep file: the base model and every final checkpoint on the benchmark."""
    runs = [{"name": "base", "model": spec.base_model}]
    runs += [{"name": r.name, "model": str(final_checkpoint(r))} for r in spec.train_runs()]
    sweep = {
        "output_dir": str(spec.output_dir / "eval"),
        "runs": runs,
        "benchmarks": [spec.evaluation["benchmark"]],
        "sampling": [spec.evaluation["sampling"]],
        "generation": spec.evaluation.get("generation") or {},
        "grading": spec.evaluation.get("grading") or {},
        "report": spec.report,
    }
    spec.output_dir.mkdir(parents=True, exist_ok=True)
    spec.sweep_path.write_text(yaml.safe_dump(sweep, sort_keys=False), encoding="utf-8")
    return spec.sweep_path


# ------------------------------------------------------------------------------------------------- report


def bootstrap_over_seeds_and_problems(
    values: np.ndarray, *, num_boot: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and percentile CI of a per-(seed, problem) metric, resampling seeds and problems independently.

    Args:
        values: ``(S, K, P)``: S seeds (training runs), K metrics (one per k), P problems. No NaN.
        num_boot: bootstrap replicates.
        confidence: CI level.
        seed: RNG seed.

    Returns:
        ``(mean, low, high)``, each ``(K,)``. With one seed only problems vary (the seed spread is unknown).
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 3 or 0 in v.shape:
        raise ValueError(f"values must be (seeds, metrics, problems) and non-empty, got shape {v.shape}")
    if np.isnan(v).any():
        raise ValueError("values contain NaN")
    s, _, p = v.shape
    rng = np.random.default_rng(seed)
    seed_w = rng.multinomial(s, np.full(s, 1.0 / s), size=num_boot) / s  # (B, S)
    prob_w = rng.multinomial(p, np.full(p, 1.0 / p), size=num_boot) / p  # (B, P)
    boot = np.einsum("bs,skp,bp->bk", seed_w, v, prob_w)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(boot, [alpha, 1.0 - alpha], axis=0)
    return v.mean(axis=(0, 2)), low, high


def method_tables(
    correct: dict[str, np.ndarray],
    num_samples: int,
    ks: list[int],
    baseline: str,
    *,
    num_boot: int = 2000,
) -> dict[str, Any]:
    """Pass@k per method and paired differences against the baseline.

    Args:
        correct: method -> ``(S, P)`` correct counts out of ``num_samples`` per seed and problem (``base``: S = 1).
        num_samples: samples per problem n.
        ks: the k values (<= n).
        baseline: the method the others are compared with (paired by seed index and problem).
        num_boot: bootstrap replicates.

    Returns:
        ``{"passk": {method: {k: {value, low, high}}}, "diff": {method: {k: {value, low, high}}}}``.
    """
    from verl_agrae.eval.metrics import pass_at_k_curve

    def curves(c: np.ndarray) -> np.ndarray:  # (S, P) -> (S, K, P)
        n = np.full(c.shape[1], num_samples)
        return np.stack([pass_at_k_curve(n, row, ks, short="raise") for row in c])

    per = {m: curves(np.asarray(c)) for m, c in correct.items()}
    out: dict[str, Any] = {"passk": {}, "diff": {}}
    for m, v in per.items():
        mean, low, high = bootstrap_over_seeds_and_problems(v, num_boot=num_boot)
        out["passk"][m] = {k: {"value": mean[i], "low": low[i], "high": high[i]} for i, k in enumerate(ks)}
    for m, v in per.items():
        if m in (baseline, "base"):
            continue
        if v.shape != per[baseline].shape:
            raise ValueError(
                f"{m} and {baseline} must have the same seeds and problems: {v.shape} vs {per[baseline].shape}"
            )
        mean, low, high = bootstrap_over_seeds_and_problems(v - per[baseline], num_boot=num_boot)
        out["diff"][m] = {k: {"value": mean[i], "low": low[i], "high": high[i]} for i, k in enumerate(ks)}
    return out


def _cell_correct(spec: CompareSpec) -> tuple[dict[str, np.ndarray], int]:
    from verl_agrae.eval.cell import load_cell_results
    from verl_agrae.eval.sweep import load_sweep

    if not spec.sweep_path.is_file():
        raise FileNotFoundError(
            f"no evaluation to report: {spec.sweep_path} was never written (it is written once every training run "
            "has a checkpoint: did a training run fail? see its log)"
        )
    sweep = load_sweep(spec.sweep_path)
    (bench,), (samp,) = sweep.benchmarks, sweep.sampling

    def counts(name: str) -> np.ndarray:
        run = next(r for r in sweep.runs if r.name == name)
        return np.asarray(load_cell_results(sweep.cell_ref(run, bench, samp).cell_dir).c)

    correct = {"base": counts("base")[None, :]}
    for m in spec.methods:
        correct[m.name] = np.stack([counts(run_name(m.name, s)) for s in spec.seeds])
    return correct, int(samp.n)


def _training_curves(spec: CompareSpec) -> dict[str, dict[str, list[list[tuple[int, float]]]]]:
    """method -> metric label -> one [(step, value)] list per seed."""
    out: dict[str, dict[str, list[list[tuple[int, float]]]]] = {}
    for run in spec.train_runs():
        path = run.run_dir / "metrics.jsonl"
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.is_file() else []
        for keys, label in CURVES:
            key = next((k for k in keys if any(isinstance(r.get(k), (int, float)) for r in rows)), keys[0])
            series = [(int(r["step"]), float(r[key])) for r in rows if isinstance(r.get(key), (int, float))]
            out.setdefault(run.method, {}).setdefault(label, []).append(series)
    return out


def _plots(spec: CompareSpec, tables: dict[str, Any], curves: dict[str, Any], ks: list[int]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec.report_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for m, row in tables["passk"].items():
        ax.plot(ks, [row[k]["value"] for k in ks], marker="o", label=m)
        ax.fill_between(ks, [row[k]["low"] for k in ks], [row[k]["high"] for k in ks], alpha=0.2)
    ax.set(xscale="log", xlabel="k", ylabel="Pass@k", title="Pass@k (95% CI over problems and seeds)")
    ax.set_xscale("log", base=2)
    ax.legend()
    paths.append(spec.report_dir / "passk.png")
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for m, row in tables["diff"].items():
        ax.plot(ks, [row[k]["value"] for k in ks], marker="o", label=f"{m} - {spec.baseline}")
        ax.fill_between(ks, [row[k]["low"] for k in ks], [row[k]["high"] for k in ks], alpha=0.2)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="k", ylabel="Pass@k difference", title=f"paired difference vs {spec.baseline} (95% CI)")
    ax.legend()
    paths.append(spec.report_dir / "passk_diff.png")
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)

    fig, axes = plt.subplots(2, 2, figsize=(10, 7), layout="constrained")  # titles clear of the row above
    for ax, (_, label) in zip(axes.flat, CURVES, strict=True):
        for i, (m, per_label) in enumerate(curves.items()):
            color = f"C{i}"
            for j, series in enumerate(per_label.get(label, [])):
                if series:
                    xs, ys = zip(*series, strict=True)
                    ax.plot(xs, ys, color=color, alpha=0.8 if j == 0 else 0.4, label=m if j == 0 else None)
        ax.set(title=label, xlabel="step")
        if ax.get_legend_handles_labels()[0]:  # a metric that no run logged stays an empty panel
            ax.legend(fontsize=7)
    paths.append(spec.report_dir / "training.png")
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)
    return paths


def _fmt(cell: dict[str, float]) -> str:
    return f"{cell['value']:.3f} [{cell['low']:.3f}, {cell['high']:.3f}]"


def report(spec: CompareSpec) -> Path:
    """Write ``compare.md``, ``compare.json`` and the PNGs from the evaluated cells and the runs' metrics."""
    from verl_agrae.eval.metrics import default_ks

    correct, n = _cell_correct(spec)
    ks = spec.report.get("ks", "auto")
    ks = default_ks(n) if ks == "auto" else [int(k) for k in ks]
    tables = method_tables(correct, n, ks, spec.baseline, num_boot=int(spec.report.get("num_boot", 2000)))
    curves = _training_curves(spec)
    plots = _plots(spec, tables, curves, ks)
    methods = ["base", *[m.name for m in spec.methods]]
    lines = [
        f"# {spec.path.stem}: {', '.join(m.name for m in spec.methods)} vs the base model",
        "",
        f"Seeds {spec.seeds}; {correct['base'].shape[1]} problems x n = {n} samples "
        f"({spec.evaluation['benchmark'].get('name')}); 95% bootstrap CIs resample problems and seeds.",
        "",
        "| k | " + " | ".join(methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    lines += [f"| {k} | " + " | ".join(_fmt(tables["passk"][m][k]) for m in methods) + " |" for k in ks]
    lines += ["", f"Paired differences (method - {spec.baseline}, same seed and problem):", ""]
    others = list(tables["diff"])
    lines += ["| k | " + " | ".join(others) + " |", "|---|" + "---|" * len(others)]
    lines += [f"| {k} | " + " | ".join(_fmt(tables["diff"][m][k]) for m in others) + " |" for k in ks]
    lines += ["", *[f"![{p.stem}]({p.name})" for p in plots], ""]
    spec.report_dir.mkdir(parents=True, exist_ok=True)
    (spec.report_dir / "compare.json").write_text(
        json.dumps({"ks": ks, **tables}, indent=2, default=float), encoding="utf-8"
    )
    out = spec.report_dir / "compare.md"
    out.write_text("\n".join(lines), encoding="utf-8")
    return out


# --------------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    """``verl-agrae compare EXPERIMENT.yaml [--train [INDEX] | --eval | --report | --list-train]``."""
    parser = argparse.ArgumentParser(prog="verl-agrae compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", type=Path)
    step = parser.add_mutually_exclusive_group()
    step.add_argument("--list-train", action="store_true", help="print the training runs (index, name, command)")
    step.add_argument("--num-train", action="store_true", help="print the number of training runs")
    step.add_argument(
        "--train-args",
        type=int,
        metavar="INDEX",
        help="print run INDEX's arguments for slurm/train.sbatch, one per line (CONFIG, then overrides)",
    )
    step.add_argument("--sweep-path", action="store_true", help="print where the evaluation sweep file goes")
    step.add_argument("--write-sweep", action="store_true", help="only write the evaluation sweep (after training)")
    step.add_argument("--train", nargs="?", type=int, const=-1, help="only train (INDEX: only that run)")
    step.add_argument("--eval", action="store_true", help="only write and run the evaluation sweep")
    step.add_argument("--report", action="store_true", help="only write the report")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        spec = load_compare(args.experiment)
        runs = spec.train_runs()
        if args.list_train:
            for i, run in enumerate(runs):
                print(f"{i}\t{run.name}\tverl-agrae train {' '.join(run.argv)}")
            return 0
        if args.num_train:
            print(len(runs))
            return 0
        if args.train_args is not None:
            argv = _run_at(runs, args.train_args).argv  # ("--config-name", CONFIG, overrides...)
            print("\n".join(argv[1:]))
            return 0
        if args.sweep_path:
            print(spec.sweep_path)
            return 0
        if args.write_sweep:
            print(write_sweep(spec))
            return 0
        if args.train is not None or not (args.eval or args.report):
            train(spec, None if args.train in (None, -1) else args.train)
        if args.eval or not (args.train is not None or args.report):
            from verl_agrae.eval.sweep import load_sweep, run_sweep

            run_sweep(load_sweep(write_sweep(spec)), report=True)
        if args.report or not (args.train is not None or args.eval):
            print(f"report: {report(spec)}")
    except (FileNotFoundError, ValueError, IndexError, RuntimeError) as exc:
        sys.stderr.write(f"verl-agrae compare: error: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
