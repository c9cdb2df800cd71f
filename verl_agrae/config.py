"""A-GRAE options: one documented, validated dataclass read from verl's ``algorithm.agrae`` node.

:class:`AgraeConfig` is the one place every option is defined, defaulted, documented and validated; the
packaged YAML (``trainer/config/agrae.yaml``) declares the same keys with the same values (a test holds it to
the dataclass) and nothing else in the code restates a default. The method itself is in ``docs/agrae.md``.

verl does not declare ``algorithm.agrae`` in its schema, so on the command line new keys need a ``+``
(``+algorithm.agrae.alpha=0.5``) unless a packaged config declares them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["AgraeConfig", "reward_scheme_problem"]


@dataclass(frozen=True)
class AgraeConfig:
    """A-GRAE estimator options (``algorithm.agrae``).

    Attributes:
        alpha: Suppression threshold (> 0). Positive advantages are multiplied by ``min(1, mu / alpha)``,
            so correct responses are damped until the batch mean success rate ``mu`` reaches ``alpha``.
            The authors use 1.0 for math and 0.5 for Geometry3K and medical VQA.
        difficulty_shift: Apply the dynamic difficulty attention shift ``w(p, mu)`` (spec step 2), which
            moves the update's focus from easy to hard prompts as ``mu`` rises. Off for ablations.
        suppress_correct: Apply the asymmetric suppression of correct responses (spec step 3), the
            exploration term. Off for ablations. With both terms off A-GRAE is exactly verl's ``grpo``.
        epsilon: Numerical epsilon added to the group std (step 1) and to both denominators of
            ``w(p, mu)`` (step 2). 1e-6 as in verl's GRPO.
        success_threshold: ``None`` when rewards already lie in [0, 1] (binary math rewards,
            0.9*acc + 0.1*format) and are the success. Otherwise a float ``tau`` with success
            ``1[r > tau]``: needed for DAPO's +1/-1 scores (use 0.0), overlong penalties and KL in the
            reward, where the raw reward is not a success rate.
        norm_adv_by_std_in_grpo: Divide the group-centred reward by the group std (GRPO) or not
            (Dr.GRPO). Not an ``agrae`` key: read from ``algorithm.norm_adv_by_std_in_grpo`` as verl does.
    """

    alpha: float = 1.0
    difficulty_shift: bool = True
    suppress_correct: bool = True
    epsilon: float = 1e-6
    success_threshold: float | None = None
    norm_adv_by_std_in_grpo: bool = True

    def __post_init__(self) -> None:
        _check_bool("difficulty_shift", self.difficulty_shift)
        _check_bool("suppress_correct", self.suppress_correct)
        _check_bool("norm_adv_by_std_in_grpo", self.norm_adv_by_std_in_grpo, node="algorithm")
        alpha = _check_number("alpha", self.alpha)
        if not alpha > 0:
            raise ValueError(f"algorithm.agrae.alpha must be > 0, got {self.alpha!r}")
        eps = _check_number("epsilon", self.epsilon)
        if not eps > 0:
            raise ValueError(f"algorithm.agrae.epsilon must be > 0, got {self.epsilon!r}")
        if self.success_threshold is not None:
            _check_number("success_threshold", self.success_threshold)
        # Normalise ints (alpha: 1) to floats so the frozen instance always holds floats.
        object.__setattr__(self, "alpha", float(alpha))
        object.__setattr__(self, "epsilon", float(eps))
        if self.success_threshold is not None:
            object.__setattr__(self, "success_threshold", float(self.success_threshold))

    @classmethod
    def from_algorithm(cls, algorithm: Any) -> AgraeConfig:
        """Read options from verl's ``algorithm`` node (OmegaConf DictConfig, dict, verl AlgoConfig or None).

        Raises:
            ValueError: unknown keys under ``algorithm.agrae`` or invalid values, naming the key.
            TypeError: wrong value types, naming the key.
        """
        if algorithm is None:
            return cls()
        norm = _get(algorithm, "norm_adv_by_std_in_grpo", True)
        node = _get(algorithm, "agrae", None)
        options = _to_dict(node)
        allowed = {f.name for f in fields(cls)} - {"norm_adv_by_std_in_grpo"}
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise ValueError(
                f"unknown key(s) under algorithm.agrae: {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
            )
        return cls(norm_adv_by_std_in_grpo=norm, **options)


def reward_scheme_problem(config: Any) -> str | None:
    """Why a full verl config would feed A-GRAE rewards that are not success rates, or None.

    A-GRAE reads the success rate from the reward itself unless ``algorithm.agrae.success_threshold`` is set.
    These verl settings put rewards outside [0, 1], so without a threshold the run would stop at the first
    advantage computation (or, in the authors' code, take ``sqrt`` of a negative number): DAPO's +1/-1 scores
    (``reward.custom_reward_function.reward_kwargs.dapo``), the ``dapo`` reward manager's overlong penalty,
    an overlong buffer, and KL in the reward (``algorithm.use_kl_in_reward``). Checked before Ray starts.

    Args:
        config: the composed training config (``DictConfig`` or nested dicts).

    Returns:
        A message naming the keys at fault, or None when A-GRAE is not selected or the scheme is fine.
    """

    def sel(path: str, default: Any = None) -> Any:
        node = config
        for part in path.split("."):
            node = _get(node, part, None) if node is not None else None
        return default if node is None else node

    if sel("algorithm.adv_estimator") != "agrae" or sel("algorithm.agrae.success_threshold") is not None:
        return None
    causes = []
    if bool(sel("reward.custom_reward_function.reward_kwargs.dapo", False)):
        causes.append("reward.custom_reward_function.reward_kwargs.dapo=true gives +1/-1 scores")
    if sel("reward.reward_manager.name") == "dapo" or sel("reward.reward_manager") == "dapo":
        causes.append("reward.reward_manager.name=dapo adds an overlong penalty below 0")
    if bool(sel("reward.reward_kwargs.overlong_buffer_cfg.enable", False)):
        causes.append("reward.reward_kwargs.overlong_buffer_cfg.enable=true adds a penalty below 0")
    if bool(sel("algorithm.use_kl_in_reward", False)):
        causes.append("algorithm.use_kl_in_reward=true shifts rewards by a KL penalty")
    if not causes:
        return None
    return (
        "algorithm.agrae.success_threshold is null but the rewards are not success rates in [0, 1]: "
        + "; ".join(causes)
        + ". Set algorithm.agrae.success_threshold (0.0 for DAPO's +1/-1 scores)."
    )


def _get(node: Any, key: str, default: Any) -> Any:
    if isinstance(node, Mapping):
        return node.get(key, default)
    getter = getattr(node, "get", None)
    if callable(getter):  # OmegaConf DictConfig and verl's BaseConfig both offer .get
        return getter(key, default)
    return getattr(node, key, default)


def _to_dict(node: Any) -> dict[str, Any]:
    if node is None:
        return {}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(node, DictConfig):
            return dict(OmegaConf.to_container(node, resolve=True))
    except ImportError:  # omegaconf comes with verl; the pure math must not need it
        pass
    if isinstance(node, Mapping):
        return dict(node)
    if dataclasses.is_dataclass(node):
        return dataclasses.asdict(node)
    raise TypeError(f"algorithm.agrae must be a mapping of options, got {type(node).__name__}")


def _check_bool(key: str, value: Any, node: str = "algorithm.agrae") -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{node}.{key} must be true or false, got {value!r} ({type(value).__name__})")


def _check_number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"algorithm.agrae.{key} must be a number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise ValueError(f"algorithm.agrae.{key} must be finite, got {value!r}")
    return float(value)
