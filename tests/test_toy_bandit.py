"""The four-Gaussian bandit (experiments/toy_bandit.py) at small budgets: Diffusion-BC keeps all
four modes where a Gaussian smears them; Diffusion-QL settles on the best mode."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

TOY_PATH = Path(__file__).resolve().parent.parent / "experiments" / "toy_bandit.py"
SHORT = dict(n_timesteps=10, hidden=64, num_samples=1000, compile=False)  # fast, same algorithm


@pytest.fixture(scope="module")
def toy():
    spec = importlib.util.spec_from_file_location("toy_bandit", TOY_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data(toy):
    return toy.make_dataset(seed=0)


def test_dataset_is_the_papers_four_gaussians(toy, data) -> None:
    actions, rewards = data.actions.numpy(), data.rewards.numpy()
    assert actions.shape == (10_000, 2) and np.abs(actions).max() <= 1.0
    assert np.bincount(data.modes).tolist() == [2500] * 4
    for mode in range(4):
        members = data.modes == mode
        np.testing.assert_allclose(actions[members].mean(0), toy.MODES[mode], atol=0.01)
        assert abs(actions[members].std(0).mean() - 0.05) < 0.005
        assert abs(rewards[members].mean() - toy.MODE_REWARDS[mode]) < 0.05
    np.testing.assert_allclose(toy.MODES[toy.BEST_MODE], [0.8, -0.8])
    # within 0.1 = 2 std of a 2-d Gaussian: 1 - exp(-2) = 86% of a mode, so ~21.6% of the data
    np.testing.assert_allclose(toy.mode_shares(actions), 0.25 * (1 - np.exp(-2)), atol=0.01)


@pytest.mark.slow
def test_diffusion_bc_keeps_every_mode_where_gaussian_bc_smears(toy, data) -> None:
    short = toy.ToySettings(steps=2000, lr=3e-3, batch_size=256, **SHORT)
    diffusion = toy.mode_shares(toy.train_diffusion(data, 0.0, short))
    gaussian = toy.mode_shares(toy.train_gaussian_bc(data, dataclasses.replace(short, steps=300)))
    assert diffusion.min() >= 0.05, diffusion  # 15-23% each within 0.1 after 2000 steps
    assert gaussian.max() < 0.02, gaussian  # ~0.3%: a Gaussian's mass sits between the modes


@pytest.mark.slow
def test_the_q_term_moves_diffusion_ql_to_the_best_modes_quadrant(toy, data) -> None:
    """The short version of the figure's Diffusion-QL panel: 1000 steps take the samples into
    the quadrant of the best mode (x > 0.5, y < -0.5) and away from every other mode, where
    Diffusion-BC at the same settings spreads over all four. At this budget they sit at the
    box corner (1, -1) rather than on the mode: the undertrained critic peaks there
    (results/toy_bandit/critic_landscape.jsonl); the published 100k-step run is the figure."""
    short = toy.ToySettings(steps=1000, lr=3e-3, batch_size=256, **SHORT)

    def best_quadrant(samples: np.ndarray) -> float:
        return float(((samples[:, 0] > 0.5) & (samples[:, 1] < -0.5)).mean())

    ql = toy.train_diffusion(data, 2.5, short)
    bc = toy.train_diffusion(data, 0.0, short)
    assert best_quadrant(ql) > 0.8, best_quadrant(ql)  # 96% measured
    assert np.delete(toy.mode_shares(ql), toy.BEST_MODE).max() < 0.02
    assert best_quadrant(bc) < 0.3, best_quadrant(bc)  # 13%: the other modes keep theirs


def test_panel_metrics_count_modes_boundary_and_distance(toy) -> None:
    samples = np.array([[0.8, -0.8], [0.85, -0.8], [1.0, -1.0], [-0.8, 0.75], [0.0, 1.0]])
    metrics = toy.panel_metrics(samples)
    # (1, -1) is 0.28 from the best mode: not within 0.1 of it, but on the boundary
    assert metrics[f"share_within_{toy.NEAR_RADIUS}_of_each_mode"] == [0.2, 0.0, 0.0, 0.4]
    assert metrics["share_at_boundary"] == 0.4
    expected = np.mean([0.0, 0.05, np.hypot(0.2, 0.2), np.hypot(1.6, 1.55), np.hypot(0.8, 1.8)])
    assert metrics["mean_distance_to_best_mode"] == pytest.approx(expected, abs=1e-3)


def test_script_writes_the_figure_and_the_metrics(toy, tmp_path: Path) -> None:
    args = ["--out", str(tmp_path), "--steps", "3", "--n-timesteps", "3", "--hidden", "16"]
    assert toy.main(args) == 0
    assert (tmp_path / "toy_bandit.png").stat().st_size > 10_000
    summary = json.loads((tmp_path / "toy_bandit.json").read_text())
    assert set(summary["panels"]) == {"Gaussian BC", "Diffusion-BC", "TD3+BC", "Diffusion-QL"}
    assert summary["settings"]["steps"] == 3 and summary["settings"]["time_dim"] == 4
    assert set(summary["seconds"]) == set(summary["panels"])
    for panel in summary["panels"].values():
        assert 0 <= panel["share_at_boundary"] <= 1 and panel["mean_distance_to_best_mode"] >= 0


def test_defaults_are_the_published_toy_settings(toy) -> None:
    cfg = toy.ToySettings()
    assert (cfg.steps, cfg.batch_size, cfg.lr, cfg.grad_norm) == (100_000, 100, 3e-4, 0.0)
    assert (cfg.n_timesteps, cfg.hidden, cfg.time_dim, cfg.eta) == (50, 128, 4, 2.5)
    config = toy.diffusion_config(cfg.eta, cfg)
    assert (config.discount, config.lr_decay, config.critic_lr) == (0.0, False, 3e-4)
