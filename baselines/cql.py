"""CQL: "Conservative Q-Learning for Offline Reinforcement Learning" (Kumar et al., NeurIPS 2020).

SAC with a tanh-Gaussian actor and automatic entropy tuning, plus the CQL(H) penalty that pushes
Q down on actions the policy and a uniform proposal would pick and up on the dataset's:

    actor:    L_pi = E [ alpha_H log pi(a~|s) - min_k Q_k(s, a~) ],   a~ ~ pi(.|s)
    entropy:  L_alpha = -E [ log alpha_H (log pi(a~|s) + target_entropy) ],  target = -action_dim
    critic:   y = r + gamma (1 - d) min_k Q'_k(s', a'),   a' ~ pi(.|s')
              D_k = E clip(logsumexp_j Q~_k(s, a_j) - Q_k(s, a), clip_min, clip_max)
              L_Q = sum_k E (Q_k(s, a) - y)^2 + cql_alpha * sum_k D_k

The logsumexp runs over 3 x `num_sampled_actions` actions per state with importance weights
(CQL(H) as in the authors' code): Q~ = Q(s, a_j) - log mu(a_j) with a_j from the uniform
distribution on [-M, M]^A, from pi(.|s) and from pi(.|s') (each evaluated at s, log-densities
detached). The actor distribution of a state is computed once and all its samples drawn from it;
on a CPU, with large batches or networks, the critics see the 3n action sets one at a time
(activations stay in cache), else all in one batch.

Two options of CORL's implementation, used in its AntMaze configs:
- --lagrange: the penalty becomes alpha' cql_alpha sum_k (D_k - target_action_gap), with the dual
  variable alpha' = exp(log alpha') trained to minimise -alpha' cql_alpha sum_k (D_k - gap) / 2
  (log alpha' starts at 1, Adam at the critic lr): alpha' grows while the gaps D_k exceed
  `target_action_gap` and shrinks once they are below it.
- --max-target-backup: a' is the best of `num_sampled_actions` samples of pi(.|s'), each scored
  by min_k Q'_k, instead of one sample.

Defaults are CORL's (corl-team/CORL, algorithms/offline/cql.py and its configs): Gym locomotion
cql_alpha 10, policy lr 3e-5, critic lr 3e-4, entropy lr equal to the policy lr with alpha_H
starting at 1, no entropy term in the target (backup_entropy off), Polyak 0.005, batch 256,
standardised observations; AntMaze the Lagrange variant with cql_alpha 5 and target action gap
0.8, the max-target backup, D_k clipped below at -200, rewards 10 r - 5 and policy lr 1e-4, raw
states; pen cql_alpha 1 (experiments/hyperparams/cql.toml). The actor is CORL's: 3 x 256, its
hidden layers at torch's default init, its output layer xavier-uniform with gain 1e-2 and zero
bias, log sigma(s) = m f(s) + b with learned scalars m (from 1) and b (from -1), so every
action dimension starts at mean ~0 and std ~e^-1 = 0.37 (dql.actors.TanhGaussianActor).
The critics are orthogonally initialised (gain sqrt 2, output layer 1e-2), as CORL's.

Deliberate deviations: no initial BC warm-up of the policy (CORL's default bc_steps is 0 too);
critics 2 x 256 (d3rlpy's size, cheaper on CPU) rather than CORL's deeper critics
(3 x 256 on Gym).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dql.actors import (
    TanhGaussianActor,
    frozen_copy,
    observations_tensor,
    one_pass_is_faster,
    orthogonal_init_,
)
from dql.batched_seeds import per_seed
from dql.buffer import Batch
from dql.cli import run_cli
from dql.errors import ConfigError
from dql.nets import (
    CriticEnsemble,
    Precision,
    at_config_precision,
    make_optimizer,
    polyak_update,
)
from dql.training import Checkpointed, TrainConfig, resolve_device, run_training, spec

ALGORITHM = "cql"


@dataclass
class Config(TrainConfig):
    """CQL(H) on a SAC backbone (Kumar et al. 2020)."""

    cql_alpha: float = field(default=10.0, metadata=spec(">= 0"))
    """Weight of the conservative penalty (CORL: 10 on Gym locomotion, 5 with --lagrange on AntMaze, 1 on pen)."""
    lagrange: bool = False
    """Tune the penalty weight alpha' cql_alpha by dual gradient ascent toward --target-action-gap."""
    target_action_gap: float = 0.8
    """With --lagrange: the gap E[logsumexp Q - Q(s, a)] per critic that alpha' aims for."""
    cql_clip_diff_min: float = -math.inf
    """Lower clip of each state's gap logsumexp Q - Q(s, a) in the penalty (CORL's AntMaze: -200)."""
    cql_clip_diff_max: float = math.inf
    """Upper clip of each state's gap logsumexp Q - Q(s, a) in the penalty."""
    max_target_backup: bool = False
    """TD target with the best of --num-sampled-actions policy samples at s' (max over them of min_k Q'_k)."""
    num_sampled_actions: int = field(default=10, metadata=spec(">= 1"))
    """Actions per proposal (uniform, pi(.|s), pi(.|s')) in the penalty's logsumexp, and in the max-target backup."""
    cql_temperature: float = field(default=1.0, metadata=spec("> 0"))
    """Temperature of the penalty's logsumexp."""
    discount: float = field(default=0.99, metadata=spec("[0, 1]"))
    """Discount factor gamma."""
    tau: float = field(default=0.005, metadata=spec("(0, 1]"))
    """Polyak rate of the target critics."""
    actor_lr: float = field(default=3e-5, metadata=spec("> 0"))
    """Adam learning rate of the policy (CORL: 3e-5 on Gym locomotion, 1e-4 on AntMaze)."""
    critic_lr: float = field(default=3e-4, metadata=spec("> 0"))
    """Adam learning rate of the critics (and of log alpha' with --lagrange)."""
    entropy_lr: float = field(default=3e-5, metadata=spec("> 0"))
    """Adam learning rate of log alpha_H, the entropy temperature (CORL: the policy's)."""
    initial_entropy_alpha: float = field(default=1.0, metadata=spec("> 0"))
    """Starting value of the entropy temperature alpha_H."""
    backup_entropy: bool = False
    """Subtract alpha_H log pi(a'|s') in the TD target (SAC's soft backup)."""
    orthogonal_init: bool = True
    """Orthogonal init of the critics (gain sqrt 2; 1e-2 for the output layer), as CORL's."""
    actor_hidden: tuple[int, ...] = field(default=(256, 256, 256), metadata=spec("widths"))
    """Hidden layer widths of the actor (CORL: 3 x 256)."""
    hidden: tuple[int, ...] = field(default=(256, 256), metadata=spec("widths"))
    """Hidden layer widths of the critics."""
    precision: Precision = "fp32"
    """fp32, or bf16: the training step's matmuls in bfloat16 (dql.nets.autocast); acting is fp32."""

    def validate(self) -> None:
        super().validate()
        if not self.cql_clip_diff_min < self.cql_clip_diff_max:
            raise ConfigError(
                f"--cql-clip-diff-min must be below --cql-clip-diff-max, got "
                f"{self.cql_clip_diff_min} and {self.cql_clip_diff_max}"
            )


class CQL(Checkpointed):
    extra_state = ("log_entropy_alpha", "log_cql_alpha_prime")

    def __init__(
        self, observation_dim: int, action_dim: int, max_action: float, config: Config
    ) -> None:
        self.config = config
        self.device = torch.device(resolve_device(config.device))
        self.action_dim = action_dim
        self.max_action = max_action
        # CORL's actor: initial mean ~0 and std ~0.37 in every action dimension
        self.actor = TanhGaussianActor(
            observation_dim, action_dim, max_action, config.actor_hidden, log_std_offset=-1.0
        )
        self.critic = CriticEnsemble(observation_dim, action_dim, 2, config.hidden)
        if config.orthogonal_init:
            orthogonal_init_(self.critic)
        self.actor.to(self.device)
        self.critic.to(self.device)
        self.critic_target = frozen_copy(self.critic)
        self.log_entropy_alpha = torch.tensor(
            math.log(config.initial_entropy_alpha), device=self.device, requires_grad=True
        )
        self.target_entropy = -float(action_dim)
        # log alpha' of --lagrange (CORL starts it at 1, i.e. alpha' = e)
        self.log_cql_alpha_prime = torch.tensor(1.0, device=self.device, requires_grad=True)
        # log-density of the uniform proposal on [-M, M]^A
        self.uniform_log_prob = -action_dim * math.log(2.0 * max_action)
        self.actor_optimizer = make_optimizer(self.actor.parameters(), config.actor_lr)
        self.critic_optimizer = make_optimizer(self.critic.parameters(), config.critic_lr)
        self.entropy_optimizer = make_optimizer([self.log_entropy_alpha], config.entropy_lr)
        self.lagrange_optimizer = make_optimizer([self.log_cql_alpha_prime], config.critic_lr)

    def conservative_penalty(
        self,
        observations: torch.Tensor,
        q_data: torch.Tensor,
        policy: tuple[torch.Tensor, torch.Tensor],
        next_policy: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        """The gaps D_k = E clip(T logsumexp_j (Q_k(s, a_j) - log mu(a_j)) / T - Q_k(s, a)), (2,),
        over uniform, pi(.|s) and pi(.|s') proposals; `policy`/`next_policy` are (mean, log_std)
        of pi at s and s'."""
        c = self.config
        n, batch, action_dim = c.num_sampled_actions, q_data.shape[1], self.action_dim
        with torch.no_grad():
            random_actions = observations.new_empty(n, batch, action_dim)  # batched seeds: per seed
            random_actions.uniform_(-self.max_action, self.max_action)
            current_actions, current_log_prob = self.actor.sample(*policy, num_samples=n)
            next_actions, next_log_prob = self.actor.sample(*next_policy, num_samples=n)
        actions = torch.cat([random_actions, current_actions, next_actions])  # (3n, B, A)
        log_density = torch.cat(
            [
                torch.full_like(current_log_prob, self.uniform_log_prob),
                current_log_prob,
                next_log_prob,
            ]
        )  # (3n, B)
        if one_pass_is_faster(3 * n * batch, max(c.hidden), self.device):
            q = self.critic(observations.repeat(3 * n, 1), actions.reshape(-1, action_dim))
            q = q.view(-1, 3 * n, batch)
        else:  # one pass per action set keeps the activations in the CPU's cache
            q = torch.stack([self.critic(observations, a) for a in actions], dim=1)
        q = q - log_density  # (2, 3n, B)
        logsumexp = torch.logsumexp(q / c.cql_temperature, dim=1) * c.cql_temperature  # (2, B)
        gaps = (logsumexp - q_data).clamp(c.cql_clip_diff_min, c.cql_clip_diff_max)  # (2, B)
        return gaps.mean(dim=1)

    @per_seed
    def actor_losses(self, batch: Batch) -> tuple[torch.Tensor, ...]:
        """The entropy temperature's and the actor's (SAC) losses against the current critics;
        also alpha and pi(.|s), pi(.|s') as (mean, log_std), detached, for the critics."""
        observations, next_observations = batch["observations"], batch["next_observations"]
        # pi(.|s) and pi(.|s') in one forward pass, before the actor's step (as in the authors' code)
        mean, log_std = self.actor.distribution(torch.cat([observations, next_observations]))
        policy = (mean[: len(observations)], log_std[: len(observations)])
        next_policy = (
            mean[len(observations) :].detach(),
            log_std[len(observations) :].detach(),
        )
        policy_actions, log_prob = self.actor.sample(*policy)
        entropy_alpha = self.log_entropy_alpha.exp()
        entropy_loss = -(self.log_entropy_alpha * (log_prob.detach() + self.target_entropy)).mean()
        q_policy = self.critic.min(observations, policy_actions)
        actor_loss = (entropy_alpha.detach() * log_prob - q_policy).mean()
        detached = (policy[0].detach(), policy[1].detach())
        return entropy_loss, actor_loss, entropy_alpha.detach(), detached, next_policy

    @per_seed
    def critic_losses(
        self,
        batch: Batch,
        policy: tuple[torch.Tensor, torch.Tensor],
        next_policy: tuple[torch.Tensor, torch.Tensor],
        entropy_alpha: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """TD error + conservative penalty, the Lagrange multiplier's loss (--lagrange), and
        their metrics."""
        c = self.config
        observations, next_observations = batch["observations"], batch["next_observations"]
        with torch.no_grad():
            if c.max_target_backup:  # the best of n samples of pi(.|s'), each scored by min_k Q'_k
                n = c.num_sampled_actions
                next_actions, next_log_prob = self.actor.sample(*next_policy, num_samples=n)
                next_q = self.critic_target.min(
                    next_observations.repeat(n, 1), next_actions.reshape(-1, self.action_dim)
                ).view(n, -1)  # (n, B)
                next_q, best = next_q.max(dim=0)
                next_log_prob = next_log_prob.gather(0, best[None]).squeeze(0)
            else:
                next_actions, next_log_prob = self.actor.sample(*next_policy)
                next_q = self.critic_target.min(next_observations, next_actions)
            if c.backup_entropy:
                next_q = next_q - entropy_alpha * next_log_prob
            target = batch["rewards"] + c.discount * (1.0 - batch["terminals"]) * next_q
        q = self.critic(observations, batch["actions"])  # (2, B)
        td_loss = (q - target).square().mean(dim=1).sum()
        gaps = self.conservative_penalty(observations, q, policy, next_policy)  # (2,)
        out = {"td_loss": td_loss, "cql_penalty": gaps.detach().sum(), "q_mean": q.detach().mean()}
        if c.lagrange:  # weight alpha' cql_alpha on (D_k - gap); alpha' rises while D_k > gap
            cql_alpha_prime = self.log_cql_alpha_prime.exp().clamp(0.0, 1e6)
            excess = gaps - c.target_action_gap
            penalty = (cql_alpha_prime.detach() * c.cql_alpha * excess).sum()
            out["lagrange_loss"] = -0.5 * (cql_alpha_prime * c.cql_alpha * excess.detach()).sum()
            out["cql_alpha_prime"] = cql_alpha_prime.detach()
        else:
            penalty = c.cql_alpha * gaps.sum()
        out["critic_loss"] = td_loss + penalty
        return out

    @at_config_precision  # --precision bf16: the step under autocast
    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        # .sum() of a loss: over batched seeds (dql.batched_seeds); for one seed, the loss
        entropy_loss, actor_loss, entropy_alpha, policy, next_policy = self.actor_losses(batch)
        self.entropy_optimizer.zero_grad(set_to_none=True)
        entropy_loss.sum().backward()
        self.entropy_optimizer.step()
        self.actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.sum().backward(inputs=list(self.actor.parameters()))
        self.actor_optimizer.step()

        losses = self.critic_losses(batch, policy, next_policy, entropy_alpha)
        metrics: dict[str, torch.Tensor] = {}
        if self.config.lagrange:
            self.lagrange_optimizer.zero_grad(set_to_none=True)
            losses["lagrange_loss"].sum().backward()
            self.lagrange_optimizer.step()
            metrics["cql_alpha_prime"] = losses["cql_alpha_prime"]
        self.critic_optimizer.zero_grad(set_to_none=True)
        losses["critic_loss"].sum().backward()
        self.critic_optimizer.step()

        polyak_update(self.critic_target, self.critic, self.config.tau)
        return {
            "critic_loss": losses["critic_loss"].detach(),
            "td_loss": losses["td_loss"].detach(),
            "cql_penalty": losses["cql_penalty"],
            "actor_loss": actor_loss.detach(),
            "entropy_alpha": entropy_alpha,
            "q_mean": losses["q_mean"],
            **metrics,
        }

    @torch.no_grad()
    def act(self, observations: np.ndarray) -> np.ndarray:
        return (
            self.actor.deterministic(observations_tensor(observations, self.device)).cpu().numpy()
        )


Agent = CQL  # the registry's agent class of this algorithm


def train(config: Config) -> dict[str, Any]:
    return run_training(config, CQL, ALGORITHM)


def main(argv: list[str] | None = None) -> int:
    return run_cli(Config, train, ALGORITHM, argv)


if __name__ == "__main__":
    sys.exit(main())
