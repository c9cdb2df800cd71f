"""Compose (and check) the config an example would train with, without launching anything.

Used by the examples' ``DRY_RUN=1`` mode::

    python examples/compose_config.py --config-name agrae -- data.train_batch_size=1024 ...

It composes exactly what ``verl-agrae train --config-name NAME OVERRIDES...`` composes (the packaged config on
top of verl's installed ``ppo_trainer``, via :func:`verl_agrae.trainer.main.compose_config`), prints it as
YAML, and runs verl's own ``validate_config`` on it (batch sizes divisible by the GPUs, micro batches set, ...)
unless ``--no-validate``. Exit status 1 with the reason on stderr when either step fails.
"""

from __future__ import annotations

import argparse
import sys
import warnings


def compose_and_validate(
    config_name: str, overrides: list[str], *, validate: bool = True, config_dir: str | None = None
):
    """Compose the training config and check it with verl's validator.

    Args:
        config_name: Packaged config name (``agrae``) or one in ``config_dir``.
        overrides: Hydra overrides, as given to ``verl-agrae train``.
        validate: Run ``verl.utils.config.validate_config``.
        config_dir: Extra config folder (as ``verl-agrae train --config-dir``).

    Returns:
        The composed ``DictConfig``.
    """
    from verl_agrae.trainer.main import compose_config

    config = compose_config(config_name, list(overrides), config_dir=config_dir)
    if "run" in config:
        # Our own `run.*` options are consumed by verl-agrae train and never reach verl.
        config = config.copy()
        from omegaconf import open_dict

        with open_dict(config):
            config.pop("run")
    if validate:
        from verl.trainer.ppo.utils import need_critic, need_reference_policy
        from verl.utils.config import validate_config

        with warnings.catch_warnings():
            # Expected for every GRPO-family setting: no critic.
            warnings.filterwarnings("ignore", message="Disabled critic")
            validate_config(
                config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config)
            )
    return config


def main(argv: list[str] | None = None) -> int:
    """CLI: print the composed config; 1 on a composition or validation error."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-name", default="agrae")
    parser.add_argument("--config-dir", default=None)
    parser.add_argument("--no-validate", action="store_true")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    try:
        config = compose_and_validate(
            args.config_name, args.overrides, validate=not args.no_validate, config_dir=args.config_dir
        )
    except Exception as exc:  # Hydra and verl raise many types; the message is what the user needs
        print(f"config does not compose/validate: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    from omegaconf import OmegaConf

    print(OmegaConf.to_yaml(config))
    print("# composed" + ("" if args.no_validate else " and validated with verl's validate_config"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
