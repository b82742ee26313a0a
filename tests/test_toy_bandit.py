"""The four-Gaussian bandit (experiments/toy_bandit.py) at small budgets: Diffusion-BC keeps all
four modes where a Gaussian smears them; Diffusion-QL settles on the best mode."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

TOY_PATH = Path(__file__).resolve().parent.parent / "experiments" / "toy_bandit.py"
SMALL = dict(n_timesteps=10, hidden=64, lr=3e-3, num_samples=1000)  # fast, same algorithm


@pytest.fixture(scope="module")
def toy():
    spec = importlib.util.spec_from_file_location("toy_bandit", TOY_PATH)
    module = importlib.util.module_from_spec(spec)
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
    assert toy.mode_shares(actions).min() > 0.24  # the radius counts a whole mode's data


def test_diffusion_bc_keeps_every_mode_where_gaussian_bc_smears(toy, data) -> None:
    gaussian = toy.mode_shares(toy.train_gaussian_bc(data, steps=300, hidden=64, num_samples=1000))
    diffusion = toy.mode_shares(toy.train_diffusion(data, eta=0.0, steps=1000, **SMALL))
    assert diffusion.min() >= 0.10, diffusion
    assert gaussian.max() < 0.10, gaussian


def test_diffusion_ql_concentrates_on_the_best_mode(toy, data) -> None:
    shares = toy.mode_shares(toy.train_diffusion(data, eta=2.5, steps=300, **SMALL))
    assert shares[toy.BEST_MODE] > 0.5, shares
    assert np.delete(shares, toy.BEST_MODE).max() < 0.1, shares


def test_script_writes_the_figure_and_shares(toy, tmp_path: Path) -> None:
    args = ["--out", str(tmp_path), "--steps", "3", "--ql-steps", "2", "--n-timesteps", "3"]
    assert toy.main([*args, "--hidden", "16"]) == 0
    assert (tmp_path / "toy_bandit.png").stat().st_size > 10_000
    summary = json.loads((tmp_path / "toy_bandit.json").read_text())
    shares = summary[f"share_within_{toy.NEAR_RADIUS}_of_each_mode"]
    assert set(shares) == {"Gaussian BC", "Diffusion-BC", "TD3+BC", "Diffusion-QL"}
