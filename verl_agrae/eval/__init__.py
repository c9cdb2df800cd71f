"""Pass@k evaluation: datasets -> generate (HF / vLLM) -> grade -> unbiased metrics -> report; sweeps.

Modules: :mod:`metrics` (Pass@k, mean@n, maj@k, bootstrap CIs, paired tests), :mod:`datasets`,
:mod:`sampling`, :mod:`hf_backend`, :mod:`vllm_backend`, :mod:`shards`, :mod:`cell`, :mod:`report`,
:mod:`sweep`, :mod:`cli`. Importing this package imports nothing heavy (no torch, no vLLM).
"""
