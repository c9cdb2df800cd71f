"""``verl-agrae eval <subcommand>``: sweep, report, generate, grade, metrics, compare.

Typical use::

    verl-agrae eval sweep examples/sweeps/cpu_arithmetic.yaml          # whole grid + report
    verl-agrae eval sweep SWEEP.yaml --num-cells                       # N, for a SLURM array 0..N-1
    verl-agrae eval sweep SWEEP.yaml --cell $SLURM_ARRAY_TASK_ID       # one cell (no report)
    verl-agrae eval sweep SWEEP.yaml --cell-dir 3                      # where cell 3 writes its shards
    verl-agrae eval report SWEEP.yaml                                  # merge cells into the report
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from verl_agrae.eval.sampling import PAPER_SAMPLING


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling (defaults: the paper's protocol)")
    g.add_argument("--n", type=int, default=PAPER_SAMPLING["n"], help="samples per problem")
    g.add_argument("--temperature", type=float, default=PAPER_SAMPLING["temperature"])
    g.add_argument("--top-p", type=float, default=PAPER_SAMPLING["top_p"])
    g.add_argument("--max-tokens", type=int, default=PAPER_SAMPLING["max_tokens"])
    g.add_argument("--seed", type=int, default=PAPER_SAMPLING["seed"])
    g = p.add_argument_group("generation")
    g.add_argument("--backend", choices=["auto", "hf", "vllm"], default="auto")
    g.add_argument("--shard-size", type=int, default=16, help="problems per shard (unit of resumption)")
    g.add_argument("--batch-size", type=int, default=64, help="HF: sequences per generate call")
    g.add_argument("--dtype", default="auto")
    g.add_argument("--tensor-parallel-size", type=int, default=1)
    g.add_argument("--num-engines", type=int, default=0, help="vLLM engines (0: one per TP group of GPUs)")
    g.add_argument("--kv-cache-gib", type=float, help="vLLM KV cache in GiB (default: GPU fraction / CPU memory share)")
    g.add_argument("--enforce-eager", action="store_true", help="vLLM: no torch.compile/CUDA graphs (faster start)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``verl-agrae eval``."""
    parser = argparse.ArgumentParser(prog="verl-agrae eval", description="Pass@k evaluation")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sweep", help="run a sweep YAML: all cells + report, or one cell (--cell)")
    p.add_argument("config", help="sweep YAML")
    p.add_argument("--output-dir", help="override output_dir of the YAML")
    p.add_argument("--cell", type=int, help="run only this 0-based cell (e.g. $SLURM_ARRAY_TASK_ID); no report")
    p.add_argument("--list-cells", action="store_true", help="print the cells with their indices and exit")
    p.add_argument("--num-cells", action="store_true", help="print the number of cells and exit")
    p.add_argument("--cell-dir", type=int, metavar="CELL", help="print the directory of this 0-based cell and exit")
    p.add_argument("--no-report", action="store_true", help="skip the report after running all cells")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = sub.add_parser("report", help="merge the finished cells of a sweep into tables, plots and JSON")
    p.add_argument("config", help="sweep YAML")
    p.add_argument("--output-dir", help="override output_dir of the YAML")
    p.add_argument("--allow-missing", action="store_true", help="report finished cells only")

    p = sub.add_parser("generate", help="sample n responses per problem into a cell directory")
    p.add_argument("--model", required=True, help="'demo', a HF model dir, or a verl checkpoint step dir")
    p.add_argument("--benchmark", required=True, help="benchmark name (a preset name selects the preset)")
    p.add_argument("--preset", help="arithmetic, rl_parquet, table, math500, math, aime2024, aime2025, amc23, gsm8k")
    p.add_argument("--path", help="benchmark file (optional for presets)")
    p.add_argument("--limit", type=int, help="first N problems only")
    p.add_argument("--data-dir", help="where preset files live (default $VERL_AGRAE_EVAL_DATA or data/eval)")
    p.add_argument("--out", required=True, help="cell directory")
    p.add_argument("--no-progress", action="store_true")
    _add_sampling_args(p)

    p = sub.add_parser("grade", help="grade a generated cell with verl_agrae.reward.score_batch")
    p.add_argument("cell_dir")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per verification")
    p.add_argument("--num-workers", type=int, help="grading processes")
    p.add_argument("--dapo", action="store_true", help="DAPO-style +-1 scores (acc is used for Pass@k)")
    p.add_argument(
        "--extraction",
        choices=["recall", "strict"],
        default="recall",
        help="answer extraction: recall (default; also prose answers) or strict (only a box, Answer: or ####)",
    )
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("metrics", help="print Pass@k / mean@n / maj@k of one graded cell")
    p.add_argument("cell_dir")
    p.add_argument("--ks", type=int, nargs="+", help="k values (default: powers of two up to n)")
    p.add_argument("--num-boot", type=int, default=2000)
    p.add_argument("--per-problem", help="also write the per-problem table to this CSV")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = sub.add_parser("compare", help="paired comparison of two graded cells on the same problems")
    p.add_argument("cell_a")
    p.add_argument("cell_b")
    p.add_argument("--ks", type=int, nargs="+", help="k values (default: powers of two up to n)")
    p.add_argument("--num-boot", type=int, default=2000)
    p.add_argument("--num-perm", type=int, default=10000)
    return parser


def _sampling_from(args: argparse.Namespace):
    from verl_agrae.eval.sampling import GenerationConfig, SamplingConfig

    samp = SamplingConfig(
        name="cli",
        n=args.n,
        temperature=args.temperature,
        top_p=args.top_p,
        max_tokens=args.max_tokens,
        seed=args.seed,
    )
    gen = GenerationConfig(
        backend=args.backend,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        dtype=args.dtype,
        tensor_parallel_size=args.tensor_parallel_size,
        num_engines=args.num_engines,
        kv_cache_gib=args.kv_cache_gib,
        enforce_eager=args.enforce_eager,
    )
    return samp, gen


def _cmd_sweep(args: argparse.Namespace) -> int:
    from verl_agrae.eval.sweep import load_sweep, run_cell, run_sweep

    cfg = load_sweep(args.config, output_dir=args.output_dir)
    cells = cfg.cells()
    if args.num_cells:
        print(len(cells))
        return 0
    if args.cell_dir is not None:
        if not 0 <= args.cell_dir < len(cells):
            raise IndexError(f"cell {args.cell_dir} out of range: the sweep has {len(cells)} cell(s)")
        print(cfg.cell_ref(*cells[args.cell_dir]).cell_dir)
        return 0
    if args.list_cells:
        for i, (r, b, s) in enumerate(cells):
            print(f"{i}\t{cfg.cell_ref(r, b, s).cell_id}\t{r.model}")
        return 0
    progress = not args.no_progress
    if args.cell is not None:
        ref = run_cell(cfg, args.cell, progress=progress)
        print(f"cell {args.cell} done: {ref.cell_dir}")
        return 0
    summary = run_sweep(cfg, progress=progress, report=not args.no_report)
    if summary is not None:
        print(f"report: {cfg.report_dir / 'summary.md'}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from verl_agrae.eval.sweep import load_sweep, report_sweep

    cfg = load_sweep(args.config, output_dir=args.output_dir)
    report_sweep(cfg, allow_missing=args.allow_missing)
    print((cfg.report_dir / "summary.md").read_text(encoding="utf-8"))
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from verl_agrae.eval.cell import generate_cell
    from verl_agrae.eval.datasets import BenchmarkSpec, load_benchmark
    from verl_agrae.eval.sampling import resolve_model

    spec = BenchmarkSpec.from_dict(
        {"name": args.benchmark, "preset": args.preset, "path": args.path, "limit": args.limit}
    )
    samp, gen = _sampling_from(args)
    out = Path(args.out)
    problems = load_benchmark(spec, cache_dir=out / "data", data_dir=args.data_dir)
    n = generate_cell(problems, resolve_model(args.model), out, samp, gen, progress=not args.no_progress)
    print(f"{out}: generated {n} shard(s) for {len(problems)} problems")
    return 0


def _cmd_grade(args: argparse.Namespace) -> int:
    from verl_agrae.eval.cell import grade_cell, load_cell_results

    n = grade_cell(
        args.cell_dir,
        timeout=args.timeout,
        num_workers=args.num_workers,
        dapo=args.dapo,
        progress=not args.no_progress,
        extraction=args.extraction,
    )
    res = load_cell_results(args.cell_dir)
    print(f"{args.cell_dir}: graded {n} shard(s); {res.num_samples} responses, {res.timeouts} grading timeout(s)")
    return 0


def _cmd_metrics(args: argparse.Namespace) -> int:
    from verl_agrae.eval.cell import load_cell_results
    from verl_agrae.eval.report import compute_cell_metrics, per_problem_table

    res = load_cell_results(args.cell_dir)
    m = compute_cell_metrics(res, ks=args.ks, num_boot=args.num_boot)
    if args.per_problem:
        per_problem_table(res, m).to_csv(args.per_problem, index=False)
    if args.json:
        print(json.dumps(m.summary, indent=2))
        return 0
    s = m.summary
    print(f"{args.cell_dir}: {s['num_problems']} problems, n={s['n_min']}..{s['n_max']}, timeouts={s['timeouts']}")
    print(f"{'k':>6} {'Pass@k':>8} {'95% CI':>17} {'maj@k':>8}")
    for k in m.ks:
        v = s["pass@k"][str(k)]
        mj = s.get("maj@k", {}).get(str(k))
        maj_txt = f"{100 * mj['value']:8.2f}" if mj else ""
        print(f"{k:>6} {100 * v['value']:8.2f} [{100 * v['ci_low']:6.2f}, {100 * v['ci_high']:6.2f}] {maj_txt}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from verl_agrae.eval.cell import load_cell_results
    from verl_agrae.eval.metrics import default_ks, paired_comparison, pass_at_k_curve

    a, b = load_cell_results(args.cell_a), load_cell_results(args.cell_b)
    if a.uids != b.uids:
        raise ValueError("the two cells were not generated on the same problems (uids differ)")
    ks = args.ks or default_ks(int(min(a.n.max(), b.n.max())))
    pa, pb = pass_at_k_curve(a.n, a.c, ks), pass_at_k_curve(b.n, b.c, ks)
    print(f"A = {args.cell_a}\nB = {args.cell_b}\n{len(a.uids)} paired problems")
    print(f"{'k':>6} {'A':>7} {'B':>7} {'A-B':>7} {'95% CI':>17} {'p':>8} {'W/L/T':>12}")
    for i, k in enumerate(ks):
        r = paired_comparison(pa[i], pb[i], num_boot=args.num_boot, num_perm=args.num_perm)
        print(
            f"{k:>6} {100 * r.mean_a:7.2f} {100 * r.mean_b:7.2f} {100 * r.diff:+7.2f} "
            f"[{100 * r.ci_low:+6.2f}, {100 * r.ci_high:+6.2f}] {r.p_value:8.4f} {r.wins:>4}/{r.losses}/{r.ties}"
        )
    return 0


_COMMANDS = {
    "sweep": _cmd_sweep,
    "report": _cmd_report,
    "generate": _cmd_generate,
    "grade": _cmd_grade,
    "metrics": _cmd_metrics,
    "compare": _cmd_compare,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``verl-agrae eval`` (returns the exit status)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return _COMMANDS[args.command](args)
    except (FileNotFoundError, ValueError, IndexError, KeyError) as exc:
        sys.stderr.write(f"verl-agrae eval {args.command}: error: {exc}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
