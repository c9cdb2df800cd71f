"""The console of `verl-agrae train`: a bar and one line per step; verl's and the workers' output in train.log."""

from __future__ import annotations

import json
import subprocess
import sys

from verl_agrae.trainer.console import step_line, validation_line

MAX_CONSOLE_LINES = 15  # 2 steps: the run directory, 2 step lines, the bar, the closing summary, a few spare


def test_step_and_validation_lines_hold_what_a_user_watches():
    row = {
        "step": 3,
        "critic/score/mean": 0.4375,
        "agrae/mu_batch": 0.4375,
        "agrae/mu": 0.41,
        "agrae/suppression": 0.41,
        "response_length/mean": 21.43,
        "timing_s/step": 41.21,
    }
    assert step_line(row, 8) == (
        "step   3/8  score 0.438  success 0.438  mu 0.41  suppression 0.41  response 21.4 tok  41.2 s"
    )
    assert step_line({"step": 0, "val-core/arith/acc/mean@1": 0.5}, 8) is None  # a validation-only row
    assert (
        validation_line({"step": 0, "val-core/arith/acc/mean@1": 0.5}) == "validation at step 0: arith/acc/mean@1 0.500"
    )
    assert validation_line(row) is None


def test_a_tiny_run_prints_a_few_lines_and_logs_everything(tiny_model_dir, arithmetic_data, tmp_path):
    from verl_agrae.testing.tiny_run import tiny_run_argv

    data = arithmetic_data(n_train=8, n_val=4)
    run_dir = tmp_path / "run"
    argv = tiny_run_argv("cpu", tiny_model_dir, data, run_dir, steps=2)
    out = subprocess.run(
        [sys.executable, "-m", "verl_agrae.trainer.main", *argv], capture_output=True, text=True, timeout=900
    )
    console = out.stdout + out.stderr
    assert out.returncode == 0, console[-4000:]
    lines = [ln for ln in console.splitlines() if ln.strip()]
    assert len(lines) <= MAX_CONSOLE_LINES, "\n".join(lines)
    steps = [ln for ln in lines if ln.lstrip().startswith("step ")]
    assert [ln.split()[1] for ln in steps] == ["1/2", "2/2"], lines
    assert all(" mu " in ln and " s" in ln for ln in steps)
    assert "full log: train.log" in console
    log = (run_dir / "train.log").read_text()
    # verl's own per-step metric line and the workers' output are in the log, not on the console.
    assert "critic/score/mean" in log and "critic/score/mean" not in console
    assert "No model-specific Continuous Token builder" not in log  # silenced at the source (patch 9)
    # The actor's forwards took the response-position path (patch 10; tests/test_response_logits.py checks its
    # values against verl's code, tests/test_trainer_e2e.py the actor's log-probs against the rollout's).
    from verl_agrae.integration.response_logits import ENGAGED_MESSAGE

    assert ENGAGED_MESSAGE in log
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
