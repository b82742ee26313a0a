"""Tiny MSE behaviour-cloning agents shared by the tests, and an algorithm module built on them.

`TanhMlpBC` (a tanh-squashed `policy` MLP) and `ActorBC` (a `DeterministicActor` under `actor`,
the layout export looks for) exercise the training loop in seconds; test files subclass them for
their variants. As an algorithm module (Config, Agent, train, main) for sweep and table tests it
can crash on purpose (TINY_ALGO_CRASH=1 crashes the run whose seed is `crash_seed` at step 50).
Every run appends its run directory to the file TINY_ALGO_COUNTER, when set, so tests can tell
which runs were trained again."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dql.actors import DeterministicActor
from dql.nets import make_optimizer, mlp
from dql.training import TrainConfig, run_training

ALGORITHM = "tiny_bc"

Batch = dict[str, torch.Tensor]


def descend(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    """One gradient step on `loss`; returns the metrics dict that `update` reports."""
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return {"loss": loss}


class TanhMlpBC:
    """MSE behaviour cloning: `policy(obs)` is pre-activation and act() squashes it to the action
    range. `config` is accepted (the training loop passes it) and unused."""

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        max_action: float,
        config: object,
        hidden: Sequence[int] = (64, 64),
        learning_rate: float = 1e-3,
    ) -> None:
        self.policy = mlp(observation_dim, action_dim, hidden)
        self.optimizer = make_optimizer(self.policy.parameters(), learning_rate)
        self.max_action = max_action

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        predicted = torch.tanh(self.policy(batch["observations"])) * self.max_action
        return descend(self.optimizer, ((predicted - batch["actions"]) ** 2).mean())

    @torch.no_grad()
    def act(self, observations: np.ndarray) -> np.ndarray:
        return (torch.tanh(self.policy(torch.as_tensor(observations))) * self.max_action).numpy()

    def state_dict(self) -> dict[str, Any]:
        return {"policy": self.policy.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])


class ActorBC:
    """MSE behaviour cloning; `actor(obs)` is the action (the layout of TD3+BC, IQL, BC), so
    export finds the policy without help. `config` is accepted and unused."""

    def __init__(
        self, observation_dim: int, action_dim: int, max_action: float, config: object
    ) -> None:
        self.actor = DeterministicActor(observation_dim, action_dim, max_action, (64, 64))
        self.optimizer = make_optimizer(self.actor.parameters(), 1e-3)
        self.max_action = max_action

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        loss = (self.actor(batch["observations"]) - batch["actions"]).square().mean()
        return descend(self.optimizer, loss)

    @torch.no_grad()
    def act(self, observations: np.ndarray) -> np.ndarray:
        return self.actor(torch.as_tensor(observations)).numpy()

    def state_dict(self) -> dict[str, Any]:
        return {"actor": self.actor.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.actor.load_state_dict(state["actor"])
        self.optimizer.load_state_dict(state["optimizer"])


@dataclass
class Config(TrainConfig):
    hidden: int = 32
    """Hidden width of the policy MLP."""
    crash_seed: int = -1
    """With TINY_ALGO_CRASH=1 in the environment, the run of this seed raises at step 50."""


class Agent(TanhMlpBC):
    """TanhMlpBC sized by `Config.hidden` that can crash on purpose (see the module docstring)."""

    def __init__(
        self, observation_dim: int, action_dim: int, max_action: float, config: Config
    ) -> None:
        # the width and learning rate the sweep and table tests' expectations were set with
        super().__init__(
            observation_dim,
            action_dim,
            max_action,
            config,
            hidden=(config.hidden, config.hidden),
            learning_rate=3e-3,
        )
        self.crash = os.environ.get("TINY_ALGO_CRASH") == "1" and config.seed == config.crash_seed
        self.steps = 0

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        self.steps += 1
        if self.crash and self.steps == 50:
            raise RuntimeError("tiny_bc crashed on purpose")
        return super().update(batch)


def train(config: Config) -> dict:
    counter = os.environ.get("TINY_ALGO_COUNTER")
    if counter:
        with open(counter, "a") as f:
            f.write(f"{config.run_dir}\n")
    # One module serves several registry names in the tests: name the run after its directory
    # (OUT/ALGORITHM/TASK/seed_N), as the sweep lays it out.
    algorithm = Path(config.run_dir).parts[-3] if config.run_dir else ALGORITHM
    return run_training(config, Agent, algorithm)


def main(argv: list[str] | None = None) -> int:
    from dql.cli import run_cli

    return run_cli(Config, train, ALGORITHM, argv)


if __name__ == "__main__":
    sys.exit(main())
