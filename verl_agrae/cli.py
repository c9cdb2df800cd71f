"""``verl-agrae``: one command, subcommands imported lazily (verl, Ray and torch load only when needed)."""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module exposing ``main(argv) -> int``, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("verl_agrae.trainer.main", "train with verl's trainer (packaged config + Hydra overrides)"),
    "eval": ("verl_agrae.eval.cli", "Pass@k evaluation: generate, grade, report, sweeps"),
    "data": ("verl_agrae.data.cli", "convert local datasets into verl RL parquet"),
    "doctor": ("verl_agrae.doctor", "check every Ray node: versions, GPUs, `agrae` registered"),
    "compare": ("verl_agrae.compare", "train methods x seeds, evaluate Pass@k, report paired differences"),
}


def _usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {text}" for name, (_, text) in SUBCOMMANDS.items())
    return f"usage: verl-agrae <command> [args...]\n\ncommands:\n{rows}\n"


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``verl-agrae <command> ...`` to the command's module."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write(_usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        sys.stderr.write(f"verl-agrae: unknown command {name!r}\n\n{_usage()}")
        return 2
    module_name = SUBCOMMANDS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            sys.stderr.write(f"verl-agrae: command {name!r} is not available in this installation ({e})\n")
            return 2
        raise
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
