"""A tiny MSE behaviour-cloning algorithm module (Config, Agent, train, main) for sweep and table
tests: fast, and able to crash on purpose (TINY_ALGO_CRASH=1 crashes the run whose seed is
`crash_seed` at step 50). Every run appends its run directory to the file TINY_ALGO_COUNTER, when set, so tests can
tell which runs were trained again."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dql.nets import make_optimizer, mlp
from dql.training import TrainConfig, run_training

ALGORITHM = "tiny_bc"


@dataclass
class Config(TrainConfig):
    hidden: int = 32
    """Hidden width of the policy MLP."""
    crash_seed: int = -1
    """With TINY_ALGO_CRASH=1 in the environment, the run of this seed raises at step 50."""


class Agent:
    def __init__(self, observation_dim: int, action_dim: int, max_action: float, config) -> None:
        self.policy = mlp(observation_dim, action_dim, (config.hidden, config.hidden))
        self.optimizer = make_optimizer(self.policy.parameters(), 3e-3)
        self.max_action = max_action
        self.crash = os.environ.get("TINY_ALGO_CRASH") == "1" and config.seed == config.crash_seed
        self.steps = 0

    def update(self, batch):
        self.steps += 1
        if self.crash and self.steps == 50:
            raise RuntimeError("tiny_bc crashed on purpose")
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


def train(config: Config) -> dict:
    counter = os.environ.get("TINY_ALGO_COUNTER")
    if counter:
        with open(counter, "a") as f:
            f.write(f"{config.run_dir}\n")
    # One module serves several registry names in the tests: name the run after its directory
    # (OUT/ALGORITHM/TASK/seed_N), as the sweep lays it out.
    algorithm = Path(config.run_dir).parts[-3] if config.run_dir else ALGORITHM
    return run_training(config, Agent, algorithm)


def main(argv=None) -> int:
    from dql.cli import run_cli

    return run_cli(Config, train, ALGORITHM, argv)


if __name__ == "__main__":
    sys.exit(main())
