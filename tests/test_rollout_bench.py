"""The batching benchmark runs end to end on a tiny model (its figures are printed, never asserted)."""

from __future__ import annotations


def test_batching_benchmark_runs_both_arms(tiny_model_dir):
    from verl_agrae.testing.rollout_bench import measure_batching_speedup

    result = measure_batching_speedup(
        tiny_model_dir, responses=6, distinct_prompts=3, max_tokens=3, num_threads=1, repeats=2
    )
    assert (result.responses, result.distinct_prompts, result.tokens_per_response) == (6, 3, 3)
    assert result.batched_generate_calls < result.responses  # the concurrent arm really batched
    assert len(result.speedups) == 2 and result.one_at_a_time_s > 0 and result.batched_s > 0
