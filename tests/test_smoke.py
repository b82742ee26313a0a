"""End-to-end smoke test of the shared training loop with a tiny MSE behaviour-cloning agent."""

from __future__ import annotations

import json

from tiny_algo import TanhMlpBC  # tests/tiny_algo.py: pytest puts tests/ on sys.path

from dql.training import TrainConfig, run_training


def test_training_loop_writes_a_complete_run(pendulum_store, tmp_path):
    config = TrainConfig(
        dataset=pendulum_store,
        steps=600,
        eval_interval=300,
        eval_episodes=3,
        log_interval=100,
        checkpoint_interval=300,
        run_dir=str(tmp_path / "run"),
        progress=False,
    )
    result = run_training(config, TanhMlpBC, "tiny_bc")
    run = tmp_path / "run"
    saved = json.loads((run / "config.json").read_text())
    assert saved["dataset"]["content_hash"] and saved["config"]["steps"] == 600
    assert json.loads((run / "status.json").read_text())["status"] == "complete"
    evals = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [300, 600]
    assert len(evals[-1]["episodes"]) == 3
    assert result["final_score"] == evals[-1]["normalized_score"]
    # the pendulum data is mostly a good controller: cloning it must balance far above random
    assert result["best_score"] > 50
