"""AgraeConfig: defaults, reading verl's algorithm node, and errors that name the key."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from verl_agrae.config import AgraeConfig


def test_defaults_match_the_spec():
    c = AgraeConfig()
    assert (c.alpha, c.difficulty_shift, c.suppress_correct, c.epsilon, c.success_threshold) == (
        1.0,
        True,
        True,
        1e-6,
        None,
    )
    assert c.norm_adv_by_std_in_grpo is True


def test_reads_struct_mode_omegaconf_algorithm_node():
    node = OmegaConf.create(
        {"adv_estimator": "agrae", "norm_adv_by_std_in_grpo": False, "agrae": {"alpha": 0.5, "success_threshold": 0}}
    )
    OmegaConf.set_struct(node, True)
    c = AgraeConfig.from_algorithm(node)
    assert c.alpha == 0.5 and isinstance(c.alpha, float)
    assert c.success_threshold == 0.0
    assert c.norm_adv_by_std_in_grpo is False


def test_missing_agrae_node_and_none_give_defaults():
    node = OmegaConf.create({"adv_estimator": "agrae"})
    OmegaConf.set_struct(node, True)
    assert AgraeConfig.from_algorithm(node) == AgraeConfig()
    assert AgraeConfig.from_algorithm(None) == AgraeConfig()
    assert AgraeConfig.from_algorithm({"agrae": None}) == AgraeConfig()


def test_reads_verl_algoconfig_dataclass():
    from verl.trainer.config import AlgoConfig

    c = AgraeConfig.from_algorithm(AlgoConfig(norm_adv_by_std_in_grpo=False))
    assert c.norm_adv_by_std_in_grpo is False and c.alpha == 1.0


@pytest.mark.parametrize(
    ("agrae", "exc", "match"),
    [
        ({"alpha": 0}, ValueError, "algorithm.agrae.alpha must be > 0"),
        ({"alpha": -1.0}, ValueError, "algorithm.agrae.alpha must be > 0"),
        ({"alpha": "big"}, TypeError, "algorithm.agrae.alpha must be a number"),
        ({"alpha": float("nan")}, ValueError, "algorithm.agrae.alpha must be finite"),
        ({"epsilon": 0.0}, ValueError, "algorithm.agrae.epsilon must be > 0"),
        ({"difficulty_shift": "yes"}, TypeError, "algorithm.agrae.difficulty_shift must be true or false"),
        ({"suppress_correct": 1}, TypeError, "algorithm.agrae.suppress_correct must be true or false"),
        ({"success_threshold": True}, TypeError, "algorithm.agrae.success_threshold must be a number"),
        ({"alpah": 1.0}, ValueError, "unknown key\\(s\\) under algorithm.agrae: alpah"),
        ({"norm_adv_by_std_in_grpo": False}, ValueError, "unknown key"),
    ],
)
def test_bad_options_name_the_key(agrae, exc, match):
    with pytest.raises(exc, match=match):
        AgraeConfig.from_algorithm({"agrae": agrae})


def test_bad_norm_flag_names_algorithm_key():
    with pytest.raises(TypeError, match="algorithm.norm_adv_by_std_in_grpo"):
        AgraeConfig.from_algorithm({"norm_adv_by_std_in_grpo": "false"})


def test_non_mapping_agrae_node():
    with pytest.raises(TypeError, match="algorithm.agrae must be a mapping"):
        AgraeConfig.from_algorithm({"agrae": 3})


def test_reward_scheme_problem_names_the_keys():
    from verl_agrae.config import reward_scheme_problem

    dapo = OmegaConf.create(
        {
            "algorithm": {"adv_estimator": "agrae", "use_kl_in_reward": True, "agrae": {"success_threshold": None}},
            "reward": {"reward_manager": {"name": "dapo"}, "custom_reward_function": {"reward_kwargs": {"dapo": True}}},
        }
    )
    msg = reward_scheme_problem(dapo)
    assert "algorithm.agrae.success_threshold" in msg
    for key in ("reward_kwargs.dapo", "reward_manager.name=dapo", "use_kl_in_reward"):
        assert key in msg
    dapo.algorithm.agrae.success_threshold = 0.0
    assert reward_scheme_problem(dapo) is None
    grpo = OmegaConf.create({"algorithm": {"adv_estimator": "grpo", "use_kl_in_reward": True}})
    assert reward_scheme_problem(grpo) is None
    plain = OmegaConf.create({"algorithm": {"adv_estimator": "agrae"}, "reward": {"reward_manager": {"name": "naive"}}})
    assert reward_scheme_problem(plain) is None


def test_packaged_yaml_and_readme_state_the_dataclass_defaults():
    """The dataclass is the one source of the defaults; the packaged config and README's table must agree."""
    import dataclasses
    import re
    from pathlib import Path

    import yaml

    import verl_agrae

    defaults = {f.name: f.default for f in dataclasses.fields(AgraeConfig) if f.name != "norm_adv_by_std_in_grpo"}
    packaged = Path(verl_agrae.__file__).parent / "trainer" / "config" / "agrae.yaml"
    declared = yaml.safe_load(packaged.read_text())["algorithm"]["agrae"]
    assert declared == defaults
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    table = dict(re.findall(r"^\| `(\w+)` \| ([^|]+?) \|", readme, flags=re.M))
    for key, value in defaults.items():
        assert yaml.safe_load(table[key]) == value, key
