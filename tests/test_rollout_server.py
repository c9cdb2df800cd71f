"""The ``hf`` rollout server driven directly (no Ray): batching, verl's request protocol, weights, lifecycle."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest
import torch

from verl_agrae.rollout.server import HFRolloutServer
from verl_agrae.rollout.settings import HFRolloutSettings
from verl_agrae.testing.rollout import rollout_configs

GREEDY = {"temperature": 0.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "logprobs": True}
PROMPTS = [[5 + i, 40 + 3 * i, 100 + i, 7][: 1 + i % 4] for i in range(12)]
EVENT_TIMEOUT_S = 300.0  # only bounds a hang: waits below end on an event, long before this on any machine


async def _run_ready_tasks() -> None:
    """Let every task that is ready run until it next suspends.

    Not a timed wait: asyncio runs ready callbacks in FIFO order, so after one yield a task created just before
    has run its first step (for a request: up to the generation gate, or into the batcher), whatever the load.
    """
    await asyncio.sleep(0)


def _serve(model_dir, scenario, http=False, **kwargs):
    """Run ``scenario(server)`` on a freshly launched server inside one event loop."""
    hf = {k: kwargs.pop(k) for k in list(kwargs) if k in {"max_batch_size", "max_wait_ms", "device", "dtype"}}
    hf.setdefault("num_threads", 1)  # see test_rollout_generator.model
    config, model_config = rollout_configs(model_dir, **kwargs, **hf)

    async def main():
        server = HFRolloutServer(config, model_config)
        await server.launch_server(start_http=http)
        try:
            return await scenario(server)
        finally:
            await server.shutdown()

    return asyncio.run(main())


def test_concurrent_requests_share_generate_calls_and_match_sequential(lively_model_dir):
    async def scenario(server):
        concurrent = await asyncio.gather(
            *[
                server.generate(prompt_ids=p, sampling_params=dict(GREEDY), request_id=str(i))
                for i, p in enumerate(PROMPTS)
            ]
        )
        batches_concurrent = server.get_stats()["num_batches"]
        sequential = [
            await server.generate(prompt_ids=p, sampling_params=dict(GREEDY), request_id="s") for p in PROMPTS
        ]
        return concurrent, sequential, batches_concurrent, server.get_stats()

    concurrent, sequential, batches, stats = _serve(lively_model_dir, scenario, max_batch_size=8, max_wait_ms=100)
    assert stats["num_requests"] == 2 * len(PROMPTS)
    assert batches < len(PROMPTS)  # 12 concurrent requests, at most 8 per generate call: 2 calls
    assert max(stats["batch_sizes"]) <= 8 and stats["decode_seconds"] > 0
    assert stats["num_batches"] == batches + len(PROMPTS)  # one at a time: one call each
    assert [o.token_ids for o in concurrent] == [o.token_ids for o in sequential]
    assert len({tuple(o.token_ids) for o in concurrent}) > 1
    for c, s in zip(concurrent, sequential, strict=True):
        torch.testing.assert_close(torch.tensor(c.log_probs), torch.tensor(s.log_probs), atol=1e-4, rtol=0)
        assert c.stop_reason == "completed" and len(c.token_ids) <= 16


def test_request_protocol_limits_and_errors(lively_model_dir):
    async def scenario(server):
        out = {}
        out["default"] = await server.generate(
            prompt_ids=PROMPTS[0], sampling_params={"temperature": 1.0}, request_id="a"
        )
        out["capped"] = await server.generate(
            prompt_ids=list(range(3, 60)), sampling_params={**GREEDY, "max_tokens": 50}, request_id="b"
        )
        out["n"] = await server.generate_n(PROMPTS[1], {"temperature": 1.0, "n": 3, "seed": 4, "max_tokens": 6})
        for name, call in {
            "too_long": server.generate(prompt_ids=list(range(3, 70)), sampling_params={}, request_id="c"),
            "n_in_generate": server.generate(prompt_ids=[5], sampling_params={"n": 2}, request_id="d"),
            "unknown_key": server.generate(prompt_ids=[5], sampling_params={"beam_width": 2}, request_id="e"),
            "image": server.generate(prompt_ids=[5], sampling_params={}, request_id="f", image_data=["x"]),
        }.items():
            try:
                await call
            except (ValueError, NotImplementedError) as e:
                out[name] = e
        return out

    # max_model_len=64 through the rollout config: prompts must leave room to generate.
    config_kwargs = {"response_length": 16, "prompt_length": 32}
    out = _serve_with_max_len(lively_model_dir, scenario, max_model_len=64, **config_kwargs)
    assert out["default"].log_probs is None and 1 <= len(out["default"].token_ids) <= 16
    assert len(out["capped"].token_ids) == 64 - 57  # max_tokens=50 capped by the context left
    assert len(out["n"]) == 3 and all(len(o.token_ids) <= 6 for o in out["n"])
    assert "max_model_len=64" in str(out["too_long"])
    assert "generate_n" in str(out["n_in_generate"])
    assert "beam_width" in str(out["unknown_key"])
    assert isinstance(out["image"], NotImplementedError)


def _serve_with_max_len(model_dir, scenario, max_model_len, **kwargs):
    config, model_config = rollout_configs(model_dir, num_threads=1, **kwargs)
    config.max_model_len = max_model_len

    async def main():
        server = HFRolloutServer(config, model_config)
        await server.launch_server(start_http=False)
        try:
            return await scenario(server)
        finally:
            await server.shutdown()

    return asyncio.run(main())


def test_weight_update_changes_generations_and_rejects_bad_tensors(lively_model_dir):
    async def scenario(server):
        before = await server.generate(prompt_ids=PROMPTS[2], sampling_params=dict(GREEDY), request_id="x")
        weights = await server.get_weights()
        new = {k: 1.5 * v + 0.1 for k, v in weights.items() if v.is_floating_point()}
        loaded = await server.load_weights(list(new.items()))
        report = await server.finish_weight_update(global_steps=7)
        after = await server.generate(prompt_ids=PROMPTS[2], sampling_params=dict(GREEDY), request_id="y")
        errors = []
        for bad in ([("no.such.weight", torch.zeros(1))], [(next(iter(new)), torch.zeros(3, 3, 3))]):
            try:
                await server.load_weights(bad)
            except (KeyError, ValueError) as e:
                errors.append(e)
        return before, after, loaded, report, errors, new, await server.get_weights()

    before, after, loaded, report, errors, new, current = _serve(lively_model_dir, scenario)
    assert loaded == len(new) and report["missing"] == []
    assert after.extra_fields["global_steps"] == 7 and before.extra_fields["global_steps"] is None
    assert after.token_ids != before.token_ids
    for k, v in new.items():
        torch.testing.assert_close(current[k], v)
    assert isinstance(errors[0], KeyError) and "no.such.weight" in str(errors[0])
    assert isinstance(errors[1], ValueError) and "shape" in str(errors[1])


def test_abort_parks_new_requests_until_resume(lively_model_dir):
    async def scenario(server):
        long = {**GREEDY, "max_tokens": 10_000, "ignore_eos": True}
        running = [
            asyncio.create_task(server.generate(prompt_ids=p, sampling_params=dict(long), request_id=str(i)))
            for i, p in enumerate(PROMPTS[:3])
        ]
        # Abort once every request holds a token: the batch is then ~1000 steps from its end (max_model_len
        # caps max_tokens), so the abort lands mid-decode however slow the machine. The timeout only turns a
        # hang into a failure.
        await asyncio.wait_for(server.batcher.decoding.wait(), timeout=EVENT_TIMEOUT_S)
        report = await server.abort_all_requests()
        aborted = await asyncio.gather(*running)
        parked = asyncio.create_task(
            server.generate(prompt_ids=PROMPTS[0], sampling_params=dict(GREEDY), request_id="p")
        )
        await _run_ready_tasks()
        still_parked = not parked.done() and server.get_stats()["num_parked"] == 1
        await server.resume_generation()
        served = await parked
        num_parked_after = server.get_stats()["num_parked"]
        await server.abort_all_requests(reject_request=True)
        rejected = await server.generate(prompt_ids=PROMPTS[0], sampling_params=dict(GREEDY), request_id="r")
        await server.resume_generation()
        return report, aborted, still_parked, served, rejected, num_parked_after

    report, aborted, still_parked, served, rejected, num_parked_after = _serve(
        lively_model_dir, scenario, response_length=16, max_wait_ms=50
    )
    assert report["aborted_count"] == 3
    for o in aborted:
        assert o.stop_reason == "aborted" and 0 < len(o.token_ids) < 1000 and len(o.log_probs) == len(o.token_ids)
    assert still_parked and served.stop_reason == "completed" and served.token_ids and num_parked_after == 0
    assert rejected.stop_reason == "aborted" and rejected.token_ids == []


def test_lifecycle_noops_and_http_endpoint(lively_model_dir):
    async def scenario(server):
        await server.sleep()
        await server.wake_up(tags=["weights"])
        await server.clear_kv_cache()
        await server.release_kv_cache()
        await server.resume_kv_cache()
        await server.start_profile()
        await server.stop_profile()
        host, port = server.get_server_address()

        def http_calls():
            with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=10) as r:
                health = json.loads(r.read())
            body = json.dumps({"prompt_ids": PROMPTS[3], "sampling_params": GREEDY}).encode()
            req = urllib.request.Request(
                f"http://{host}:{port}/generate", data=body, headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(req, timeout=30) as r:
                return health, json.loads(r.read())

        health, generated = await asyncio.to_thread(http_calls)
        direct = await server.generate(prompt_ids=PROMPTS[3], sampling_params=dict(GREEDY), request_id="z")
        return health, generated, direct, server.get_stats()

    health, generated, direct, stats = _serve(lively_model_dir, scenario, http=True)
    assert health["status"] == "ok"
    assert generated["token_ids"] == direct.token_ids
    assert stats["device"] == "cpu" and stats["dtype"] == "float32"


def test_settings_are_validated_by_name():
    assert HFRolloutSettings.from_mapping(None) == HFRolloutSettings()
    with pytest.raises(ValueError, match="max_batchsize"):
        HFRolloutSettings.from_mapping({"max_batchsize": 4})
    with pytest.raises(ValueError, match="max_batch_size"):
        HFRolloutSettings.from_mapping({"max_batch_size": 0})
    with pytest.raises(ValueError, match="dtype"):
        HFRolloutSettings.from_mapping({"dtype": "int8"})
    with pytest.raises(ValueError, match="num_threads"):
        HFRolloutSettings.from_mapping({"num_threads": "many"})
    assert HFRolloutSettings.from_mapping({"num_threads": "auto"}).resolved_num_threads() >= 1
    assert HFRolloutSettings.from_mapping({"num_threads": 3}).resolved_num_threads() == 3
