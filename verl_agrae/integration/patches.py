"""Every patch verl-agrae applies to verl 0.9.1, one function per verl behaviour it answers.

Everything else is configuration (set by :mod:`verl_agrae.trainer.cpu_overrides`), the platform class itself,
or a registration through verl's own registries (:mod:`.backends`). Each patch here:

- names the verl behaviour it answers and the verl file/function that has it;
- checks, before touching anything, that verl still looks the way the patch assumes
  (:func:`check_targets` runs all checks; ``tests/test_integration_patches.py`` runs them against the
  installed verl so an upgrade fails loudly instead of silently training wrong);
- is idempotent. Patches 1-3 are applied only when the CPU platform is selected (:func:`apply_cpu_patches`);
  4 whenever verl is imported (it breaks any model build); 5 when our trainer modes are registered.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import logging
import sys
from collections.abc import Callable
from typing import Any

import torch

logger = logging.getLogger(__name__)

__all__ = [
    "PatchTargetChanged",
    "apply_cpu_patches",
    "applied_patches",
    "check_targets",
    "fsdp2_offload_policy_pins_memory",
    "process_group_backend_names_cpu_twice",
    "separate_async_logs_with_print_keywords",
    "trl_without_value_head_breaks_model_build",
    "valuehead_model_hardcodes_flash_attention",
]


class PatchTargetChanged(RuntimeError):
    """verl no longer looks the way a patch assumes (wrong verl version?)."""


_applied: set[str] = set()


def applied_patches() -> frozenset[str]:
    """Names of the patches applied in this process."""
    return frozenset(_applied)


def _once(patch: Callable[[], bool | None]) -> Callable[[], None]:
    """Make a patch idempotent and record it, under its function name, in :func:`applied_patches` (unless it
    returns False: nothing to answer in this process yet)."""

    @functools.wraps(patch)
    def apply() -> None:
        if patch.__name__ in _applied or patch() is False:
            return
        _applied.add(patch.__name__)
        logger.debug("applied patch %s", patch.__name__)

    return apply


def _source(obj: Any) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError) as e:  # pragma: no cover - only without source files
        raise PatchTargetChanged(f"cannot read the source of {obj!r}: {e}") from e


def _module_text(module: str) -> str:
    """Source text of a verl module, read from its file without importing it (an import would bind names early)."""
    spec = importlib.util.find_spec(module)
    _require(spec is not None and spec.origin is not None, f"module {module}", "verl")
    with open(spec.origin, encoding="utf-8") as f:
        return f.read()


def _require_in_module(module: str, *needles: str, what: str) -> None:
    """The module's source contains every needle (how verl binds or calls what a patch replaces)."""
    text = _module_text(module)
    _require(all(n in text for n in needles), what, module.replace(".", "/") + ".py")


def _target_function(
    module: Any, name: str, where: str, params: list[str] | None = None, source_has: tuple[str, str] | None = None
) -> Callable[..., Any]:
    """verl's function ``module.name`` (unwrapped when our patch is already applied), checked for its parameter
    list and for the code the patch answers (``source_has``: the code, and how to name it in an error)."""
    fn = getattr(module, name, None)
    _require(fn is not None, f"function {name}", where)
    fn = getattr(fn, "_verl_agrae_original", fn)
    if params is not None:
        _require(list(inspect.signature(fn).parameters) == params, f"{name}{tuple(params)}", where)
    if source_has is not None:
        _require(source_has[0] in _source(fn), source_has[1], f"{where} {name}")
    return fn


def _require(condition: bool, what: str, where: str) -> None:
    if not condition:
        raise PatchTargetChanged(
            f"verl changed under a verl-agrae patch: expected {what} in {where}. "
            "verl-agrae pins verl==0.9.1; install that version or update verl_agrae/integration/patches.py."
        )


# ---------------------------------------------------------------------------------------------------
# 1. Forward-only FSDP2 engines (the reference policy) pin their CPU-offloaded parameters.
#    verl/workers/engine/fsdp/transformer_impl.py, FSDPEngine._build_fsdp_module: for ``forward_only``
#    engines with strategy fsdp2 it builds ``CPUOffloadPolicy(pin_memory=True)``. Pinning host memory
#    needs an accelerator ("Cannot access accelerator device when none is available"). The engine takes
#    the class from verl/utils/fsdp_utils.py, which imports it from torch.distributed.fsdp; we hand both
#    modules a subclass that turns pinning off when no accelerator exists. It must be in place before
#    the engine module binds the name, so it is installed at plugin load (verl imports the engine later).
# ---------------------------------------------------------------------------------------------------


def _offload_policy_targets() -> None:
    import torch.distributed.fsdp as torch_fsdp

    _require(hasattr(torch_fsdp, "CPUOffloadPolicy"), "CPUOffloadPolicy", "torch.distributed.fsdp")
    fields = {f.name for f in dataclasses.fields(_original_offload_policy())}
    _require("pin_memory" in fields, "a dataclass field pin_memory", "torch CPUOffloadPolicy")
    _require_in_module(
        "verl.utils.fsdp_utils",
        "from torch.distributed.fsdp import CPUOffloadPolicy",
        what="`from torch.distributed.fsdp import CPUOffloadPolicy`",
    )
    _require_in_module(
        "verl.workers.engine.fsdp.transformer_impl",
        "CPUOffloadPolicy(pin_memory=True)",
        "from verl.utils.fsdp_utils import (",
        what="`CPUOffloadPolicy(pin_memory=True)` taken from verl.utils.fsdp_utils",
    )


def _original_offload_policy() -> type:
    import torch.distributed.fsdp as torch_fsdp

    cls = torch_fsdp.CPUOffloadPolicy
    # Unwrap our own subclass if it is already installed.
    return getattr(cls, "_verl_agrae_original", cls)


def _accelerator_available() -> bool:
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None:
        return bool(accelerator.is_available())
    return torch.cuda.is_available()


@_once
def fsdp2_offload_policy_pins_memory() -> None:
    """Make FSDP2's ``CPUOffloadPolicy`` skip memory pinning on machines without an accelerator.

    Answers ``FSDPEngine._build_fsdp_module`` in ``verl/workers/engine/fsdp/transformer_impl.py``
    (``CPUOffloadPolicy(pin_memory=True)`` for the reference policy). The subclass is still a
    ``CPUOffloadPolicy`` for torch's ``isinstance`` checks; with an accelerator it pins as before.

    Raises:
        PatchTargetChanged: if verl or torch no longer look as assumed.
    """
    _offload_policy_targets()
    import torch.distributed.fsdp as torch_fsdp

    original = _original_offload_policy()

    @dataclasses.dataclass
    class CPUOffloadPolicyNoPinWithoutAccelerator(original):  # type: ignore[misc, valid-type]
        """``CPUOffloadPolicy`` that drops ``pin_memory`` when no accelerator can pin host memory."""

        _verl_agrae_original = original

        def __post_init__(self) -> None:
            if self.pin_memory and not _accelerator_available():
                self.pin_memory = False

    torch_fsdp.CPUOffloadPolicy = CPUOffloadPolicyNoPinWithoutAccelerator
    # Modules that already bound the name (imported before the plugin) get the subclass too.
    for module_name in ("verl.utils.fsdp_utils", "verl.workers.engine.fsdp.transformer_impl"):
        module = sys.modules.get(module_name)
        if module is not None and getattr(module, "CPUOffloadPolicy", None) is not None:
            module.CPUOffloadPolicy = CPUOffloadPolicyNoPinWithoutAccelerator


# ---------------------------------------------------------------------------------------------------
# 2. The critic's value-head model is loaded with FlashAttention 2.
#    verl/utils/model.py, load_valuehead_model(local_path, torch_dtype, model_config, trust_remote_code)
#    passes attn_implementation="flash_attention_2" to both from_pretrained calls; on the CPU that
#    raises and verl reports the misleading "not a value head model, please install trl". The FSDP
#    engine imports the function lazily (inside _build_module), so replacing the module attribute is
#    enough. Our version loads the same two ways with sdpa.
# ---------------------------------------------------------------------------------------------------

_VALUEHEAD_PARAMS = ["local_path", "torch_dtype", "model_config", "trust_remote_code"]


def _valuehead_targets() -> Callable[..., Any]:
    import verl.utils.model as verl_model

    flash = 'attn_implementation="flash_attention_2"'
    where = "verl/utils/model.py"
    reason = (flash, f"{flash} (the reason for this patch)")
    fn = _target_function(verl_model, "load_valuehead_model", where, _VALUEHEAD_PARAMS, source_has=reason)
    _require(hasattr(verl_model, "patch_valuehead_model"), "function patch_valuehead_model", "verl/utils/model.py")
    _require_in_module(
        "verl.workers.engine.fsdp.transformer_impl",
        "from verl.utils.model import load_valuehead_model",
        what="a lazy `from verl.utils.model import load_valuehead_model`",
    )
    return fn


def _load_valuehead_model_sdpa(local_path: str, torch_dtype: Any, model_config: Any, trust_remote_code: bool) -> Any:
    """``verl.utils.model.load_valuehead_model`` with ``sdpa`` attention (same two loading routes)."""
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification
    from verl.utils.model import patch_valuehead_model

    common = dict(
        pretrained_model_name_or_path=local_path,
        torch_dtype=torch_dtype,
        config=model_config,
        attn_implementation="sdpa",
        trust_remote_code=trust_remote_code,
    )
    try:
        return AutoModelForTokenClassification.from_pretrained(**common)
    except Exception as token_cls_error:
        try:
            from trl.experimental.ppo import AutoModelForCausalLMWithValueHead
        except ImportError:
            try:
                from trl import AutoModelForCausalLMWithValueHead
            except ImportError as e:
                raise RuntimeError(
                    f"{local_path} has no token-classification head ({token_cls_error}) and trl, needed to add "
                    "a value head, is not installed"
                ) from e
        base = AutoModelForCausalLM.from_pretrained(**common)
        if hasattr(model_config, "text_config"):
            base.config.hidden_size = model_config.text_config.hidden_size
        model = AutoModelForCausalLMWithValueHead.from_pretrained(base)
        patch_valuehead_model(model)
        return model


@_once
def valuehead_model_hardcodes_flash_attention() -> None:
    """Load the critic's value-head model with ``sdpa`` instead of FlashAttention 2.

    Answers ``load_valuehead_model`` in ``verl/utils/model.py``.

    Raises:
        PatchTargetChanged: if verl no longer looks as assumed.
    """
    original = _valuehead_targets()
    import verl.utils.model as verl_model

    _load_valuehead_model_sdpa._verl_agrae_original = original  # type: ignore[attr-defined]
    verl_model.load_valuehead_model = _load_valuehead_model_sdpa


# ---------------------------------------------------------------------------------------------------
# 3. Worker process groups are created with a backend string that names the CPU twice.
#    verl/utils/distributed.py, initialize_global_process_group_ray(timeout_second=None, backend=None)
#    defaults to f"cpu:gloo,{get_device_name()}:{get_nccl_backend()}", which on the CPU is
#    "cpu:gloo,cpu:gloo": torch refuses it ("Duplicate device type cpu in backend string"). verl's
#    workers (verl/workers/engine_workers.py) import the function by name when their module loads, after
#    the plugin ran, so replacing the module attribute reaches them. Our version defaults to "cpu:gloo".
# ---------------------------------------------------------------------------------------------------

_PG_PARAMS = ["timeout_second", "backend"]


def _process_group_targets() -> Callable[..., Any]:
    import verl.utils.distributed as verl_dist

    default = 'f"cpu:gloo,{get_device_name()}:{get_nccl_backend()}"'
    reason = (f"backend or {default}", f"the default backend {default}")
    name = "initialize_global_process_group_ray"
    fn = _target_function(verl_dist, name, "verl/utils/distributed.py", _PG_PARAMS, source_has=reason)
    _require_in_module(
        "verl.workers.engine_workers",
        "from verl.utils.distributed import initialize_global_process_group_ray",
        what="`from verl.utils.distributed import initialize_global_process_group_ray`",
    )
    return fn


@_once
def process_group_backend_names_cpu_twice() -> None:
    """Create worker process groups with ``cpu:gloo`` instead of ``cpu:gloo,cpu:gloo`` on the CPU.

    Answers ``initialize_global_process_group_ray`` in ``verl/utils/distributed.py``. An explicit
    ``backend`` argument is passed through unchanged.

    Raises:
        PatchTargetChanged: if verl no longer looks as assumed.
    """
    original = _process_group_targets()
    import verl.utils.distributed as verl_dist

    @functools.wraps(original)
    def initialize_global_process_group_ray(timeout_second=None, backend=None):
        return original(timeout_second=timeout_second, backend=backend or "cpu:gloo")

    initialize_global_process_group_ray._verl_agrae_original = original  # type: ignore[attr-defined]
    verl_dist.initialize_global_process_group_ray = initialize_global_process_group_ray
    for module_name in ("verl.workers.engine_workers",):  # bound the name before the plugin ran
        module = sys.modules.get(module_name)
        if module is not None and hasattr(module, "initialize_global_process_group_ray"):
            module.initialize_global_process_group_ray = initialize_global_process_group_ray


# ---------------------------------------------------------------------------------------------------
# 4. Any model build crashes when a trl without the PPO value-head class is installed.
#    verl/models/transformers/monkey_patch.py, apply_monkey_patch: ``if is_trl_available():`` then imports
#    ``AutoModelForCausalLMWithValueHead`` from trl.experimental.ppo or trl, which trl >= 1.x no longer
#    ships: every actor/reference build fails with ImportError as soon as trl is installed (we install it
#    for the TRL benchmark). verl/utils/import_utils.py's is_trl_available only checks that trl exists;
#    ours also checks that the class verl imports is there. Not CPU specific: applied on every platform.
# ---------------------------------------------------------------------------------------------------


def _trl_targets() -> Callable[..., Any]:
    import verl.utils.import_utils as import_utils

    fn = _target_function(import_utils, "is_trl_available", "verl/utils/import_utils.py")
    _require_in_module(
        "verl.models.transformers.monkey_patch",
        "from verl.utils.import_utils import is_trl_available",
        "from trl import AutoModelForCausalLMWithValueHead",
        what="`is_trl_available()` guarding an import of trl's AutoModelForCausalLMWithValueHead",
    )
    return fn


def _trl_has_value_head() -> bool:
    if importlib.util.find_spec("trl") is None:
        return False
    for module_name in ("trl.experimental.ppo", "trl"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if hasattr(module, "AutoModelForCausalLMWithValueHead"):
            return True
    return False


@_once
def trl_without_value_head_breaks_model_build() -> bool:
    """Report trl as available to verl only when it has ``AutoModelForCausalLMWithValueHead``.

    Answers ``apply_monkey_patch`` in ``verl/models/transformers/monkey_patch.py`` (through
    ``is_trl_available`` in ``verl/utils/import_utils.py``). A no-op when trl is absent or complete.

    Raises:
        PatchTargetChanged: if verl no longer looks as assumed.
    """
    original = _trl_targets()
    if importlib.util.find_spec("trl") is None:
        return False  # nothing to answer; checked again if called later

    @functools.wraps(original)
    def is_trl_available() -> bool:
        return bool(original()) and _trl_has_value_head()

    is_trl_available._verl_agrae_original = original  # type: ignore[attr-defined]
    import verl.utils.import_utils as import_utils

    import_utils.is_trl_available = is_trl_available
    for module_name in ("verl.models.transformers.monkey_patch", "verl.utils.model"):
        module = sys.modules.get(module_name)
        if module is not None and hasattr(module, "is_trl_available"):
            module.is_trl_available = is_trl_available
    return True


# ---------------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------------
# 5. The separate_async trainer logs with print's keywords.
#    verl/trainer/ppo/v1/trainer_separate_async.py, PPOTrainerSeparateAsync._setup calls
#    ``logger.info(..., flush=True)`` when actor_rollout_ref.hybrid_engine=False; ``logging`` rejects ``flush``
#    with a TypeError, which kills every separate_async run without hybrid replicas (the layout with rollout
#    and training on disjoint pools). The module logger is wrapped in an adapter that drops the keyword.
# ---------------------------------------------------------------------------------------------------


class _LoggerWithoutFlush(logging.LoggerAdapter):
    """Drops ``print``'s ``flush=`` keyword, which ``logging`` rejects with a TypeError."""

    def log(self, level, msg, *args, flush=None, **kwargs):
        super().log(level, msg, *args, **kwargs)


def _separate_async_logger_targets() -> Any:
    from verl.trainer.ppo.v1 import trainer_separate_async

    where = "verl/trainer/ppo/v1/trainer_separate_async.py"
    log = getattr(trainer_separate_async, "logger", None)
    _require(isinstance(log, (logging.Logger, _LoggerWithoutFlush)), "a module-level `logger`", where)
    cls = getattr(trainer_separate_async, "PPOTrainerSeparateAsync", None)
    _require(cls is not None and hasattr(cls, "_setup"), "PPOTrainerSeparateAsync._setup", where)
    _require("flush=True" in _source(cls._setup), "a logger call with flush=True in _setup", where)
    return trainer_separate_async


@_once
def separate_async_logs_with_print_keywords() -> None:
    """Let ``PPOTrainerSeparateAsync._setup`` log with ``flush=True`` without a TypeError.

    Raises:
        PatchTargetChanged: if verl no longer looks as assumed (e.g. the ``flush=True`` call was fixed).
    """
    module = _separate_async_logger_targets()
    if not isinstance(module.logger, _LoggerWithoutFlush):
        module.logger = _LoggerWithoutFlush(module.logger, {})


_PATCHES: dict[str, tuple[Callable[[], None], Callable[[], Any]]] = {
    "fsdp2_offload_policy_pins_memory": (fsdp2_offload_policy_pins_memory, _offload_policy_targets),
    "valuehead_model_hardcodes_flash_attention": (
        valuehead_model_hardcodes_flash_attention,
        _valuehead_targets,
    ),
    "process_group_backend_names_cpu_twice": (process_group_backend_names_cpu_twice, _process_group_targets),
    "trl_without_value_head_breaks_model_build": (trl_without_value_head_breaks_model_build, _trl_targets),
    "separate_async_logs_with_print_keywords": (
        separate_async_logs_with_print_keywords,
        _separate_async_logger_targets,
    ),
}

#: Applied by apply_cpu_patches (the others are applied where their docstrings say).
_CPU_PATCHES = (
    "fsdp2_offload_policy_pins_memory",
    "valuehead_model_hardcodes_flash_attention",
    "process_group_backend_names_cpu_twice",
    "trl_without_value_head_breaks_model_build",
)


def check_targets() -> None:
    """Check every patch target against the installed verl without patching anything.

    Raises:
        PatchTargetChanged: naming the first target that no longer matches.
    """
    for _, check in _PATCHES.values():
        check()


def apply_cpu_patches() -> frozenset[str]:
    """Apply every patch a CPU run needs (idempotent).

    Returns:
        The names of the patches now applied in this process.
    """
    for name in _CPU_PATCHES:
        _PATCHES[name][0]()
    return applied_patches()
