"""Behaviour cloning: regress the dataset's actions on its (normalised) states.

    MSE (default):   pi(s) = M tanh(f(s)),           L = E ||pi(s) - a||^2
    --gaussian:      pi(.|s) = N(M tanh(f(s)), sigma^2),  L = -E log pi(a|s)   (act with the mean)

M = max_action; sigma is a learned state-independent std per action dimension (clamped to
[e^-5, e^2]). Adam 3e-4, batch 256, MLP 256-256 (CORL's BC). No deliberate deviation; the
dataset is used whole (CORL's "%BC" top-fraction filter is not part of this baseline).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dql.actors import DeterministicActor, GaussianActor, observations_tensor
from dql.batched_seeds import per_seed
from dql.buffer import Batch
from dql.cli import run_cli
from dql.nets import Precision, at_config_precision, make_optimizer
from dql.training import Checkpointed, TrainConfig, resolve_device, run_training, spec

ALGORITHM = "bc"


@dataclass
class Config(TrainConfig):
    """Behaviour cloning by MSE or Gaussian likelihood."""

    gaussian: bool = False
    """Fit a Gaussian policy by maximum likelihood instead of a deterministic one by MSE."""
    lr: float = field(default=3e-4, metadata=spec("> 0"))
    """Adam learning rate."""
    hidden: tuple[int, ...] = field(default=(256, 256), metadata=spec("widths"))
    """Hidden layer widths of the policy."""
    precision: Precision = "fp32"
    """fp32, or bf16: the training step's matmuls in bfloat16 (dql.nets.autocast); acting is fp32."""


class BC(Checkpointed):
    def __init__(
        self, observation_dim: int, action_dim: int, max_action: float, config: Config
    ) -> None:
        self.config = config
        self.device = torch.device(resolve_device(config.device))
        actor_cls = GaussianActor if config.gaussian else DeterministicActor
        self.actor = actor_cls(observation_dim, action_dim, max_action, config.hidden)
        self.actor.to(self.device)
        self.optimizer = make_optimizer(self.actor.parameters(), config.lr)

    @per_seed
    def loss(self, batch: Batch) -> torch.Tensor:
        if self.config.gaussian:
            return -self.actor.log_prob(batch["observations"], batch["actions"]).mean()
        return (self.actor(batch["observations"]) - batch["actions"]).square().mean()

    @at_config_precision  # --precision bf16: the step under autocast
    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        loss = self.loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()  # .sum(): over batched seeds (dql.batched_seeds); one: the loss
        self.optimizer.step()
        return {"bc_loss": loss.detach()}

    @torch.no_grad()
    def act(self, observations: np.ndarray) -> np.ndarray:
        return self.actor(observations_tensor(observations, self.device)).cpu().numpy()


Agent = BC  # the registry's agent class of this algorithm


def train(config: Config) -> dict[str, Any]:
    return run_training(config, BC, ALGORITHM)


def main(argv: list[str] | None = None) -> int:
    return run_cli(Config, train, ALGORITHM, argv)


if __name__ == "__main__":
    sys.exit(main())
