"""Shared pytest fixtures. Nothing here downloads anything."""

from __future__ import annotations

import os

import pytest

# Everything that loads a model in tests must find it locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random-init Llama-style model + byte-level BPE tokenizer, built once per test session."""
    from verl_agrae.testing.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_model") / "model")
