"""Checks run before Ray starts, so bad input fails in seconds with a message instead of a hang.

Each check raises :class:`PreflightError` naming the key, file or row at fault.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

logger = logging.getLogger(__name__)

__all__ = [
    "PreflightError",
    "check_data_files",
    "check_estimator",
    "check_memory",
    "check_model_path",
    "check_overlong_buffer",
    "check_prompt_lengths",
    "check_reward_options",
    "check_rollout_parallelism",
]

#: Rows checked for prompt length per file (tokenising millions of prompts would delay the start).
MAX_ROWS_LENGTH_CHECK = 5000
#: RAM each FSDP rank process costs beyond its tensors (interpreter, torch, verl imports): about 1 GiB.
PROCESS_OVERHEAD_BYTES = 2**30


class PreflightError(ValueError):
    """The run cannot start; the message says why and what to change."""


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def check_model_path(path: str) -> None:
    """A local-looking model path must exist and hold a ``config.json``."""
    p = Path(path).expanduser()
    if not p.exists() and not path.startswith(("/", ".", "~")):
        return  # a hub id ("org/name"): verl downloads it (unless HF_HUB_OFFLINE is set)
    if not (p / "config.json").is_file():
        raise PreflightError(f"actor_rollout_ref.model.path={path!r}: no Hugging Face checkpoint there (config.json)")


def check_data_files(config: DictConfig) -> None:
    """Train/val parquet files exist and have the columns verl and the reward need."""
    import pyarrow.parquet as pq

    prompt_key = OmegaConf.select(config, "data.prompt_key", default="prompt")
    source_key = OmegaConf.select(config, "data.reward_fn_key", default="data_source")
    for key in ("data.train_files", "data.val_files"):
        files = _as_list(OmegaConf.select(config, key, default=None))
        if not files:
            raise PreflightError(f"{key} is not set")
        for f in files:
            p = Path(f).expanduser()
            if not p.is_file():
                raise PreflightError(f"{key}: file not found: {f}")
            try:
                names = set(pq.read_schema(p).names)
            except Exception as e:
                raise PreflightError(f"{key}: {f} is not a readable parquet file ({e})") from e
            missing = [c for c in (prompt_key, source_key, "reward_model") if c not in names]
            if missing:
                raise PreflightError(
                    f"{key}: {f} lacks column(s) {missing} (has {sorted(names)}); verl's RL format needs "
                    f"{prompt_key!r} (chat messages), {source_key!r} and 'reward_model' (with 'ground_truth')"
                )


def check_prompt_lengths(config: DictConfig, tokenizer: Any) -> None:
    """Every prompt (after the chat template) fits ``data.max_prompt_length``, unless verl filters them."""
    if OmegaConf.select(config, "data.filter_overlong_prompts", default=False):
        return
    import pyarrow.parquet as pq

    limit = int(OmegaConf.select(config, "data.max_prompt_length", default=512))
    prompt_key = OmegaConf.select(config, "data.prompt_key", default="prompt")
    node = OmegaConf.select(config, "data.apply_chat_template_kwargs", default=None)
    template_kwargs = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})
    for key in ("data.train_files", "data.val_files"):
        for f in _as_list(OmegaConf.select(config, key, default=None)):
            column = pq.read_table(Path(f).expanduser(), columns=[prompt_key]).column(prompt_key)
            for i, messages in enumerate(column.to_pylist()[:MAX_ROWS_LENGTH_CHECK]):
                if isinstance(messages, str):
                    messages = [{"role": "user", "content": messages}]
                ids = tokenizer.apply_chat_template(
                    messages, add_generation_prompt=True, tokenize=True, **template_kwargs
                )
                if hasattr(ids, "keys"):  # transformers 5 may return a BatchEncoding
                    ids = ids["input_ids"]
                if len(ids) > limit:
                    raise PreflightError(
                        f"{key}: {f} row {i} has a {len(ids)}-token prompt, longer than data.max_prompt_length="
                        f"{limit}. Raise the limit or set data.filter_overlong_prompts=True to drop such rows."
                    )


def check_estimator(config: DictConfig) -> None:
    """``algorithm.adv_estimator`` names an estimator verl knows; A-GRAE options are valid."""
    from verl.trainer.ppo import core_algos

    name = str(OmegaConf.select(config, "algorithm.adv_estimator", default=""))
    known = set(core_algos.ADV_ESTIMATOR_REGISTRY) | {e.value for e in core_algos.AdvantageEstimator}
    if name not in known:
        raise PreflightError(f"algorithm.adv_estimator={name!r} is unknown; known estimators: {sorted(known)}")
    if name == "agrae":
        from verl_agrae.config import AgraeConfig

        try:
            AgraeConfig.from_algorithm(config.algorithm)
        except (TypeError, ValueError) as e:
            raise PreflightError(f"algorithm.agrae: {e}") from e
        from verl_agrae.config import reward_scheme_problem

        problem = reward_scheme_problem(config)
        if problem:
            raise PreflightError(problem)


def check_overlong_buffer(config: DictConfig) -> None:
    """DAPO's overlong buffer must be shorter than ``data.max_response_length``.

    verl's ``dapo`` reward manager penalises a response by ``(length - (max_len - buffer)) / buffer``; with a
    buffer as long as the response limit (e.g. the 512-token buffer of our ``dapo`` config on a 128-token test
    run) every response, even a one-token one, is penalised, silently.
    """
    node = "reward.reward_kwargs.overlong_buffer_cfg"
    if not OmegaConf.select(config, f"{node}.enable", default=False):
        return
    buffer = int(OmegaConf.select(config, f"{node}.len", default=0) or 0)
    limit = int(OmegaConf.select(config, "data.max_response_length", default=0) or 0)
    if buffer <= 0 or buffer >= limit:
        raise PreflightError(
            f"{node}.len={buffer} must be > 0 and < data.max_response_length={limit} (DAPO's overlong shaping "
            "penalises the last `len` tokens before the limit)"
        )


def check_reward_options(config: DictConfig) -> None:
    """``reward.custom_reward_function.reward_kwargs.extraction`` names an extraction mode of our reward.

    verl calls the reward function only after rollout; a typo there would otherwise fail the first training step.
    """
    key = "reward.custom_reward_function.reward_kwargs.extraction"
    mode = OmegaConf.select(config, key, default=None)
    if mode is None:
        return
    from verl_agrae.reward.extract import check_mode

    try:
        check_mode(mode)
    except ValueError as e:
        raise PreflightError(f"{key}: {e}") from e


def _model_bytes(model_path: str) -> int:
    p = Path(model_path).expanduser()
    files = list(p.glob("*.safetensors")) + list(p.glob("*.bin"))
    return sum(f.stat().st_size for f in files)


def check_memory(config: DictConfig, logical_gpus: int, available_bytes: int | None = None) -> int:
    """Refuse a CPU run whose logical GPUs (FSDP ranks) cannot fit in RAM.

    Estimate: every rank is a process (``PROCESS_OVERHEAD_BYTES``) holding a full fp32 copy while it
    loads the model (4 bytes/param each), their shards of weights, grads and Adam moments (16 bytes/param
    in total) and the reference model, plus one full copy in the rollout server. The fixed processes
    (task runner, agent loop, reward) and activations are not counted: this is a lower bound, so a
    refusal is certain to be right.

    Returns:
        The estimated bytes.

    Raises:
        PreflightError: when the estimate exceeds the available RAM.
    """
    import psutil

    model_bytes = _model_bytes(str(OmegaConf.select(config, "actor_rollout_ref.model.path")))
    if model_bytes == 0:
        return 0
    params = model_bytes / 4  # fp32 checkpoint bytes -> parameters (an over-estimate for bf16 files)
    per_param = 16 + (4 if OmegaConf.select(config, "actor_rollout_ref.actor.use_kl_loss", default=False) else 0)
    estimate = int(params * per_param + params * 4 * (logical_gpus + 1) + logical_gpus * PROCESS_OVERHEAD_BYTES)
    available = available_bytes if available_bytes is not None else int(psutil.virtual_memory().available)
    if estimate > available:
        raise PreflightError(
            f"{logical_gpus} logical GPU(s) (trainer.nnodes x trainer.n_gpus_per_node) need about "
            f"{estimate / 2**30:.1f} GiB for this model on the CPU, but only {available / 2**30:.1f} GiB of RAM "
            "is available. Use fewer ranks (trainer.n_gpus_per_node=1) or a smaller model."
        )
    return estimate


def _int(config: DictConfig, key: str, default: int) -> int:
    value = OmegaConf.select(config, key, default=None)
    return default if value is None else int(value)


def check_rollout_parallelism(config: DictConfig) -> int:
    """Each pool that serves rollouts splits into whole replicas of tensor x data x pipeline parallel size.

    verl builds ``devices // (tp * dp * pp)`` rollout replicas per pool (verl/workers/rollout/llm_server.py) and
    says nothing when that is 0: the run then waits for generations that never come. The pools: the actor's
    (``trainer.nnodes`` x ``trainer.n_gpus_per_node``), which serves rollouts except with
    ``trainer.v1.trainer_mode`` separate_async and ``actor_rollout_ref.hybrid_engine=False``; and, with
    separate_async, the rollout's own (``actor_rollout_ref.rollout.nnodes`` x ``n_gpus_per_node``).

    Returns:
        The number of rollout replicas verl will build, over all pools.

    Raises:
        PreflightError: naming the keys, when a pool holds no whole replica or does not divide evenly.
    """
    rollout = "actor_rollout_ref.rollout"
    sizes = {
        f"{rollout}.{k}": _int(config, f"{rollout}.{k}", 1)
        for k in ("tensor_model_parallel_size", "data_parallel_size", "pipeline_model_parallel_size")
    }
    for key, size in sizes.items():
        if size < 1:
            raise PreflightError(f"{key}={size}: must be at least 1")
    per_replica = 1
    for size in sizes.values():
        per_replica *= size
    parallel = " x ".join(f"{k}={v}" for k, v in sizes.items() if v != 1 or k.endswith("tensor_model_parallel_size"))
    separate = str(OmegaConf.select(config, "trainer.v1.trainer_mode", default="") or "").endswith("separate_async")
    pools = [rollout] if separate else []
    if not separate or bool(OmegaConf.select(config, "actor_rollout_ref.hybrid_engine", default=True)):
        pools.insert(0, "trainer")
    replicas = 0
    for pool in pools:
        nodes, per_node = _int(config, f"{pool}.nnodes", 0), _int(config, f"{pool}.n_gpus_per_node", 0)
        devices = nodes * per_node
        where = f"{pool}.nnodes={nodes} x {pool}.n_gpus_per_node={per_node} = {devices} device(s)"
        if devices < per_replica:
            raise PreflightError(
                f"{where} cannot hold one rollout replica of {parallel} = {per_replica} device(s): verl would "
                f"start no rollout server there. Lower {rollout}.tensor_model_parallel_size or give the pool devices."
            )
        if devices % per_replica:
            raise PreflightError(
                f"{where} is not a multiple of the rollout replica size {parallel} = {per_replica}: "
                f"{devices % per_replica} device(s) would sit idle. Make them divisible."
            )
        replicas += devices // per_replica
    return replicas
