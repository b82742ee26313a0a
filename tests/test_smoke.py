"""End-to-end smoke test of the shared training loop with a tiny MSE behaviour-cloning agent."""

from __future__ import annotations

import json

import numpy as np
import torch

from dql.nets import make_optimizer, mlp
from dql.training import TrainConfig, run_training


class TinyBC:
    def __init__(self, observation_dim: int, action_dim: int, max_action: float, config) -> None:
        self.policy = mlp(observation_dim, action_dim, (64, 64))
        self.optimizer = make_optimizer(self.policy.parameters(), 1e-3)
        self.max_action = max_action

    def update(self, batch):
        predicted = torch.tanh(self.policy(batch["observations"])) * self.max_action
        loss = ((predicted - batch["actions"]) ** 2).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": loss}

    @torch.no_grad()
    def act(self, observations: np.ndarray) -> np.ndarray:
        return (torch.tanh(self.policy(torch.as_tensor(observations))) * self.max_action).numpy()

    def state_dict(self):
        return {"policy": self.policy.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])


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
    result = run_training(config, TinyBC, "tiny_bc")
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
