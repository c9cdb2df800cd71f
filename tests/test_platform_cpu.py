"""The CPU platform, selected with VERL_PLATFORM=cpu, as verl sees it (in a fresh process each time,
because verl resolves its platform once per process)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent(
    """
    import json, os, sys
    import torch
    import verl  # loads our entry point in this process, as in every Ray worker (the one activation route)
    from verl.plugin.platform import get_platform
    from verl.utils import device as vdev
    out = {}
    p = get_platform()
    out["platform"] = type(p).__name__
    out["device_name"] = vdev.get_device_name()
    out["backend"] = vdev.get_nccl_backend()
    import verl.utils.distributed as vd
    out["device_id"] = vdev.get_device_id()
    out["engine_device"] = os.environ.get("VERL_ENGINE_DEVICE")
    dm = vdev.get_torch_device()
    out["mem_info_ok"] = dm.mem_get_info()[1] > dm.mem_get_info()[0] > 0
    x = torch.randn(3)
    state = dm.get_rng_state(); a = torch.rand(2); dm.set_rng_state(state); b = torch.rand(2)
    out["rng_roundtrip"] = bool(torch.equal(a, b))
    out["to_device"] = str(x.to(vdev.get_device_id()).device)
    out["max_mem_ge_mem"] = dm.max_memory_allocated() >= dm.memory_allocated() > 0
    from verl_agrae.integration.patches import applied_patches
    out["patches"] = sorted(applied_patches())
    import verl.utils.fsdp_utils as fu
    out["ref_offload_pins"] = fu.CPUOffloadPolicy(pin_memory=True).pin_memory
    import verl.utils.model as vm
    out["valuehead_loader"] = vm.load_valuehead_model.__module__
    # The engine lookup verl's workers do (row 6).
    from verl.workers.engine.base import EngineRegistry
    engine_cls = EngineRegistry.get_engine_cls("language_model", "fsdp2")
    out["engine"] = engine_cls.__name__
    # Patch 10 waits for the engine module's import (the lookup above imported it).
    out["patches_after_engine_import"] = sorted(set(applied_patches()) - set(out["patches"]))
    out["response_logits_wrapped"] = hasattr(engine_cls.prepare_model_outputs, "_verl_agrae_original")

    # gloo process group with verl's backend string (row 5), then FSDP2 with the reference policy's
    # offload setting on a small module (row 13): this is where an unpatched run fails.
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1], RANK="0", WORLD_SIZE="1")
    vd.initialize_global_process_group_ray()  # verl's own call (what workers run), patched
    out["pg_backend"] = str(dist.get_backend())
    from torch.distributed.device_mesh import init_device_mesh
    mesh = init_device_mesh("cpu", (1,))
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    w1, b1, w2, b2 = (t.detach().clone() for t in (model[0].weight, model[0].bias, model[2].weight, model[2].bias))
    fu.fully_shard(model, mesh=mesh, offload_policy=fu.CPUOffloadPolicy(pin_memory=True))
    y = model(torch.ones(1, 4))
    expected = torch.relu(torch.ones(1, 4) @ w1.T + b1) @ w2.T + b2
    out["fsdp2_forward_ok"] = bool(torch.allclose(y, expected, atol=1e-6))
    dist.destroy_process_group()
    print("PROBE" + json.dumps(out))
    """
)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _probe(env_extra: dict[str, str]) -> dict:
    env = {**os.environ, **env_extra}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(_free_port())], env=env, capture_output=True, text=True, timeout=300
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("PROBE")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("PROBE") :])


@pytest.fixture(scope="module")
def cpu_probe():
    return _probe({"VERL_PLATFORM": "cpu"})


def test_cpu_platform_is_selected_by_verl_platform_env(cpu_probe):
    assert cpu_probe["platform"] == "PlatformCPU"
    assert cpu_probe["device_name"] == "cpu"


def test_process_groups_use_gloo(cpu_probe):
    # verl's own initialize_global_process_group_ray would ask for "cpu:gloo,cpu:gloo" (row 5).
    assert cpu_probe["backend"] == "gloo"
    assert cpu_probe["pg_backend"] == "cpu:gloo"  # what the patched verl call asked for, accepted by torch


def test_device_id_is_usable_as_a_torch_device(cpu_probe):
    assert cpu_probe["device_id"] == "cpu"
    assert cpu_probe["to_device"] == "cpu"


def test_device_module_answers_like_torch_cuda(cpu_probe):
    assert cpu_probe["mem_info_ok"]
    assert cpu_probe["rng_roundtrip"]
    assert cpu_probe["max_mem_ge_mem"]


def test_fsdp_engine_is_found_for_the_cpu(cpu_probe):
    assert cpu_probe["engine_device"] == "cuda"
    assert cpu_probe["engine"] == "FSDPEngineWithLMHead"


def test_patches_are_applied_and_effective(cpu_probe):
    import importlib.util

    expected = [
        "fsdp2_offload_policy_pins_memory",
        "process_group_backend_names_cpu_twice",
        "valuehead_model_hardcodes_flash_attention",
    ]
    if importlib.util.find_spec("trl") is not None:  # only answered where trl is installed (the `bench` extra)
        expected.append("trl_without_value_head_breaks_model_build")
    assert cpu_probe["patches"] == sorted(expected)
    assert cpu_probe["patches_after_engine_import"] == ["padded_forward_projects_every_position"]
    assert cpu_probe["response_logits_wrapped"]
    assert cpu_probe["ref_offload_pins"] is False
    assert cpu_probe["valuehead_loader"] == "verl_agrae.integration.patches"
    assert cpu_probe["fsdp2_forward_ok"]


def test_nothing_changes_without_the_cpu_request():
    import torch

    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only fallback")
    # Same probe without VERL_PLATFORM: the platform is not auto-selected, patches are not applied.
    env = {**os.environ}
    env.pop("VERL_PLATFORM", None)
    code = (
        "import verl\n"
        "from verl.plugin.platform import PlatformRegistry\n"
        "from verl_agrae.integration.patches import applied_patches\n"
        "import verl.utils.model as vm\n"
        "print('PROBE', 'cpu' in PlatformRegistry.registered_names(), sorted(applied_patches()),"
        " vm.load_valuehead_model.__module__)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("PROBE")]
    assert proc.returncode == 0 and line, proc.stderr[-2000:]
    applied = ["'trl_without_value_head_breaks_model_build'"] if importlib.util.find_spec("trl") else []
    assert line[0] == f"PROBE True [{', '.join(applied)}] verl.utils.model"


def test_valuehead_model_loads_with_sdpa(tiny_model_dir):
    """The patched critic loader works on a CPU-only machine (verl's original asks for FlashAttention 2)."""
    import torch
    from transformers import AutoConfig

    from verl_agrae.integration.patches import _load_valuehead_model_sdpa

    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.num_labels = 1
    model = _load_valuehead_model_sdpa(str(tiny_model_dir), torch.float32, config, False)
    assert model.config._attn_implementation == "sdpa"
    ids = torch.tensor([[1, 2, 3, 4]])
    out = model(input_ids=ids)
    values = out.logits if hasattr(out, "logits") else out[2]
    assert values.shape[:2] == (1, 4)
