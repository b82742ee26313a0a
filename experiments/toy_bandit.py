"""The four-Gaussian bandit of the Diffusion-QL paper (Wang et al. 2023, Section 5.1).

The state is a constant 2-d zero vector; the dataset holds 10,000 actions, 2,500 from each of
four Gaussians centred at (+-0.8, +-0.8) with std 0.05, clipped to [-1, 1]. Each mode has its
own reward, r = mu + 0.5 N(0, 1): (-0.8, 0.8) -> 3.0, (-0.8, -0.8) -> 0.0, (0.8, 0.8) -> 1.5,
(0.8, -0.8) -> 5.0. Four policies are trained on it and their sampled actions plotted:

- Gaussian BC: a state-conditioned Gaussian fit by maximum likelihood (smears over the modes);
- Diffusion-BC: the Diffusion-QL agent with eta = 0 (recovers all four modes);
- TD3+BC-style: a deterministic tanh policy, -lambda Q(s, pi(s)) + ||pi(s) - a||^2 with
  lambda = 2.5 / mean|Q| (one point);
- Diffusion-QL: `dql.diffusion_ql.DiffusionQL` itself, eta = 2.5 (concentrates on the best mode).

Public toy settings: T = 50 diffusion steps, hidden width 128, eta 2.5, the critic regressed on
the reward directly (here: discount 0, so the agent's TD target is r). The diffusion policies
are the suite's agent unchanged, fed batches with next_observations = observations. The public
toy trains 100k steps at lr 3e-4; to fit a CPU minute this one trains 1000 steps (300 for
Diffusion-QL, whose Q term settles it sooner) at lr 3e-3.

A sample is "near" a mode when within NEAR_RADIUS = 0.3 of it: the mode's data (std 0.05) and
the corner of the action box next to it. Diffusion-QL's samples sit between the best mode and
that corner, (1, -1): the critic extrapolates Q beyond the data to the corner and the Q term
(eta 2.5) outweighs the BC term there.

    python experiments/toy_bandit.py --out results/toy_bandit
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dql.diffusion_ql import DiffusionQL, DiffusionQLConfig
from dql.nets import CriticEnsemble, make_optimizer, mlp

MODES = np.array([[-0.8, 0.8], [-0.8, -0.8], [0.8, 0.8], [0.8, -0.8]], np.float32)
MODE_REWARDS = np.array([3.0, 0.0, 1.5, 5.0], np.float32)
BEST_MODE = int(np.argmax(MODE_REWARDS))  # (0.8, -0.8)
NEAR_RADIUS = 0.3
STATE_DIM, ACTION_DIM, MAX_ACTION = 2, 2, 1.0


@dataclass
class BanditData:
    actions: torch.Tensor  # (N, 2)
    rewards: torch.Tensor  # (N,)
    modes: np.ndarray  # (N,) index into MODES

    def batch(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        index = torch.randint(0, len(self.rewards), (batch_size,), generator=generator)
        states = torch.zeros(batch_size, STATE_DIM)
        return {
            "observations": states,
            "actions": self.actions[index],
            "rewards": self.rewards[index],
            "next_observations": states,
            "terminals": torch.ones(batch_size),
        }


def make_dataset(num_actions: int = 10_000, std: float = 0.05, seed: int = 0) -> BanditData:
    """num_actions / 4 actions per mode, N(mode, std^2 I) clipped to [-1, 1]; noisy rewards."""
    rng = np.random.default_rng(seed)
    modes = np.repeat(np.arange(4), num_actions // 4)
    actions = np.clip(MODES[modes] + std * rng.normal(size=(len(modes), 2)), -1.0, 1.0)
    rewards = MODE_REWARDS[modes] + 0.5 * rng.normal(size=len(modes))
    return BanditData(
        torch.as_tensor(actions, dtype=torch.float32),
        torch.as_tensor(rewards, dtype=torch.float32),
        modes,
    )


def mode_shares(samples: np.ndarray, radius: float = NEAR_RADIUS) -> np.ndarray:
    """Fraction of samples within `radius` of each of the four modes: (4,)."""
    distance = np.linalg.norm(samples[:, None, :] - MODES[None], axis=-1)  # (n, 4)
    return (distance < radius).mean(axis=0)


# --------------------------------------------------------------------------- the four policies


def train_gaussian_bc(
    data: BanditData, steps: int = 1000, hidden: int = 128, seed: int = 0, num_samples: int = 2000
) -> np.ndarray:
    """Maximum-likelihood Gaussian policy N(mu(s), diag sigma(s)^2); returns clipped samples."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    net = mlp(STATE_DIM, 2 * ACTION_DIM, (hidden, hidden), act="mish")
    optimizer = make_optimizer(net.parameters(), 1e-3)
    for _ in range(steps):
        batch = data.batch(256, generator)
        mean, log_std = net(batch["observations"]).chunk(2, dim=-1)
        dist = torch.distributions.Normal(mean, log_std.clamp(-5, 2).exp())
        loss = -dist.log_prob(batch["actions"]).sum(-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        mean, log_std = net(torch.zeros(num_samples, STATE_DIM)).chunk(2, dim=-1)
        samples = mean + log_std.clamp(-5, 2).exp() * torch.randn_like(mean)
    return samples.clamp(-MAX_ACTION, MAX_ACTION).numpy()


def train_td3bc_style(
    data: BanditData, steps: int = 1000, hidden: int = 128, alpha: float = 2.5, seed: int = 0
) -> np.ndarray:
    """Deterministic policy: critic regressed on r, actor minimises -lambda Q + BC-MSE; returns
    its (single) action as a (1, 2) array."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    critic = CriticEnsemble(STATE_DIM, ACTION_DIM, 2, (hidden,) * 3, act="mish")
    actor = mlp(STATE_DIM, ACTION_DIM, (hidden,) * 3, act="mish", out_act=nn.Tanh())
    critic_opt = make_optimizer(critic.parameters(), 3e-4)
    actor_opt = make_optimizer(actor.parameters(), 3e-4)
    for _ in range(steps):
        batch = data.batch(256, generator)
        s, a = batch["observations"], batch["actions"]
        critic_loss = (critic(s, a) - batch["rewards"]).square().mean(dim=1).sum()
        critic_opt.zero_grad()
        critic_loss.backward()
        critic_opt.step()
        pi = actor(s) * MAX_ACTION
        q = critic(s, pi)[0]
        actor_loss = -alpha / q.abs().mean().detach() * q.mean() + (pi - a).square().mean()
        actor_opt.zero_grad()
        actor_loss.backward()
        actor_opt.step()
    with torch.no_grad():
        return (actor(torch.zeros(1, STATE_DIM)) * MAX_ACTION).numpy()


def diffusion_config(
    eta: float, steps: int, n_timesteps: int = 50, hidden: int = 128, lr: float = 3e-3
) -> DiffusionQLConfig:
    """The Diffusion-QL config of the toy: discount 0 turns the TD target into r; one lr for
    actor and critic (as the public toy)."""
    return DiffusionQLConfig(
        eta=eta,
        lr=lr,
        critic_lr=lr,
        steps=steps,
        n_timesteps=n_timesteps,
        hidden_dim=hidden,
        discount=0.0,
        lr_decay=False,
        device="cpu",
    )


def train_diffusion(
    data: BanditData,
    eta: float,
    steps: int = 1000,
    n_timesteps: int = 50,
    hidden: int = 128,
    batch_size: int = 256,
    lr: float = 3e-3,
    seed: int = 0,
    num_samples: int = 2000,
) -> np.ndarray:
    """Diffusion-BC (eta = 0) or Diffusion-QL (eta > 0) with the suite's agent; returns samples
    of the actor itself (no critic-based selection), (num_samples, 2)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    agent = DiffusionQL(
        STATE_DIM, ACTION_DIM, MAX_ACTION, diffusion_config(eta, steps, n_timesteps, hidden, lr)
    )
    for _ in range(steps):
        agent.update(data.batch(batch_size, generator))
    with torch.no_grad():
        return agent.actor.sample(torch.zeros(num_samples, STATE_DIM)).numpy()


# --------------------------------------------------------------------------- experiment


def run(
    steps: int = 1000,
    ql_steps: int = 300,
    n_timesteps: int = 50,
    hidden: int = 128,
    eta: float = 2.5,
    lr: float = 3e-3,
    seed: int = 0,
    num_samples: int = 2000,
) -> dict[str, np.ndarray]:
    """Train the four policies; returns their sampled actions by name."""
    data = make_dataset(seed=seed)
    diffusion = dict(
        n_timesteps=n_timesteps, hidden=hidden, lr=lr, seed=seed, num_samples=num_samples
    )
    return {
        "Gaussian BC": train_gaussian_bc(data, steps, hidden, seed, num_samples),
        "Diffusion-BC": train_diffusion(data, 0.0, steps, **diffusion),
        "TD3+BC": train_td3bc_style(data, steps, hidden, seed=seed),
        "Diffusion-QL": train_diffusion(data, eta, ql_steps, **diffusion),
    }


def plot(data: BanditData, samples: dict[str, np.ndarray], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(samples) + 1, figsize=(3.2 * (len(samples) + 1), 3.4))
    shown = np.random.default_rng(0).choice(len(data.rewards), 2000, replace=False)
    axes[0].scatter(
        *data.actions[shown].T, c=data.rewards[shown], cmap="viridis", s=3, vmin=-1, vmax=6
    )
    axes[0].set_title("data (colour: reward)")
    for mode, reward in zip(MODES, MODE_REWARDS):
        axes[0].annotate(f"r={reward:g}", mode, textcoords="offset points", xytext=(-12, 12))
    for ax, (name, points) in zip(axes[1:], samples.items()):
        marker = dict(s=60, marker="*", color="C3") if len(points) == 1 else dict(s=3, alpha=0.5)
        ax.scatter(*points.T, **marker)
        best = mode_shares(points)[BEST_MODE] if len(points) > 1 else np.nan
        ax.set_title(f"{name}" + ("" if np.isnan(best) else f"\n{best:.0%} at best mode"))
    for ax in axes:
        ax.set(xlim=(-1.05, 1.05), ylim=(-1.05, 1.05), aspect="equal", xticks=[-1, 0, 1])
        ax.set_yticks([-1, 0, 1])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results/toy_bandit", help="output directory")
    parser.add_argument(
        "--steps", type=int, default=1000, help="gradient steps (BC-style policies)"
    )
    parser.add_argument("--ql-steps", type=int, default=300, help="gradient steps of Diffusion-QL")
    parser.add_argument("--n-timesteps", type=int, default=50, help="diffusion steps T")
    parser.add_argument("--hidden", type=int, default=128, help="hidden width")
    parser.add_argument("--eta", type=float, default=2.5, help="Diffusion-QL's Q weight")
    parser.add_argument("--lr", type=float, default=3e-3, help="learning rate (diffusion models)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if min(args.steps, args.ql_steps, args.n_timesteps, args.hidden) < 1:
        parser.error("--steps, --ql-steps, --n-timesteps and --hidden must be >= 1")
    if args.eta < 0 or args.lr <= 0:
        parser.error("--eta must be >= 0 and --lr > 0")
    torch.set_num_threads(1)
    started = time.perf_counter()
    samples = run(
        args.steps, args.ql_steps, args.n_timesteps, args.hidden, args.eta, args.lr, args.seed
    )
    out = Path(args.out)
    plot(make_dataset(seed=args.seed), samples, out / "toy_bandit.png")
    summary = {
        "settings": vars(args),
        "seconds": round(time.perf_counter() - started, 1),
        "modes": MODES.tolist(),
        "mode_rewards": MODE_REWARDS.tolist(),
        f"share_within_{NEAR_RADIUS}_of_each_mode": {
            name: mode_shares(points).round(3).tolist() for name, points in samples.items()
        },
    }
    (out / "toy_bandit.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary[f"share_within_{NEAR_RADIUS}_of_each_mode"], indent=1))
    print(f"wrote {out / 'toy_bandit.png'} in {summary['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
