"""Our entry point registers the `hf` rollout backend, the `cpu` platform and the `gloo` checkpoint engine, so verl's
own lookups resolve them by name; a foreign backend under one of our names is refused."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def test_verl_lookups_resolve_hf():
    import verl  # noqa: F401  (the entry point runs)
    from verl.workers.rollout.base import get_rollout_class
    from verl.workers.rollout.replica import RolloutReplica, get_rollout_replica_class

    from verl_agrae.integration import backends
    from verl_agrae.rollout.adapter import HFServerAdapter
    from verl_agrae.rollout.replica import HFReplica

    assert backends.hf_rollout_registered()
    assert get_rollout_class("hf", "async") is HFServerAdapter
    replica_cls = get_rollout_replica_class("hf")
    assert replica_cls is HFReplica and issubclass(replica_cls, RolloutReplica)
    backends.register_hf_rollout()  # idempotent
    backends.register_hf_rollout()
    assert get_rollout_class("hf", "async") is HFServerAdapter


def test_foreign_backend_under_the_same_name_is_refused():
    from verl.workers.rollout.base import _ROLLOUT_REGISTRY

    from verl_agrae.integration import backends

    backends.register_hf_rollout()
    saved = _ROLLOUT_REGISTRY[("hf", "async")]
    _ROLLOUT_REGISTRY[("hf", "async")] = "someone.else.Adapter"
    try:
        assert not backends.hf_rollout_registered()
        with pytest.raises(ValueError, match="someone.else.Adapter"):
            backends.register_hf_rollout()
    finally:
        _ROLLOUT_REGISTRY[("hf", "async")] = saved
    assert backends.hf_rollout_registered()


def test_gloo_engine_and_cpu_platform_resolve_by_name():
    import verl  # noqa: F401
    from verl.checkpoint_engine.base import CheckpointEngineRegistry
    from verl.plugin.platform import PlatformRegistry

    from verl_agrae.checkpoint_engine.gloo import GlooCheckpointEngine
    from verl_agrae.integration import backends
    from verl_agrae.platform.cpu_platform import PlatformCPU

    assert CheckpointEngineRegistry.get("gloo") is GlooCheckpointEngine
    assert PlatformRegistry.get("cpu") is PlatformCPU
    saved = CheckpointEngineRegistry._registry["gloo"]
    CheckpointEngineRegistry._registry["gloo"] = type("Other", (), {})
    try:
        with pytest.raises(ValueError, match="checkpoint engine named 'gloo'"):
            backends.register_gloo_checkpoint_engine()
    finally:
        CheckpointEngineRegistry._registry["gloo"] = saved


def test_backends_do_not_register_on_import():
    """With verl's plugin loading off, importing every backend module registers nothing: only the entry point does."""
    code = (
        "import verl_agrae.rollout.replica, verl_agrae.rollout.adapter\n"
        "import verl_agrae.platform.cpu_platform, verl_agrae.checkpoint_engine.gloo\n"
        "from verl.checkpoint_engine.base import CheckpointEngineRegistry\n"
        "from verl.plugin.platform import PlatformRegistry\n"
        "from verl.workers.rollout.base import _ROLLOUT_REGISTRY\n"
        "from verl.workers.rollout.replica import RolloutReplicaRegistry\n"
        "found = ['hf' in RolloutReplicaRegistry._registry, ('hf', 'async') in _ROLLOUT_REGISTRY,\n"
        "         'gloo' in CheckpointEngineRegistry._registry, 'cpu' in PlatformRegistry.registered_names()]\n"
        "assert not any(found), found\n"
        "from verl_agrae.integration.entry import activate\n"
        "activate()\n"
        "found = ['hf' in RolloutReplicaRegistry._registry, ('hf', 'async') in _ROLLOUT_REGISTRY,\n"
        "         'gloo' in CheckpointEngineRegistry._registry, 'cpu' in PlatformRegistry.registered_names()]\n"
        "assert all(found), found\n"
        "print('ok')\n"
    )
    env = {**os.environ, "VERL_USE_EXTERNAL_PLUGINS": "none"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


def test_import_verl_registers_everything_and_stays_light():
    """`import verl` (the entry point) registers every backend without loading the rollout server, the generator or
    model code, even when the first import of verl happens inside one of our backend modules."""
    code = (
        "import sys\n"
        "import verl_agrae.checkpoint_engine.gloo, verl_agrae.platform.cpu_platform\n"
        "from verl.checkpoint_engine.base import CheckpointEngineRegistry\n"
        "from verl.plugin.platform import PlatformRegistry\n"
        "from verl.workers.rollout.replica import RolloutReplicaRegistry\n"
        "assert 'hf' in RolloutReplicaRegistry._registry and 'gloo' in CheckpointEngineRegistry._registry\n"
        "assert 'cpu' in PlatformRegistry.registered_names()\n"
        "heavy = [m for m in ('verl_agrae.rollout.server', 'verl_agrae.rollout.generator', "
        "'transformers.models.llama.modeling_llama') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")
