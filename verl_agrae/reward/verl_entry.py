"""File for verl's ``reward.custom_reward_function.path`` (with ``name=compute_score``).

verl loads this file by path under a generated module name, so it must use absolute imports only. Options go in
``reward.custom_reward_function.reward_kwargs`` (verl passes them as keyword arguments), e.g.
``+reward.custom_reward_function.reward_kwargs.dapo=true`` or ``...reward_kwargs.timeout=10``.
"""

from verl_agrae.reward.score import compute_score

__all__ = ["compute_score"]
