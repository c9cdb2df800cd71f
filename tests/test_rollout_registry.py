"""Importing ``verl_agrae.rollout`` makes ``rollout.name=hf`` resolve in verl's own lookups."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_verl_lookups_resolve_hf():
    from verl.workers.rollout.base import get_rollout_class
    from verl.workers.rollout.replica import RolloutReplica, get_rollout_replica_class

    import verl_agrae.rollout as rollout
    from verl_agrae.rollout.adapter import HFServerAdapter
    from verl_agrae.rollout.replica import HFReplica

    assert rollout.is_registered()
    assert get_rollout_class("hf", "async") is HFServerAdapter
    replica_cls = get_rollout_replica_class("hf")
    assert replica_cls is HFReplica and issubclass(replica_cls, RolloutReplica)
    rollout.register()  # idempotent
    rollout.register()
    assert get_rollout_class("hf", "async") is HFServerAdapter


def test_foreign_backend_under_the_same_name_is_refused():
    from verl.workers.rollout.base import _ROLLOUT_REGISTRY

    import verl_agrae.rollout as rollout

    saved = _ROLLOUT_REGISTRY[("hf", "async")]
    _ROLLOUT_REGISTRY[("hf", "async")] = "someone.else.Adapter"
    try:
        assert not rollout.is_registered()
        with pytest.raises(ValueError, match="someone.else.Adapter"):
            rollout.register()
    finally:
        _ROLLOUT_REGISTRY[("hf", "async")] = saved
    assert rollout.is_registered()


@pytest.mark.slow
def test_import_is_cheap_and_registers_in_a_fresh_process():
    code = (
        "import sys, verl_agrae.rollout as r; "
        "assert r.is_registered(); "
        "heavy = [m for m in ('verl_agrae.rollout.server', 'verl_agrae.rollout.generator', "
        "'transformers.models.llama.modeling_llama') if m in sys.modules]; "
        "assert not heavy, heavy; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")
