"""Perturbation panel: the perturbations do what they say, the panel's scores fall where a
balancing controller must fail, and the speed knob trades latency for score."""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_algo import ActorBC  # tests/tiny_algo.py: pytest puts tests/ on sys.path

from dql import registry
from dql.cli import main as dql_main
from dql.data import ObservationNormalizer
from dql.perturb import (
    ActionDelay,
    DroppedObservations,
    ObservationNoise,
    perturbation_hooks,
    perturbation_rng,
)
from dql.training import TrainConfig, run_training


@dataclass
class NoisyBCConfig(TrainConfig):
    num_candidates: int = 16
    """Noisy action draws averaged per state (more: less noise, slower)."""
    action_noise: float = 1.0
    """Std of each draw's noise, in units of max_action."""


class NoisyBC(ActorBC):
    """MSE behaviour cloning that acts with the mean of `num_candidates` noisy draws: a
    stochastic policy with a speed knob, like Diffusion-QL's candidates."""

    def __init__(self, observation_dim, action_dim, max_action, config) -> None:
        super().__init__(observation_dim, action_dim, max_action, config)
        self.config = config  # act() reads the knobs; latency.json records num_candidates

    @torch.no_grad()
    def act(self, observations: np.ndarray) -> np.ndarray:
        state = torch.as_tensor(observations)
        k = self.config.num_candidates
        draws = self.actor(state.repeat_interleave(k, dim=0))  # (B*K, act)
        draws = draws + self.config.action_noise * self.max_action * torch.randn_like(draws)
        return draws.view(state.shape[0], k, -1).mean(1).numpy()


@pytest.fixture(autouse=True)
def noisy_bc_algorithm(monkeypatch):
    """Register NoisyBC as algorithm "noisy_bc" (a module exposing Agent and Config)."""
    module = types.ModuleType("noisy_bc_for_tests")
    module.Agent, module.Config = NoisyBC, NoisyBCConfig
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(registry.ALGORITHMS, "noisy_bc", module.__name__)
    return "noisy_bc"


@pytest.fixture(scope="module")
def trained_run(pendulum_dataset, tmp_path_factory):
    """One NoisyBC run on the pendulum data, shared by this file's tests (read-only)."""
    root, dataset_id = pendulum_dataset
    run_dir = tmp_path_factory.mktemp("noisy_bc") / "run"
    config = NoisyBCConfig(
        dataset=dataset_id,
        steps=500,
        eval_interval=500,
        eval_episodes=2,
        log_interval=100,
        checkpoint_interval=500,
        run_dir=str(run_dir),
        progress=False,
    )
    patch = pytest.MonkeyPatch()
    patch.setenv("MINARI_DATASETS_PATH", root)
    try:
        run_training(config, NoisyBC, "noisy_bc")
    finally:
        patch.undo()
    return run_dir


# --------------------------------------------------------------------------- perturbations


def test_observation_noise_has_sigma_in_normalised_units():
    rng = np.random.default_rng(0)
    normalizer = ObservationNormalizer(
        np.array([1.0, -2.0, 0.0], np.float32), np.array([0.5, 3.0, 10.0], np.float32)
    )
    observations = rng.normal(size=(20_000, 3)).astype(np.float32)
    hook = ObservationNoise(0.3, normalizer.std, np.random.default_rng(1))
    shift = normalizer(hook(observations)) - normalizer(observations)
    np.testing.assert_allclose(shift.std(0), 0.3, rtol=0.03)
    np.testing.assert_allclose(shift.mean(0), 0.0, atol=0.01)


def test_action_delay_sends_the_action_chosen_k_steps_earlier():
    delay = ActionDelay(2)
    chosen = [np.full((3, 1), float(t), np.float32) for t in range(5)]
    sent = [delay(a) for a in chosen]
    np.testing.assert_array_equal(sent[0], 0.0)
    np.testing.assert_array_equal(sent[1], 0.0)
    for t in range(2, 5):
        np.testing.assert_array_equal(sent[t], chosen[t - 2])


def test_dropped_observations_repeat_the_last_seen_frame_at_rate_p():
    drop = DroppedObservations(0.3, np.random.default_rng(0))
    episodes, steps = 50, 200
    seen = [drop(np.full((episodes, 2), float(t))) for t in range(steps)]
    assert np.all(seen[0] == 0.0)
    held = np.array([(seen[t][:, 0] != t) for t in range(1, steps)])
    assert abs(held.mean() - 0.3) < 0.02
    for t in range(1, steps):  # a dropped frame is exactly the previous one the policy saw
        stale = seen[t][:, 0] != t
        np.testing.assert_array_equal(seen[t][stale], seen[t - 1][stale])


def test_zero_strength_is_unperturbed_and_bad_strengths_are_refused():
    normalizer = ObservationNormalizer.identity(2)
    rng = perturbation_rng(0, "delay", 0)
    for kind in ("obs_noise", "action_noise", "delay", "drop_prob"):
        hooks = perturbation_hooks(kind, 0, normalizer=normalizer, max_action=1.0, rng=rng)
        assert hooks == (None, None)
    from dql.errors import UserError

    for kind, bad in (("delay", 1.5), ("drop_prob", 1.0), ("obs_noise", -0.1), ("wind", 1)):
        with pytest.raises(UserError):
            perturbation_hooks(kind, bad, normalizer=normalizer, max_action=1.0, rng=rng)


# --------------------------------------------------------------------------- the panel


def test_panel_scores_fall_with_delay_and_observation_noise(trained_run, tmp_path, capsys):
    out = tmp_path / "panel"
    argv = ["panel", str(trained_run), "--delay", "0", "3", "--obs-noise", "0", "1.5"]
    argv += ["--drop-prob", "0.7", "--episodes", "3", "--out", str(out), "--device", "cpu"]
    assert dql_main(argv) == 0
    panel = pd.read_csv(out / "panel.csv")
    assert set(panel["perturbation"]) == {"delay", "obs_noise", "drop_prob"}
    score = panel.set_index(["perturbation", "strength"])["normalized_score"]
    nominal = score[("delay", 0)]
    assert nominal > 80  # the cloned controller balances
    assert score[("obs_noise", 0)] == nominal  # one shared unperturbed evaluation
    # a pole balanced from 3-step-old actions, or from observations 1.5 std off, falls
    assert score[("delay", 3)] < nominal - 50
    assert score[("obs_noise", 1.5)] < nominal - 50
    assert score[("drop_prob", 0.7)] < nominal - 30
    falls = panel.set_index(["perturbation", "strength"])["terminated"]
    assert falls[("delay", 3)] == 3 and falls[("delay", 0)] == 0
    agents = pd.read_csv(out / "agents.csv")
    assert agents["ms_per_action_b1"].iloc[0] > 0
    text = (out / "panel.md").read_text()
    assert "## delay" in text and "noisy_bc" in text
    assert (out / "panel.png").stat().st_size > 10_000


def test_panel_gives_every_agent_the_same_noise(trained_run):
    # two different agents see the same noisy first observations (the noise does not depend on
    # which agent is evaluated, or on what was evaluated before), and the agents really differ
    import copy
    import dataclasses

    from dql.export import load_run
    from dql.perturb import evaluate_run

    class Recorder:
        def __init__(self, agent) -> None:
            self.agent, self.seen = agent, []

        def act(self, observations):
            self.seen.append(np.array(observations))
            return self.agent.act(observations)

    run = load_run(trained_run)
    other = copy.deepcopy(run.agent)
    torch.manual_seed(1)
    with torch.no_grad():
        for module in [v for v in vars(other).values() if isinstance(v, torch.nn.Module)]:
            for parameter in module.parameters():
                parameter.add_(torch.randn_like(parameter))
    seen = {}
    for name, agent in (("a", run.agent), ("b", other), ("a again", run.agent)):
        recorder = Recorder(agent)
        evaluate_run(dataclasses.replace(run, agent=recorder), "obs_noise", 0.3, episodes=2)
        seen[name] = recorder.seen
    plain = Recorder(run.agent)
    evaluate_run(dataclasses.replace(run, agent=plain), episodes=2)
    np.testing.assert_array_equal(seen["a"][0], seen["b"][0])
    assert not np.allclose(seen["a"][0], plain.seen[0])  # the noise is there
    assert not np.allclose(seen["a"][-1], seen["b"][-1])  # the agents act differently
    assert len(seen["a"]) == len(seen["a again"])
    for mine, again in zip(seen["a"], seen["a again"]):
        np.testing.assert_array_equal(mine, again)


def test_trade_varies_candidates_and_reports_latency_against_score(trained_run, tmp_path):
    out = tmp_path / "trade"
    argv = ["panel", str(trained_run), "--delay", "0", "--episodes", "3", "--out", str(out)]
    assert dql_main([*argv, "--trade", "num_candidates=1,25", "--device", "cpu"]) == 0
    trade = pd.read_csv(out / "speed.csv").set_index("num_candidates")
    assert list(trade.index) == [1, 25]
    assert (trade["ms_per_action_b1"] > 0).all() and (trade["ms_per_action_b10"] > 0).all()
    # one draw of noise with std = max_action topples the pole; the mean of 25 does not
    assert trade.loc[25, "normalized_score"] > trade.loc[1, "normalized_score"] + 30
    assert "num_candidates" in (out / "speed.md").read_text()


def test_dql_latency_records_latency_with_speed_knobs(trained_run):
    assert dql_main(["latency", str(trained_run)]) == 0
    latency = json.loads((trained_run / "latency.json").read_text())
    assert latency["knobs"] == {"num_candidates": 16}
    for batch in ("1", "10"):
        timing = latency["devices"]["cpu"][batch]
        assert timing["ms_per_call"] > 0
        assert timing["ms_per_action"] == pytest.approx(timing["ms_per_call"] / int(batch))


def test_panel_refuses_unknown_settings(trained_run, tmp_path, capsys):
    argv = ["panel", str(trained_run), "--delay", "0", "--episodes", "1"]
    assert dql_main([*argv, "--out", str(tmp_path / "p"), "--trade", "n_timesteps=1,2"]) == 2
    captured = capsys.readouterr()
    assert "skipped" in captured.out and "none of the runs" in captured.err
    assert dql_main([*argv, "--delay", "-1"]) == 2
    assert dql_main(["panel", str(tmp_path / "nowhere")]) == 2
    assert "not a run directory" in capsys.readouterr().err
