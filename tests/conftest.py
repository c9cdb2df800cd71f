"""Shared pytest fixtures. Nothing here downloads anything."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# Everything that loads a model in tests must find it locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Ray runs its workers at niceness 15: beside any busy process on the machine they would get a few percent of the
# cores and Ray-based tests would crawl for tens of minutes (seen with a 2-core CPU hog). `verl-agrae train` sets the
# same for CPU runs (trainer/cpu_overrides.py); this covers the Ray sessions tests start themselves.
os.environ.setdefault("RAY_worker_niceness", "0")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random-init Llama-style model + byte-level BPE tokenizer, built once per test session."""
    from verl_agrae.testing.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_model") / "model")


@pytest.fixture(scope="session")
def lively_model_dir(tmp_path_factory):
    """The tiny model with large random weights (N(0, 0.5^2)), so greedy decoding does not just repeat a token."""
    from verl_agrae.testing.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("lively") / "model", std=0.5)


@pytest.fixture(scope="session")
def arithmetic_data(tmp_path_factory) -> Callable[..., Path]:
    """Factory of synthetic arithmetic data directories (``train.parquet``, ``val.parquet``), each written once.

    ``arithmetic_data(n_train=32, n_val=8, seed=0)`` returns the directory for those arguments; tests only
    read it, so one directory is shared by every module asking for the same size.
    """
    from verl_agrae.data.arithmetic import write_arithmetic_dataset

    made: dict[tuple[int, int, int], Path] = {}

    def make(n_train: int = 32, n_val: int = 8, seed: int = 0) -> Path:
        key = (n_train, n_val, seed)
        if key not in made:
            out = tmp_path_factory.mktemp(f"arith_{n_train}_{n_val}_{seed}")
            write_arithmetic_dataset(out, n_train=n_train, n_val=n_val, seed=seed)
            made[key] = out
        return made[key]

    return make


@pytest.fixture(scope="module")
def data_dir(arithmetic_data):
    """32 training and 8 validation arithmetic problems (modules needing another size override this fixture)."""
    return arithmetic_data(n_train=32, n_val=8)


@pytest.fixture(scope="module")
def ray_num_cpus() -> int:
    """Logical CPUs of the module's Ray session (override in a module to change it)."""
    return 4


@pytest.fixture(scope="module")
def ray_session(request, ray_num_cpus) -> Iterator[Any]:
    """A local Ray session for one test module, namespaced by the module's name; yields the ``ray`` module."""
    ray = pytest.importorskip("ray")
    namespace = request.module.__name__.rpartition(".")[2]
    ray.init(num_cpus=ray_num_cpus, include_dashboard=False, log_to_driver=False, namespace=namespace)
    yield ray
    ray.shutdown()
