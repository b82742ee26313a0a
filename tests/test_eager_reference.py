"""The bench's eager Diffusion-QL (experiments/eager_diffusion_ql.py) computes the product's
maths: with the product's weights copied in, the same batch and the same noise, the denoiser,
L_bc, the reverse chain, the critics, the TD target and L_q agree. A speed ratio against it is
then a ratio of two implementations of one algorithm, not of two algorithms."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

from eager_diffusion_ql import EagerDiffusionQL  # noqa: E402

from dql.diffusion_ql import DiffusionQL, DiffusionQLConfig  # noqa: E402

OBS, ACT, ROWS, T = 5, 2, 16, 5


def copy_linear(ensemble, k: int, linear) -> None:
    """Member k of an EnsembleLinear (in, out) into an nn.Linear (out, in)."""
    linear.weight.copy_(ensemble.weight[k].T)
    linear.bias.copy_(ensemble.bias[k, 0])


def linears(module) -> list:
    return [m for m in module.modules() if isinstance(m, torch.nn.Linear)]


def ensembles(module) -> list:
    return [m for m in module.modules() if type(m).__name__ == "EnsembleLinear"]


def twins(max_action: float = 1.0) -> tuple[DiffusionQL, EagerDiffusionQL]:
    torch.manual_seed(0)
    config = DiffusionQLConfig(device="cpu", hidden=(32, 32, 32), compile=False)
    ours = DiffusionQL(OBS, ACT, max_action, config)
    eager = EagerDiffusionQL(OBS, ACT, max_action, hidden=32)
    with torch.no_grad():
        for theirs, mine in [(eager.actor, ours.actor), (eager.ema_model, ours.ema_actor)]:
            for mine_linear, linear in zip(
                linears(mine.denoiser), linears(theirs.model), strict=True
            ):
                linear.load_state_dict(mine_linear.state_dict())
        for theirs, mine in [
            (eager.critic, ours.critic),
            (eager.critic_target, ours.critic_target),
        ]:
            layers = ensembles(mine)
            for k, q in enumerate((theirs.q1_model, theirs.q2_model)):
                for ensemble, linear in zip(layers, linears(q), strict=True):
                    copy_linear(ensemble, k, linear)
    return ours, eager


def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "observations": torch.randn(ROWS, OBS, generator=g),
        "actions": torch.rand(ROWS, ACT, generator=g) * 2 - 1,
        "next_observations": torch.randn(ROWS, OBS, generator=g),
        "rewards": torch.randn(ROWS, generator=g),
        "terminals": (torch.rand(ROWS, generator=g) < 0.2).float(),
    }


def eager_chain_noise(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The draws of the eager sampler under `seed` (x_T, then one z per reverse step, the last
    multiplied by 0) and the same draws as the product's (T, B, A) chain noise."""
    torch.manual_seed(seed)
    x_T = torch.randn(ROWS, ACT)
    z = [torch.randn(ROWS, ACT) for _ in range(T)]
    return x_T, torch.stack([x_T, *z[: T - 1]])


def test_denoiser_and_bc_loss_agree():
    ours, eager = twins()
    b = batch()
    t = torch.randint(0, T, (ROWS,), generator=torch.Generator().manual_seed(2))
    x = torch.randn(ROWS, ACT)
    with torch.no_grad():
        torch.testing.assert_close(
            ours.actor.denoiser(x, t, b["observations"]), eager.actor.model(x, t, b["observations"])
        )
    torch.manual_seed(3)  # the eager loss draws t, then the noise
    expected = eager.actor.loss(b["actions"], b["observations"])
    torch.manual_seed(3)
    t, noise = torch.randint(0, T, (ROWS,)), torch.randn(ROWS, ACT)
    got = ours.actor.loss(b["actions"], b["observations"], t, noise)
    torch.testing.assert_close(got, expected)


def test_reverse_chain_and_td_target_agree():
    ours, eager = twins(max_action=0.5)  # a box the chain's clipping reaches
    b = batch()
    _, chain_noise = eager_chain_noise(4)
    torch.manual_seed(4)
    with torch.no_grad():
        expected = eager.ema_model.sample(b["next_observations"])
        got = ours.ema_actor.sample(b["next_observations"], chain_noise)
        torch.testing.assert_close(got, expected)
        assert (expected.abs() > 0.5 - 1e-6).any()  # the clip was exercised
        next_q = torch.min(*eager.critic_target(b["next_observations"], expected))[:, 0]
        reward, not_done = b["rewards"], 1.0 - b["terminals"]
        target = ours.td_target(reward, b["next_observations"], b["terminals"], chain_noise)
        torch.testing.assert_close(target, reward + not_done * 0.99 * next_q)


def test_critic_and_q_loss_agree():
    ours, eager = twins()
    b = batch()
    s, a = b["observations"], b["actions"]
    with torch.no_grad():
        q1, q2 = eager.critic(s, a)
        torch.testing.assert_close(ours.critic(s, a), torch.stack([q1[:, 0], q2[:, 0]]))
        # L_q as the public code writes it, maximising Q_1 scaled by |Q_2| (the coin's one side)
        expected = -q1.mean() / q2.abs().mean()
        pick = torch.tensor(0)
        got = -ours.critic.member(pick, s, a).mean() / (
            ours.critic.member(1 - pick, s, a).abs().mean()
        )
        torch.testing.assert_close(got, expected)
        y = torch.randn(ROWS)
        critic_loss = (ours.critic(s, a) - y).square().mean(-1).sum()
        eager_loss = F.mse_loss(q1, y[:, None]) + F.mse_loss(q2, y[:, None])
        torch.testing.assert_close(critic_loss, eager_loss)


def test_target_critics_score_the_eager_candidates_alike():
    # acting: candidates from the chain, softmax over the target critics' min-Q
    ours, eager = twins()
    s = batch()["observations"][:3]
    torch.manual_seed(5)
    expected = eager.act(s.numpy())
    assert np.isfinite(expected).all() and expected.shape == (3, ACT)
    with torch.no_grad():
        q_ours = ours.critic_target(s, torch.as_tensor(expected)).amin(0)
        q_eager = eager.critic_target.q_min(s, torch.as_tensor(expected))[:, 0]
    torch.testing.assert_close(q_ours, q_eager)
