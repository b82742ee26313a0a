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

The settings are the public toy's (run_toy_ql.py / run_toy_bc.py of the authors' code): T = 50
diffusion steps, hidden width 128 (actor and critic), time embedding 4, eta 2.5, the critic
regressed on the reward directly (here: discount 0, so the agent's TD target is r), 1000 epochs of
100 steps = 100,000 gradient steps at lr 3e-4 (actor and critic), batch 100, no gradient
clipping, constant lr. Every panel trains with them. The diffusion policies are the suite's
agent unchanged, fed batches with next_observations = observations; Diffusion-QL's step is
compiled, which is what makes 100k steps at T = 50 affordable on a CPU. Gaussian BC and the
TD3+BC-style policy stand in for the public toy's BC-MLE and QL-MLE panels; their networks here
are 3 x 128 Mish MLPs (the public ones are 2-hidden-layer Gaussian policies).

Per panel the summary reports the share of samples within NEAR_RADIUS = 0.1 of each mode (the
data's std is 0.05), the share with a coordinate at the action box's boundary (|a_i| = 1, where
the clip of the sampler puts samples that the Q term pushes out of the box), and the mean
distance to the best mode.

    python experiments/toy_bandit.py --out results/toy_bandit
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dql.diffusion_ql import DiffusionQL, DiffusionQLConfig
from dql.nets import CriticEnsemble, make_optimizer, mlp

MODES = np.array([[-0.8, 0.8], [-0.8, -0.8], [0.8, 0.8], [0.8, -0.8]], np.float32)
MODE_REWARDS = np.array([3.0, 0.0, 1.5, 5.0], np.float32)
BEST_MODE = int(np.argmax(MODE_REWARDS))  # (0.8, -0.8)
NEAR_RADIUS = 0.1
BOUNDARY = 1.0 - 1e-4  # |a_i| at or past this counts as on the box boundary
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


def boundary_share(samples: np.ndarray) -> float:
    """Fraction of samples with a coordinate on the action box's boundary (|a_i| = 1)."""
    return float((np.abs(samples) >= BOUNDARY * MAX_ACTION).any(axis=1).mean())


def best_mode_distance(samples: np.ndarray) -> float:
    """Mean distance of the samples to the best mode (0.8, -0.8)."""
    return float(np.linalg.norm(samples - MODES[BEST_MODE], axis=1).mean())


def panel_metrics(samples: np.ndarray) -> dict[str, object]:
    return {
        f"share_within_{NEAR_RADIUS}_of_each_mode": mode_shares(samples).round(3).tolist(),
        "share_at_boundary": round(boundary_share(samples), 3),
        "mean_distance_to_best_mode": round(best_mode_distance(samples), 3),
    }


@dataclass
class ToySettings:
    """The public toy's optimisation, for every panel."""

    steps: int = 100_000  # 1000 epochs x 100 steps
    batch_size: int = 100
    lr: float = 3e-4  # actor and critic
    grad_norm: float = 0.0  # no clipping
    n_timesteps: int = 50
    hidden: int = 128
    time_dim: int = 4
    eta: float = 2.5
    seed: int = 0
    num_samples: int = 2000
    compile: bool = True  # Diffusion-QL's step (runs of >= COMPILE_MIN_STEPS); same maths


# --------------------------------------------------------------------------- the four policies


def train_gaussian_bc(data: BanditData, cfg: ToySettings) -> np.ndarray:
    """Maximum-likelihood Gaussian policy N(mu(s), diag sigma(s)^2); returns clipped samples."""
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    net = mlp(STATE_DIM, 2 * ACTION_DIM, (cfg.hidden,) * 3, act="mish")
    optimizer = make_optimizer(net.parameters(), cfg.lr)
    for _ in range(cfg.steps):
        batch = data.batch(cfg.batch_size, generator)
        mean, log_std = net(batch["observations"]).chunk(2, dim=-1)
        dist = torch.distributions.Normal(mean, log_std.clamp(-5, 2).exp())
        loss = -dist.log_prob(batch["actions"]).sum(-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        mean, log_std = net(torch.zeros(cfg.num_samples, STATE_DIM)).chunk(2, dim=-1)
        samples = mean + log_std.clamp(-5, 2).exp() * torch.randn_like(mean)
    return samples.clamp(-MAX_ACTION, MAX_ACTION).numpy()


def train_td3bc_style(data: BanditData, cfg: ToySettings, alpha: float = 2.5) -> np.ndarray:
    """Deterministic policy: critic regressed on r, actor minimises -lambda Q + BC-MSE; returns
    its (single) action as a (1, 2) array."""
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    critic = CriticEnsemble(STATE_DIM, ACTION_DIM, 2, (cfg.hidden,) * 3, act="mish")
    actor = mlp(STATE_DIM, ACTION_DIM, (cfg.hidden,) * 3, act="mish", out_act=nn.Tanh())
    critic_opt = make_optimizer(critic.parameters(), cfg.lr)
    actor_opt = make_optimizer(actor.parameters(), cfg.lr)
    for _ in range(cfg.steps):
        batch = data.batch(cfg.batch_size, generator)
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


def diffusion_config(eta: float, cfg: ToySettings) -> DiffusionQLConfig:
    """The Diffusion-QL config of the toy: discount 0 turns the TD target into r; one lr for
    actor and critic and no gradient clipping (as the public toy)."""
    return DiffusionQLConfig(
        eta=eta,
        actor_lr=cfg.lr,
        critic_lr=cfg.lr,
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        grad_norm=cfg.grad_norm,
        n_timesteps=cfg.n_timesteps,
        hidden=(cfg.hidden,) * 3,
        time_dim=cfg.time_dim,
        discount=0.0,
        lr_decay=False,
        compile=cfg.compile,
        device="cpu",
    )


def train_diffusion(data: BanditData, eta: float, cfg: ToySettings) -> np.ndarray:
    """Diffusion-BC (eta = 0) or Diffusion-QL (eta > 0) with the suite's agent; returns samples
    of the actor itself (no critic-based selection), (num_samples, 2)."""
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    agent = DiffusionQL(STATE_DIM, ACTION_DIM, MAX_ACTION, diffusion_config(eta, cfg))
    for _ in range(cfg.steps):
        agent.update(data.batch(cfg.batch_size, generator))
    with torch.no_grad():
        return agent.actor.sample(torch.zeros(cfg.num_samples, STATE_DIM)).numpy()


# --------------------------------------------------------------------------- experiment

TRAINERS = {
    "Gaussian BC": train_gaussian_bc,
    "Diffusion-BC": lambda data, cfg: train_diffusion(data, 0.0, cfg),
    "TD3+BC": train_td3bc_style,
    "Diffusion-QL": lambda data, cfg: train_diffusion(data, cfg.eta, cfg),
}


def run(cfg: ToySettings) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Train the four policies; returns their sampled actions and training seconds by name."""
    data = make_dataset(seed=cfg.seed)
    samples, seconds = {}, {}
    for name, train in TRAINERS.items():
        started = time.perf_counter()
        samples[name] = train(data, cfg)
        seconds[name] = round(time.perf_counter() - started, 1)
        print(f"{name}: {seconds[name]} s, {json.dumps(panel_metrics(samples[name]))}", flush=True)
    return samples, seconds


def plot(data: BanditData, samples: dict[str, np.ndarray], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(samples) + 1, figsize=(3.2 * (len(samples) + 1), 3.6))
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
        best, edge = mode_shares(points)[BEST_MODE], boundary_share(points)
        ax.set_title(f"{name}\n{best:.0%} near best mode, {edge:.0%} at edge", fontsize=9)
    for ax in axes:
        ax.set(xlim=(-1.05, 1.05), ylim=(-1.05, 1.05), aspect="equal", xticks=[-1, 0, 1])
        ax.set_yticks([-1, 0, 1])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    defaults = ToySettings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results/toy_bandit", help="output directory")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="gradient steps")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr, help="lr of every network")
    parser.add_argument("--grad-norm", type=float, default=defaults.grad_norm, help="0: none")
    parser.add_argument("--n-timesteps", type=int, default=defaults.n_timesteps, help="T")
    parser.add_argument("--hidden", type=int, default=defaults.hidden, help="hidden width")
    parser.add_argument("--time-dim", type=int, default=defaults.time_dim)
    parser.add_argument("--eta", type=float, default=defaults.eta, help="Diffusion-QL's Q weight")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--no-compile", action="store_true", help="eager Diffusion-QL steps")
    args = parser.parse_args(argv)
    if min(args.steps, args.batch_size, args.n_timesteps, args.hidden) < 1:
        parser.error("--steps, --batch-size, --n-timesteps and --hidden must be >= 1")
    if args.eta < 0 or args.lr <= 0 or args.grad_norm < 0:
        parser.error("--eta and --grad-norm must be >= 0 and --lr > 0")
    cfg = ToySettings(
        args.steps,
        args.batch_size,
        args.lr,
        args.grad_norm,
        args.n_timesteps,
        args.hidden,
        args.time_dim,
        args.eta,
        args.seed,
        compile=not args.no_compile,
    )
    torch.set_num_threads(1)
    samples, seconds = run(cfg)
    out = Path(args.out)
    plot(make_dataset(seed=cfg.seed), samples, out / "toy_bandit.png")
    summary = {
        "settings": asdict(cfg),
        "seconds": seconds,
        "modes": MODES.tolist(),
        "mode_rewards": MODE_REWARDS.tolist(),
        "panels": {name: panel_metrics(points) for name, points in samples.items()},
    }
    (out / "toy_bandit.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary["panels"], indent=1))
    print(f"wrote {out / 'toy_bandit.png'} in {sum(seconds.values()):.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
