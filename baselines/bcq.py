"""BCQ: "Off-Policy Deep Reinforcement Learning without Exploration" (Fujimoto, Meger & Precup, ICML 2019).

A conditional VAE G(s) models the dataset's actions; a perturbation network xi(s, a) nudges its
samples by at most phi * M; the policy takes the best of n perturbed samples under Q_1:

    VAE:       L_G = E ||D(s, z) - a||^2 + 0.5 KL(N(mu(s, a), sigma(s, a)) || N(0, I)),  z ~ E(s, a)
    critic:    a'_j = clip(G_j(s') + xi'(s', G_j(s')), -M, M),   j = 1..n   (n = 10)
               y = r + gamma (1 - d) max_j [ lambda min_k Q'_k(s', a'_j) + (1 - lambda) max_k Q'_k(s', a'_j) ]
               L_Q = sum_k E (Q_k(s, a) - y)^2
    actor:     L_xi = -E Q_1(s, clip(G(s) + xi(s, G(s)), -M, M)),   xi = phi M tanh(f(s, a))
    act:       argmax_j Q_1(s, a_j) over 100 perturbed samples

Decoder samples use z ~ N(0, I) clipped to [-0.5, 0.5]. Sizes and rates of the authors' code:
VAE 750-750 with latent 2 x action_dim, actor and critics 400-300, Adam 1e-3, batch 100, phi 0.05,
lambda 0.75, Polyak 0.005 for the target actor and critics, raw states (no observation
normalisation: this config turns the harness's standardisation off). Deliberate deviation: none.
(Implementation note: on a CPU, with large batches or networks, the target's n samples go through
the networks one sample at a time, which keeps the activations in cache; else as one batch.)
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from dql.actors import frozen_copy, observations_tensor, one_pass_is_faster
from dql.batched_seeds import per_seed
from dql.buffer import Batch
from dql.cli import run_cli
from dql.nets import (
    CriticEnsemble,
    Precision,
    at_config_precision,
    make_optimizer,
    mlp,
    polyak_update,
)
from dql.training import Checkpointed, TrainConfig, resolve_device, run_training, spec

ALGORITHM = "bcq"
LATENT_CLIP = 0.5


@dataclass
class Config(TrainConfig):
    """BCQ (Fujimoto et al. 2019)."""

    batch_size: int = 100
    """Transitions per gradient step (the authors' 100)."""
    normalize_observations: bool = False
    """Standardise observations with the dataset's mean and std (the authors feed raw states)."""
    phi: float = field(default=0.05, metadata=spec("[0, 2]"))
    """Largest perturbation of a generated action, as a fraction of max_action."""
    lmbda: float = field(default=0.75, metadata=spec("[0, 1]"))
    """Soft clipped double Q: weight of the min over the two critics (1 - lmbda on the max)."""
    num_sampled_actions: int = field(default=10, metadata=spec(">= 1"))
    """Generated actions per next state in the TD target."""
    eval_sampled_actions: int = field(default=100, metadata=spec(">= 1"))
    """Generated actions per state when acting (the one with the highest Q_1 is taken)."""
    discount: float = field(default=0.99, metadata=spec("[0, 1]"))
    """Discount factor gamma."""
    tau: float = field(default=0.005, metadata=spec("(0, 1]"))
    """Polyak rate of the target actor and critics."""
    lr: float = field(default=1e-3, metadata=spec("> 0"))
    """Adam learning rate of the VAE, the perturbation network and the critics."""
    vae_hidden: tuple[int, ...] = field(default=(750, 750), metadata=spec("widths"))
    """Hidden layer widths of the VAE's encoder and decoder."""
    hidden: tuple[int, ...] = field(default=(400, 300), metadata=spec("widths"))
    """Hidden layer widths of the perturbation network and critics."""
    precision: Precision = "fp32"
    """fp32, or bf16: the training step's matmuls in bfloat16 (dql.nets.autocast); acting is fp32."""


class VAE(nn.Module):
    """Conditional VAE over actions: encoder E(s, a) -> (mu, log sigma), decoder D(s, z) -> a."""

    def __init__(
        self, observation_dim: int, action_dim: int, max_action: float, hidden: tuple[int, ...]
    ) -> None:
        super().__init__()
        self.latent_dim = 2 * action_dim
        self.encoder = mlp(observation_dim + action_dim, 2 * self.latent_dim, hidden)
        self.decoder = mlp(observation_dim + self.latent_dim, action_dim, hidden)
        self.max_action = max_action

    def forward(
        self, observations: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstructed actions, mu and log sigma of the posterior."""
        encoded = self.encoder(torch.cat([observations, actions], -1)).float()  # fp32 in autocast
        mean, log_std = encoded.chunk(2, dim=-1)
        log_std = log_std.clamp(-4.0, 15.0)
        latent = mean + log_std.exp() * torch.randn_like(mean)
        return self.decode(observations, latent), mean, log_std

    def decode(
        self, observations: torch.Tensor, latent: torch.Tensor | None = None
    ) -> torch.Tensor:
        """D(s, z); z from the clipped prior when not given."""
        if latent is None:
            latent = torch.randn(
                *observations.shape[:-1], self.latent_dim, device=observations.device
            )
            latent = latent.clamp(-LATENT_CLIP, LATENT_CLIP)
        decoded = self.decoder(torch.cat([observations, latent], -1)).float()
        return self.max_action * torch.tanh(decoded)


class Perturbation(nn.Module):
    """xi(s, a) = phi * M * tanh(f(s, a)); returns clip(a + xi, -M, M)."""

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        max_action: float,
        phi: float,
        hidden: tuple[int, ...],
    ) -> None:
        super().__init__()
        self.net = mlp(observation_dim + action_dim, action_dim, hidden)
        self.max_action = max_action
        self.phi = phi

    def forward(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        xi = (
            self.phi
            * self.max_action
            * torch.tanh(self.net(torch.cat([observations, actions], -1)).float())
        )
        return (actions + xi).clamp(-self.max_action, self.max_action)


class ActionSelection(nn.Module):
    """pi(s): n VAE-decoded actions per state (the batch tiled n times), perturbed by the actor,
    the one with the highest Q_1 picked. `act` and the exported policy both run this."""

    def __init__(self, vae: VAE, actor: Perturbation, critic: CriticEnsemble, n: int) -> None:
        super().__init__()
        self.vae, self.actor, self.critic, self.n = vae, actor, critic, n

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        batch = states.shape[0]
        repeated = states.repeat(self.n, 1)  # (n B, obs), tiled, not interleaved
        candidates = self.actor(repeated, self.vae.decode(repeated))  # (n B, A)
        best = self.critic.member(0, repeated, candidates).view(self.n, batch).argmax(0)  # (B,)
        picked = best[None, :, None].expand(1, batch, candidates.shape[-1])
        return candidates.view(self.n, batch, -1).gather(0, picked).squeeze(0)


class BCQ(Checkpointed):
    def __init__(
        self, observation_dim: int, action_dim: int, max_action: float, config: Config
    ) -> None:
        self.config = config
        self.device = torch.device(resolve_device(config.device))
        self.vae = VAE(observation_dim, action_dim, max_action, config.vae_hidden)
        self.actor = Perturbation(
            observation_dim, action_dim, max_action, config.phi, config.hidden
        )
        self.critic = CriticEnsemble(observation_dim, action_dim, 2, config.hidden)
        for net in (self.vae, self.actor, self.critic):
            net.to(self.device)
        self.actor_target = frozen_copy(self.actor)
        self.critic_target = frozen_copy(self.critic)
        self.vae_optimizer = make_optimizer(self.vae.parameters(), config.lr)
        self.actor_optimizer = make_optimizer(self.actor.parameters(), config.lr)
        self.critic_optimizer = make_optimizer(self.critic.parameters(), config.lr)

    def sampled_target_q(self, observations: torch.Tensor) -> torch.Tensor:
        """Q'_k(s, a_j) of n perturbed generated actions a_j per state: (2, n, B)."""
        n, batch_size = self.config.num_sampled_actions, len(observations)
        if one_pass_is_faster(n * batch_size, max(self.config.vae_hidden), self.device):
            repeated = observations.repeat(n, 1)  # sample j of state i at row j B + i
            actions = self.actor_target(repeated, self.vae.decode(repeated))
            return self.critic_target(repeated, actions).view(-1, n, batch_size)
        # one pass per sample keeps the VAE's activations in the CPU's cache
        samples = [self.actor_target(observations, self.vae.decode(observations)) for _ in range(n)]
        return torch.stack([self.critic_target(observations, a) for a in samples], dim=1)

    @per_seed
    def vae_loss(self, batch: Batch) -> torch.Tensor:
        """The generative model of the behaviour policy: reconstruction + KL / 2."""
        observations, actions = batch["observations"], batch["actions"]
        reconstruction, mean, log_std = self.vae(observations, actions)
        kl = -0.5 * (1.0 + 2.0 * log_std - mean.square() - (2.0 * log_std).exp()).mean()
        return (reconstruction - actions).square().mean() + 0.5 * kl

    @per_seed
    def critic_loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Soft clipped double Q, max over n perturbed generated actions at s'; also mean Q."""
        c = self.config
        with torch.no_grad():
            next_q = self.sampled_target_q(batch["next_observations"])  # (2, n, B)
            next_q = c.lmbda * next_q.min(0).values + (1.0 - c.lmbda) * next_q.max(0).values
            next_q = next_q.max(0).values  # the best of the n samples
            target = batch["rewards"] + c.discount * (1.0 - batch["terminals"]) * next_q
        q = self.critic(batch["observations"], batch["actions"])  # (2, B)
        return (q - target).square().mean(dim=1).sum(), q.detach().mean()

    @per_seed
    def actor_loss(self, batch: Batch) -> torch.Tensor:
        """The perturbation network maximises Q_1 of perturbed generated actions."""
        observations = batch["observations"]
        with torch.no_grad():
            sampled = self.vae.decode(observations)
        return -self.critic.member(0, observations, self.actor(observations, sampled)).mean()

    @at_config_precision  # --precision bf16: the step under autocast
    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        # .sum() of a loss: over batched seeds (dql.batched_seeds); for one seed, the loss
        vae_loss = self.vae_loss(batch)
        self.vae_optimizer.zero_grad(set_to_none=True)
        vae_loss.sum().backward()
        self.vae_optimizer.step()

        critic_loss, q_mean = self.critic_loss(batch)
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.sum().backward()
        self.critic_optimizer.step()

        actor_loss = self.actor_loss(batch)
        self.actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.sum().backward(inputs=list(self.actor.parameters()))
        self.actor_optimizer.step()

        polyak_update(self.critic_target, self.critic, self.config.tau)
        polyak_update(self.actor_target, self.actor, self.config.tau)
        return {
            "vae_loss": vae_loss.detach(),
            "critic_loss": critic_loss.detach(),
            "actor_loss": actor_loss.detach(),
            "q_mean": q_mean,
        }

    def policy_module(self) -> ActionSelection:
        return ActionSelection(self.vae, self.actor, self.critic, self.config.eval_sampled_actions)

    @torch.no_grad()
    def act(self, observations: np.ndarray) -> np.ndarray:
        states = observations_tensor(observations, self.device)
        return self.policy_module()(states).cpu().numpy()


Agent = BCQ  # the registry's agent class of this algorithm


def train(config: Config) -> dict[str, Any]:
    return run_training(config, BCQ, ALGORITHM)


def main(argv: list[str] | None = None) -> int:
    return run_cli(Config, train, ALGORITHM, argv)


if __name__ == "__main__":
    sys.exit(main())
