"""Training entry point: verl's own trainer, with our packaged configs, CPU support and a run directory.

Usage (``verl-agrae train ...`` or ``python -m verl_agrae.trainer.main ...``)::

    verl-agrae train --config-name cpu_demo                      # the CPU demo (SmolLM2-135M, arithmetic)
    verl-agrae train data.train_files=... actor_rollout_ref.model.path=... trainer.n_gpus_per_node=8
    verl-agrae train --config-name cpu_demo --print-config        # show the resolved config and exit

Arguments are Hydra overrides of the chosen packaged config (``verl_agrae/trainer/config``), which is
composed on top of verl's installed ``ppo_trainer``; ``--config-dir DIR`` adds a folder of your own
configs. Our options live under ``run.*`` (see ``config/agrae.yaml``) and are not passed to verl.

What happens, in order: compose the config; resolve the demo model and generate the arithmetic data if
asked; on the CPU apply every required setting (:mod:`verl_agrae.trainer.cpu_overrides`); check the input
(:mod:`verl_agrae.trainer.checks`) and that ``agrae`` is registered with verl; set up the run directory
(refusing to resume one made with another config); run verl's ``run_ppo`` with the V1 or legacy
TaskRunner; then merge metrics, add the A-GRAE diagnostics, plot, and print where everything is.

Resuming (``trainer.resume_mode=auto`` with a checkpoint in the run directory) skips verl's validation before
training, which would only re-validate the checkpoint (``run.validate_on_resume=true`` keeps it). With
``AGRAE_STOP_FILE`` set, creating that file makes the run checkpoint at the end of its current step and stop
(:mod:`verl_agrae.trainer.stop_request`; ``slurm/train.sbatch`` does it before the time limit).

Exit status: 0 finished, 1 training failed, 2 bad input, 75 stopped on request after saving a checkpoint,
130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from verl_agrae.trainer.console import training_console

logger = logging.getLogger("verl_agrae.trainer")

__all__ = ["compose_config", "main", "prepare"]

CONFIG_DIR = Path(__file__).parent / "config"
DEFAULT_CONFIG = "agrae"
#: Everything the run printed (verl's metric lines, worker logs, warnings), in the run directory.
TRAIN_LOG = "train.log"


class TrainingSetupError(RuntimeError):
    """Raised for input the run cannot start with; main() prints it and returns 2."""


# ----------------------------------------------------------------------------------------------------
# Config composition
# ----------------------------------------------------------------------------------------------------


def compose_config(
    config_name: str = DEFAULT_CONFIG, overrides: list[str] | None = None, config_dir: str | None = None
) -> DictConfig:
    """Compose ``config_name`` from our packaged configs (plus ``config_dir``) over verl's ``ppo_trainer``.

    Args:
        config_name: a packaged config (``agrae``, ``cpu``, ``cpu_demo``) or one in ``config_dir``.
        overrides: Hydra overrides (``key=value``, ``+key=value``).
        config_dir: an extra folder searched before the packaged configs.

    Returns:
        The composed config (struct mode, unresolved).
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    # verl's installed configs are searched after ours (our configs start with `defaults: [ppo_trainer]`).
    search = ["pkg://verl.trainer.config"]
    if config_dir:
        search.insert(0, f"file://{Path(config_dir).resolve()}")
    overrides = [*(overrides or []), f"hydra.searchpath=[{','.join(search)}]"]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose(config_name=config_name, overrides=overrides)


# ----------------------------------------------------------------------------------------------------
# Preparation (everything before Ray)
# ----------------------------------------------------------------------------------------------------


def _set(config: DictConfig, key: str, value: Any) -> None:
    with open_dict(config):
        OmegaConf.update(config, key, value, merge=True, force_add=True)


def _user_set(key: str, overrides: list[str]) -> bool:
    from verl_agrae.trainer.cpu_overrides import _user_set as user_set
    from verl_agrae.trainer.cpu_overrides import overridden_keys

    return user_set(key, overridden_keys(overrides))


def _resolve_model(config: DictConfig) -> None:
    from verl_agrae.demo_model import DEMO_MODEL_URI, DemoModelMissing, ensure_demo_model

    path = str(OmegaConf.select(config, "actor_rollout_ref.model.path", default=""))
    if path == DEMO_MODEL_URI:
        try:
            local = ensure_demo_model()
        except DemoModelMissing as e:
            raise TrainingSetupError(str(e)) from e
        _set(config, "actor_rollout_ref.model.path", str(local))


def _resolve_data(config: DictConfig, run_cfg: DictConfig, data_dir: Path) -> None:
    """Write the arithmetic dataset into the run directory when the config leaves data files unset."""
    if OmegaConf.select(config, "data.train_files", default=None) and OmegaConf.select(
        config, "data.val_files", default=None
    ):
        return
    spec = OmegaConf.select(run_cfg, "arithmetic_data", default=None)
    if spec is None:
        raise TrainingSetupError("data.train_files and data.val_files must be set (verl RL parquet files)")
    from verl_agrae.data.arithmetic import task_options, write_arithmetic_dataset

    train, val = data_dir / "train.parquet", data_dir / "val.parquet"
    if not (train.is_file() and val.is_file()):
        try:
            options = task_options(OmegaConf.to_container(spec))
            # Every other key (suffix, ops, max_operand, max_factor, allow_negative) goes to the generator, which
            # names an unknown one in its TypeError.
            kwargs = {k: v for k, v in options.items() if k not in ("n_train", "n_val", "seed")}
            write_arithmetic_dataset(
                data_dir,
                n_train=int(options.get("n_train", 512)),
                n_val=int(options.get("n_val", 64)),
                seed=int(options.get("seed", 0)),
                **kwargs,
            )
        except (TypeError, ValueError) as e:
            raise TrainingSetupError(f"run.arithmetic_data: {e}") from e
    _set(config, "data.train_files", str(train))
    _set(config, "data.val_files", str(val))


def _leave_resources_to_the_cluster(config: DictConfig, overrides: list[str]) -> None:
    """Clear ``ray_init.num_cpus/num_gpus`` for a driver that joins a running Ray cluster (Ray refuses them)."""
    for key in ("ray_kwargs.ray_init.num_cpus", "ray_kwargs.ray_init.num_gpus"):
        if OmegaConf.select(config, key, default=None) is None:
            continue
        if _user_set(key, overrides):
            raise TrainingSetupError(
                f"{key} cannot be set when joining a running Ray cluster (RAY_ADDRESS="
                f"{os.environ.get('RAY_ADDRESS') or OmegaConf.select(config, 'ray_kwargs.ray_init.address')}): "
                "its nodes declare their resources with `ray start --num-cpus/--num-gpus` (slurm/: "
                "AGRAE_CPUS_PER_NODE, AGRAE_GPUS_PER_NODE). Remove the override."
            )
        logger.info("joining a running Ray cluster: %s from the config is not used", key)
        _set(config, key, None)


def prepare(
    config: DictConfig, overrides: list[str], *, check_local_gpu: bool = True
) -> tuple[DictConfig, DictConfig, dict[str, str]]:
    """Turn a composed config into what verl runs, checking the input on the way.

    Args:
        config: composed config (modified in place).
        overrides: the command-line overrides (explicit user choices are respected).
        check_local_gpu: refuse a GPU config when this machine has no GPU and would start its own Ray
            (False for ``--print-config``, which only shows the prepared config).

    Returns:
        ``(verl_config, run_config, worker_env)``: the config for verl (without ``run``), our ``run``
        options (with ``dir`` absolute), and the environment every Ray worker gets.

    Raises:
        TrainingSetupError: anything that makes the run impossible, with the reason.
    """
    from verl_agrae.trainer import checks
    from verl_agrae.trainer.cpu_overrides import (
        CpuSettingConflict,
        add_worker_env,
        apply_cpu_settings,
        cpu_requested,
        cpu_worker_env,
    )
    from verl_agrae.trainer.run_dir import RunDir

    with open_dict(config):
        run_cfg = config.pop("run", None) or OmegaConf.create({})
    OmegaConf.set_struct(run_cfg, False)
    run_dir = RunDir(OmegaConf.select(run_cfg, "dir", default=None) or f"runs/{config.trainer.experiment_name}")
    run_cfg.dir = str(run_dir.root)

    for key, path in (
        ("trainer.default_local_dir", run_dir.checkpoints),
        ("trainer.rollout_data_dir", run_dir.rollouts),
        ("trainer.validation_data_dir", run_dir.validation),
    ):
        if not _user_set(key, overrides):
            _set(config, key, str(path))

    try:
        # Checks of the config alone first: a typo must not cost a model conversion or leave data files behind.
        checks.check_estimator(config)
        checks.check_overlong_buffer(config)
        checks.check_reward_options(config)
        _resolve_model(config)
        _resolve_data(config, run_cfg, run_dir.data)
        checks.check_model_path(str(config.actor_rollout_ref.model.path))
        checks.check_data_files(config)
    except checks.PreflightError as e:
        raise TrainingSetupError(str(e)) from e

    # A driver joining a running cluster (RAY_ADDRESS, ray_kwargs.ray_init.address) uses the resources its nodes
    # declared (`ray start --num-cpus/--num-gpus`); Ray refuses num_cpus/num_gpus in ray.init() then.
    joins_cluster = bool(
        os.environ.get("RAY_ADDRESS") or OmegaConf.select(config, "ray_kwargs.ray_init.address", default=None)
    )
    if joins_cluster:
        _leave_resources_to_the_cluster(config, overrides)

    worker_env: dict[str, str] = {}
    if cpu_requested(config):
        cpu = run_cfg.get("cpu", {}) or {}
        try:
            changed = apply_cpu_settings(
                config,
                overrides,
                logical_cpus=cpu.get("ray_num_cpus"),
                logical_gpus=cpu.get("ray_num_gpus"),
                joins_cluster=joins_cluster,
            )
        except CpuSettingConflict as e:
            raise TrainingSetupError(str(e)) from e
        _set(config, "trainer.device", "cpu")
        logger.info("CPU run: %d settings applied: %s", len(changed), changed)
        worker_env.update(cpu_worker_env())
        try:
            checks.check_memory(config, int(config.trainer.nnodes) * int(config.trainer.n_gpus_per_node))
        except checks.PreflightError as e:
            raise TrainingSetupError(str(e)) from e
    else:
        import torch

        # A driver joining a running cluster needs no GPU itself.
        if check_local_gpu and not joins_cluster and not torch.cuda.is_available():
            raise TrainingSetupError(
                "no CUDA GPU is visible. To train on the CPU use a cpu_* config (--config-name cpu_demo) "
                "or add trainer.device=cpu."
            )

    try:
        checks.check_rollout_parallelism(config)
    except checks.PreflightError as e:
        raise TrainingSetupError(str(e)) from e

    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(
            str(config.actor_rollout_ref.model.path),
            trust_remote_code=bool(OmegaConf.select(config, "data.trust_remote_code", default=False)),
        )
        checks.check_prompt_lengths(config, tokenizer)
    except checks.PreflightError as e:
        raise TrainingSetupError(str(e)) from e

    add_worker_env(config, worker_env)
    return config, run_cfg, worker_env


# ----------------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------------


def _accuracy_key(row: dict[str, Any]) -> str | None:
    for pattern in ("/acc/mean@", "/reward/mean@"):
        keys = sorted(k for k in row if k.startswith("val-core/") and pattern in k)
        if keys:
            return keys[0]
    return None


def summarize(run_dir: Any, run_cfg: DictConfig, exit_code: int | None = None) -> dict[str, Any]:
    """Merge the attempts' metrics (A-GRAE diagnostics are logged live by our trainer modes), plot, summarise.

    ``exit_code`` (the last attempt's, see :func:`main`) goes into ``summary.json``: 0 means the run finished.
    """
    from verl_agrae.trainer.plots import plot_metrics

    rows = run_dir.merge_metrics()
    plots = plot_metrics(rows, run_dir.plots) if run_cfg.get("plots", True) else []

    val_rows = [r for r in rows if _accuracy_key(r)]
    key = _accuracy_key(val_rows[0]) if val_rows else None
    accuracy = {int(r["step"]): float(r[key]) for r in val_rows if key in r} if key else {}
    summary = {
        "run_dir": str(run_dir.root),
        "steps_logged": [r["step"] for r in rows],
        "validation_metric": key,
        "validation_accuracy": accuracy,
        "accuracy_before": accuracy[min(accuracy)] if accuracy else None,
        "accuracy_after": accuracy[max(accuracy)] if accuracy else None,
        "checkpoint_step": run_dir.latest_checkpoint_step(),
        "exit_code": exit_code,
        "metrics": str(run_dir.metrics_path),
        "plots": [str(p) for p in plots],
        "config": str(run_dir.config_path),
    }
    run_dir.write_summary(summary)
    return summary


# ----------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------


def _with_run(config: DictConfig, run_cfg: DictConfig) -> DictConfig:
    """The full config as the user wrote it (verl's part plus ``run``), for the run directory."""
    full = config.copy()
    OmegaConf.set_struct(full, False)
    full.run = run_cfg
    return full


def _parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="verl-agrae train",
        description="Train with verl's trainer and A-GRAE. Extra arguments are Hydra overrides (key=value).",
    )
    parser.add_argument("--config-name", "-c", default=DEFAULT_CONFIG, help="packaged config (agrae, cpu, cpu_demo)")
    parser.add_argument("--config-dir", default=None, help="extra folder of configs searched first")
    parser.add_argument("--print-config", action="store_true", help="print the prepared config and exit")
    parser.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="show verl's and the workers' full output live (it always goes to <run dir>/train.log)",
    )
    args, overrides = parser.parse_known_args(argv)
    bad = [o for o in overrides if o.startswith("-")]
    if bad:
        parser.error(f"unknown option(s) {bad}; overrides look like key=value")
    return args, overrides


def _wait_for_ray_gpus(needed: int, timeout_s: float = 180.0) -> None:
    """In a Ray session shared with earlier runs, wait until their placement groups are released.

    A finished run's TaskRunner dies when its handle is dropped and Ray then frees the workers and
    placement groups it owned, asynchronously; starting the next run before that fails verl's resource
    check ("Total available GPUs 0 is less than total desired GPUs").
    """
    import ray

    deadline = time.monotonic() + timeout_s
    while True:
        total = ray.cluster_resources().get("GPU", 0.0)
        available = ray.available_resources().get("GPU", 0.0)
        if available >= needed or total < needed:  # total < needed: verl's own check gives the message
            return
        if time.monotonic() > deadline:
            raise TrainingSetupError(
                f"the running Ray session has {available:g} of {total:g} GPUs free after {timeout_s:.0f}s; "
                f"this run needs {needed}. Another job holds them."
            )
        time.sleep(1.0)


def _run_verl(config: DictConfig) -> None:
    """verl's ``main_ppo`` body, minus its Hydra wrapper: validate, start Ray, run the TaskRunner."""
    import ray

    if ray.is_initialized():
        _wait_for_ray_gpus(int(config.trainer.nnodes) * int(config.trainer.n_gpus_per_node))
    from verl.trainer.main_ppo import TaskRunnerV1, run_ppo
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    if config.trainer.use_v1:
        runner = TaskRunnerV1
    else:
        from verl.trainer.main_ppo_v0 import TaskRunner as runner
    # The TaskRunner (and the workers it creates, which inherit its runtime_env) gets this run's environment
    # even when Ray was started earlier by someone else (a notebook, a test session sharing one Ray).
    env = OmegaConf.to_container(config.ray_kwargs.ray_init.runtime_env.get("env_vars", {}) or {}, resolve=True)
    run_ppo(config, task_runner_class=runner.options(runtime_env={"env_vars": env}) if env else runner)


def main(argv: list[str] | None = None) -> int:
    """Run training; returns the process exit code (0 ok, 1 training failed, 2 bad input, 75 stopped on request).

    The environment variables set for the run are restored afterwards, so calling ``main`` from Python
    (a notebook, a test) leaves the calling process as it was.
    """
    saved_env = dict(os.environ)
    try:
        return _main(argv)
    finally:
        os.environ.clear()
        os.environ.update(saved_env)


def _main(argv: list[str] | None) -> int:
    args, overrides = _parse(argv)
    if not logging.getLogger().handlers:
        # Quiet until the run's log file takes over (training_console); --verbose shows everything as it comes.
        level = logging.INFO if args.verbose or args.print_config else logging.WARNING
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from verl_agrae.trainer import stop_request
    from verl_agrae.trainer.cpu_overrides import add_worker_env
    from verl_agrae.trainer.run_dir import RECORD_DIR_ENV, ResumeConfigMismatch, RunDir

    try:
        config = compose_config(args.config_name, overrides, args.config_dir)
    except Exception as e:  # Hydra's messages name the bad key or missing config
        print(f"error: cannot compose config {args.config_name!r}: {e}", file=sys.stderr)
        return 2
    try:
        config, run_cfg, worker_env = prepare(config, overrides, check_local_gpu=not args.print_config)
    except TrainingSetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    # Select the platform in this process too (verl may already be imported; the registration is idempotent).
    os.environ.update(worker_env)
    if worker_env.get("VERL_PLATFORM") == "cpu":
        from verl_agrae.integration.backends import register_cpu_platform

        register_cpu_platform()

    if args.print_config:
        print(OmegaConf.to_yaml(_with_run(config, run_cfg), resolve=True))
        return 0

    try:
        from verl_agrae.integration.estimator import ensure_registered

        ensure_registered()
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    run_dir = RunDir(run_cfg.dir)
    resuming = run_dir.latest_checkpoint_step() > 0 and config.trainer.resume_mode != "disable"
    if run_dir.config_path.is_file():
        try:
            run_dir.check_resume(_with_run(config, run_cfg))
        except ResumeConfigMismatch as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if resuming and config.trainer.get("val_before_train", True) and not run_cfg.get("validate_on_resume", False):
        # Validation before training would re-validate the checkpoint, at every restart of a requeued job.
        _set(config, "trainer.val_before_train", False)
        print("resuming: skipping validation before training (run.validate_on_resume=true keeps it)")
    stop_file = os.environ.get(stop_request.STOP_FILE_ENV) or None
    if stop_file:
        stop_file = str(Path(stop_file).resolve())
        stop_request.ack_path(stop_file).unlink(missing_ok=True)  # a previous attempt's
        if stop_request.requested(stop_file):
            print(f"note: {stop_file} exists: this run saves and stops after its first step", file=sys.stderr)
    attempt = run_dir.new_attempt()
    start_step = run_dir.latest_checkpoint_step() + 1 if resuming else 1
    (attempt / "attempt.json").write_text(json.dumps({"start_step": start_step, "argv": list(argv or sys.argv[1:])}))
    run_dir.write_config(_with_run(config, run_cfg), attempt)
    add_env = {"VERL_FILE_LOGGER_PATH": str(attempt / "metrics.jsonl")}
    if stop_file:
        add_env[stop_request.STOP_FILE_ENV] = stop_file
    if run_cfg.get("record_advantages", False):
        add_env[RECORD_DIR_ENV] = str(attempt / "advantages")
    add_worker_env(config, add_env, replace=True)

    print(f"run directory: {run_dir.root} ({'resuming after step ' + str(start_step - 1) if resuming else 'new run'})")
    started = time.monotonic()
    import ray

    we_started_ray = not ray.is_initialized()
    code = 0
    failure: BaseException | None = None
    log_path = run_dir.root / TRAIN_LOG
    root_logger = logging.getLogger()
    quiet_level = root_logger.level
    total = OmegaConf.select(config, "trainer.total_training_steps", default=None)
    with training_console(
        log_path, attempt / "metrics.jsonl", total_steps=total, first_step=start_step, verbose=args.verbose
    ):
        root_logger.setLevel(min(quiet_level, logging.INFO))  # everything goes to train.log from here
        try:
            _run_verl(config)
        except KeyboardInterrupt:
            code = 130
        except Exception as e:
            logger.exception("training failed")
            failure, code = e, 1
        finally:
            if we_started_ray and ray.is_initialized():
                ray.shutdown()
            root_logger.setLevel(quiet_level)
    if code == 130:
        print("interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
    if failure is not None:
        from verl_agrae.trainer.failures import failed_role

        role = failed_role(failure)
        # Ray's text for a dead actor runs to pages: the role line goes before it and again after it, where a
        # terminal leaves it in view.
        headline = f"error: the {role} died" if role else "error: training failed"
        print(
            f"{headline}: {type(failure).__name__}: {failure}\n{headline}.\n"
            f"Checkpoints up to step {run_dir.latest_checkpoint_step()} are in {run_dir.checkpoints}; "
            f"rerun the same command to resume from there. Full log: {log_path}",
            file=sys.stderr,
        )

    saved_step = stop_request.acknowledged_step(stop_file)
    if code == 0 and saved_step is not None:
        print(
            f"stopped on request ({stop_file}) after saving step {saved_step}; "
            "rerun the same command (without the request file) to resume from there"
        )
        code = stop_request.STOPPED_EXIT_CODE

    summary = summarize(run_dir, run_cfg, exit_code=code)
    elapsed = time.monotonic() - started
    acc = summary["validation_accuracy"]
    if acc:
        steps = sorted(acc)
        print(f"validation accuracy ({summary['validation_metric']}):")
        for s in steps:
            print(f"  step {s:>4}: {acc[s]:.3f}")
        print(f"before: {acc[steps[0]]:.3f}  after: {acc[steps[-1]]:.3f}")
    print(
        f"training {'finished' if code == 0 else 'stopped'} in {elapsed / 60:.1f} min; results in {run_dir.root} "
        f"(full log: {TRAIN_LOG})"
    )
    print(f"  metrics: {summary['metrics']}\n  plots:   {run_dir.plots}\n  summary: {run_dir.summary_path}")
    return code


if __name__ == "__main__":
    sys.exit(main())
