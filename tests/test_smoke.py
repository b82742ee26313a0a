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


def test_every_agent_builds_from_its_default_config():
    """`Agent(obs, act, max_action, Config())` works for every registered algorithm: the default
    device "auto" is resolved (it used to reach torch.device("auto") in every baseline)."""
    import pytest
    import torch

    from dql.errors import ConfigError
    from dql.registry import ALGORITHMS, agent_class, load_algorithm

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    for name in ALGORITHMS:
        module = load_algorithm(name)
        agent = agent_class(module)(4, 2, 1.0, module.Config())
        assert torch.device(agent.device).type == expected, name
    bc = load_algorithm("bc")
    with pytest.raises(ConfigError, match="--device"):  # a wrong device is still refused
        bc.Agent(4, 2, 1.0, bc.Config(device="nonsense"))
