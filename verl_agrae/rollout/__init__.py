"""Hugging Face rollout backend ``hf`` for verl 0.9.1 (CPU or a single GPU, no vLLM needed).

Classes only: :class:`~verl_agrae.rollout.replica.HFReplica` (server actors) and
:class:`~verl_agrae.rollout.adapter.HFServerAdapter` (weight sync). They are registered with verl by our entry
point (:mod:`verl_agrae.integration.backends`) in every process that imports verl.

Select it with ``actor_rollout_ref.rollout.name=hf``; tune batching under
``actor_rollout_ref.rollout.engine_kwargs.hf`` (see :mod:`verl_agrae.rollout.settings` and docs/rollout.md).
"""
