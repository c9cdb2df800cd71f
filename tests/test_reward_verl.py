"""The reward as verl 0.9.1 uses it: loaded by path through ``custom_reward_function``, called by the naive
reward manager from executor threads, and called from a threaded Ray actor."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from verl_agrae.reward import verl_entry_path

ITEMS = [  # (data_source, solution, ground truth, acc)
    ("math", r"So the answer is $\boxed{\frac{3}{4}}$.", "0.75", True),
    ("math", r"\boxed{\sqrt 2}", r"\sqrt{2}", True),
    ("math", r"\boxed{(1,2]}", "[1,2)", False),
    ("math", "no idea", "5", False),
    ("arithmetic", "12 + 30 = 42", "42", True),
    ("arithmetic", r"\boxed{41}", "42", False),
]


def _config(path: str, **reward_kwargs):
    return OmegaConf.create(
        {
            "reward": {
                "custom_reward_function": {"path": path, "name": "compute_score", "reward_kwargs": reward_kwargs},
                "reward_manager": {"source": "register", "name": "naive"},
            }
        }
    )


@pytest.mark.parametrize(
    "path",
    [verl_entry_path(), "pkg://verl_agrae.reward", verl_entry_path().replace("verl_entry.py", "__init__.py")],
    ids=["entry-file", "pkg", "package-init-file"],
)
def test_verl_loads_compute_score(path):
    from verl.trainer.ppo.reward import get_custom_reward_fn

    fn = get_custom_reward_fn(_config(path, dapo=True))
    for source, sol, truth, acc in ITEMS:
        res = fn(data_source=source, solution_str=sol, ground_truth=truth, extra_info={"index": 0})
        assert res["acc"] is acc
        assert res["score"] == (1.0 if acc else -1.0)  # reward_kwargs.dapo reached compute_score


def test_extraction_mode_from_reward_kwargs_and_packaged_config():
    from verl.trainer.ppo.reward import get_custom_reward_fn

    from verl_agrae.trainer.checks import PreflightError, check_reward_options
    from verl_agrae.trainer.main import compose_config

    prose = "Adding the parts gives 7 + 5 = 12, so she has 12 marbles."
    recall = get_custom_reward_fn(_config(verl_entry_path(), extraction="recall"))
    strict = get_custom_reward_fn(_config(verl_entry_path(), extraction="strict"))
    assert recall(data_source="math", solution_str=prose, ground_truth="12", timeout=60)["acc"] is True
    assert strict(data_source="math", solution_str=prose, ground_truth="12")["acc"] is False
    # The packaged configs name the option (recall) where verl reads reward options; an override reaches it and a
    # typo stops the run before Ray starts.
    cfg = compose_config("grpo", [])
    assert cfg.reward.custom_reward_function.reward_kwargs.extraction == "recall"
    check_reward_options(cfg)
    cfg = compose_config("dapo", [])  # DAPO grades explicit final answers only, as DAPO's own verifier does
    assert cfg.reward.custom_reward_function.reward_kwargs.extraction == "strict"
    check_reward_options(cfg)
    cfg = compose_config("dapo_agrae", ["reward.custom_reward_function.reward_kwargs.extraction=recall"])
    assert cfg.reward.custom_reward_function.reward_kwargs.extraction == "recall"
    cfg = compose_config("grpo", ["reward.custom_reward_function.reward_kwargs.extraction=fuzzy"])
    with pytest.raises(PreflightError, match="reward_kwargs.extraction: extraction mode must be one of"):
        check_reward_options(cfg)


class _ByteTokenizer:
    """Stands in for the HF tokenizer: token ids are UTF-8 bytes."""

    def decode(self, ids, skip_special_tokens=True):
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


def _data_proto(source: str, solution: str, truth: str):
    from verl import DataProto

    prompt = torch.tensor([[1, 2, 3]])
    resp_ids = list(solution.encode()) or [32]
    width = len(resp_ids) + 4  # right padding, as verl's rollout produces
    responses = torch.zeros((1, width), dtype=torch.long)
    responses[0, : len(resp_ids)] = torch.tensor(resp_ids)
    mask = torch.zeros((1, 3 + width), dtype=torch.long)
    mask[0, : 3 + len(resp_ids)] = 1
    return DataProto.from_dict(
        tensors={"prompts": prompt, "responses": responses, "attention_mask": mask},
        non_tensors={
            "data_source": np.array([source], dtype=object),
            "reward_model": np.array([{"ground_truth": truth}], dtype=object),
            "extra_info": np.array([{"index": 0}], dtype=object),
        },
    )


def test_naive_reward_manager_runs_it_in_executor_threads():
    from verl.trainer.ppo.reward import load_reward_manager

    manager = load_reward_manager(_config(verl_entry_path()), _ByteTokenizer())

    async def run_all():
        return await asyncio.gather(*(manager.run_single(_data_proto(s, sol, t)) for s, sol, t, _ in ITEMS))

    outputs = manager.loop.run_until_complete(run_all())
    for (_, _, _, acc), out in zip(ITEMS, outputs, strict=True):
        assert out["reward_score"] == (1.0 if acc else 0.0)
        assert out["reward_extra_info"]["acc"] is acc
        assert set(out["reward_extra_info"]) >= {"score", "acc", "pred", "timeout"}


@pytest.fixture(scope="module")
def ray_num_cpus():
    return 1  # conftest's ray_session with one logical CPU


def test_compute_score_in_threaded_ray_actor(ray_session):
    ray = ray_session

    @ray.remote(num_cpus=0, max_concurrency=4)
    class Scorer:
        def __init__(self, path: str):
            from verl.utils.import_utils import load_extern_object

            self.fn = load_extern_object(path, "compute_score")

        def score(self, source, sol, truth, timeout=60.0):  # ordinary items must not time out on a busy machine
            import threading

            start = time.monotonic()
            res = self.fn(data_source=source, solution_str=sol, ground_truth=truth, timeout=timeout)
            return res, time.monotonic() - start, threading.current_thread() is threading.main_thread()

        def pool_stats(self):
            from verl_agrae.reward import get_default_pool

            return get_default_pool().stats()

    actor = Scorer.remote(verl_entry_path())
    results = ray.get([actor.score.remote(s, sol, t) for s, sol, t, _ in ITEMS * 3], timeout=300)
    for (_, _, _, acc), (res, _, _) in zip(ITEMS * 3, results, strict=True):
        assert res["acc"] is acc
    # With the pool warm: a power tower next to ordinary items. The 1 s timeout must hold on an actor thread
    # (not the main thread, where alarm-based timeouts would at least be possible).
    slow = actor.score.remote("math", r"\boxed{9^{9^{9^{9}}}}", "1", 1.0)
    quick = [actor.score.remote(s, sol, t) for s, sol, t, _ in ITEMS]
    res, elapsed, on_main = ray.get(slow, timeout=300)
    assert res["timeout"] is True and res["acc"] is False
    assert elapsed <= 1.0 + 4.0  # killed at its limit (unbounded without the hard kill), with slack for load
    assert not on_main
    assert [r["acc"] for r, _, _ in ray.get(quick, timeout=300)] == [acc for *_, acc in ITEMS]
    assert ray.get(actor.pool_stats.remote()).timeouts == 1
