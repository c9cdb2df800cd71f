"""``verl-agrae data``: write the arithmetic task or convert local benchmark files into verl RL parquet.

Examples::

    verl-agrae data arithmetic data/arith --n-train 1024 --n-val 128
    verl-agrae data math MATH/train -o data/math/train.parquet
    verl-agrae data math500 math500_test.jsonl -o data/eval/math500.parquet --split test
    verl-agrae data gsm8k gsm8k/test.parquet -o data/gsm8k/test.parquet --split test
"""

from __future__ import annotations

import argparse
import logging
import sys

from verl_agrae.data.arithmetic import write_arithmetic_dataset
from verl_agrae.data.converters import CONVERTERS, convert
from verl_agrae.data.rl_parquet import PROMPT_SUFFIX, DatasetFormatError


def build_parser() -> argparse.ArgumentParser:
    """Argument parser with one subcommand per dataset."""
    parser = argparse.ArgumentParser(prog="verl-agrae data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET")

    arith = sub.add_parser("arithmetic", help="synthetic arithmetic task (CPU demo)")
    arith.add_argument("out_dir", help="directory receiving train.parquet and val.parquet")
    arith.add_argument("--n-train", type=int, default=1024)
    arith.add_argument("--n-val", type=int, default=128)
    arith.add_argument("--seed", type=int, default=0)
    arith.add_argument("--no-suffix", action="store_true", help="do not append the \\boxed{} instruction")

    for name, spec in CONVERTERS.items():
        p = sub.add_parser(name, help=spec.description)
        p.add_argument("inputs", nargs="+", help="local file(s) or directories (.parquet, .jsonl, .json, .csv)")
        p.add_argument("-o", "--output", required=True, help="destination .parquet")
        p.add_argument("--split", default="train", help="split name stored in extra_info.split (default: train)")
        p.add_argument("--data-source", default=None, help=f"data_source column (default: {spec.data_source})")
        p.add_argument("--question-column", default=None, help="force the problem column")
        p.add_argument("--answer-column", default=None, help="force the answer (math: solution) column")
        p.add_argument("--suffix", default=PROMPT_SUFFIX, help="instruction appended to every problem")
        p.add_argument("--no-suffix", action="store_true", help="append no instruction")
        p.add_argument("--system-prompt", default=None, help="optional system message")
        p.add_argument("--skip-invalid", action="store_true", help="drop rows with empty question/answer")
        p.add_argument("--limit", type=int, default=None, help="keep only the first N valid rows")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``verl-agrae data``; returns the exit status (1 on a bad input file, with the reason on stderr)."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.dataset == "arithmetic":
            paths = write_arithmetic_dataset(
                args.out_dir,
                n_train=args.n_train,
                n_val=args.n_val,
                seed=args.seed,
                suffix=None if args.no_suffix else PROMPT_SUFFIX,
            )
            print(
                f"arithmetic: wrote {args.n_train} train rows to {paths['train']}, "
                f"{args.n_val} val rows to {paths['val']}"
            )
            return 0
        result = convert(
            args.dataset,
            args.inputs,
            args.output,
            split=args.split,
            data_source=args.data_source,
            question_column=args.question_column,
            answer_column=args.answer_column,
            suffix=None if args.no_suffix else args.suffix,
            system_prompt=args.system_prompt,
            skip_invalid=args.skip_invalid,
            limit=args.limit,
        )
    except (DatasetFormatError, FileNotFoundError, ValueError) as exc:
        print(f"verl-agrae data {args.dataset}: error: {exc}", file=sys.stderr)
        return 1
    print(result.summary())
    for where in result.skipped[:10]:
        print(f"  skipped {where}")
    if len(result.skipped) > 10:
        print(f"  ... and {len(result.skipped) - 10} more")
    return 0
