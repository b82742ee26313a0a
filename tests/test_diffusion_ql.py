"""Diffusion-QL: config checks, TD target, action selection, exact resume, CLI, per-task table,
and learning on a pendulum dataset where behaviour cloning fails."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch
from conftest import build_pendulum_dataset
from tiny_algo import TanhMlpBC as TinyBC  # MSE BC through a tanh MLP
from torch import nn

from dql import diffusion_ql
from dql.data import task_name
from dql.diffusion_ql import DiffusionQL, DiffusionQLConfig
from dql.errors import ConfigError
from dql.hyperparams import HYPERPARAMS_DIR, task_hyperparams
from dql.training import TrainConfig, run_training

OBS_DIM, ACT_DIM = 4, 2


def small_config(**overrides) -> DiffusionQLConfig:
    fields = dict(device="cpu", hidden=(32, 32, 32), num_candidates=8, steps=100, step_start_ema=4)
    return DiffusionQLConfig(**{**fields, **overrides})


def random_batch(batch_size: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "observations": torch.randn(batch_size, OBS_DIM, generator=g),
        "actions": torch.rand(batch_size, ACT_DIM, generator=g) * 2 - 1,
        "rewards": torch.randn(batch_size, generator=g),
        "next_observations": torch.randn(batch_size, OBS_DIM, generator=g),
        "terminals": (torch.rand(batch_size, generator=g) < 0.3).float(),
    }


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "field, value",
    [
        ("eta", -1.0),
        ("n_timesteps", 0),
        ("actor_lr", 0.0),
        ("critic_lr", -1e-4),
        ("discount", 1.5),
        ("tau", 0.0),
        ("ema_decay", 1.0),
        ("update_ema_every", 0),
        ("num_backup_actions", 0),
        ("num_candidates", 0),
        ("hidden", (32, 0)),
        ("step_start_ema", -1),
        ("beta_schedule", "quadratic"),
        ("action_selection", "greedy"),
        ("q_gradient", "edp"),
        ("time_dim", 3),
        ("steps", 0),
    ],
)
def test_validate_refuses_nonsense(field: str, value: object) -> None:
    small_config().validate()
    with pytest.raises(ConfigError, match=field.replace("_", "-")):
        small_config(**{field: value}).validate()


def test_module_exposes_the_algorithm_protocol() -> None:
    assert diffusion_ql.Config is DiffusionQLConfig
    assert issubclass(DiffusionQLConfig, diffusion_ql.TrainConfig)
    assert callable(diffusion_ql.train) and callable(diffusion_ql.main)
    assert DiffusionQL.selection_metric == "bc_loss"


# --------------------------------------------------------------------------- losses and targets


class FakeCritic(nn.Module):
    """Q_1(s, a) = sum(a), Q_2(s, a) = 0.5 - sum(a): (2, B)."""

    def forward(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        total = actions.sum(-1)
        return torch.stack([total, 0.5 - total])

    def min(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self(observations, actions).min(dim=0).values


class FixedCandidates(nn.Module):
    """A 'policy' returning preset actions, cycling through them row by row."""

    def __init__(self, actions: torch.Tensor) -> None:
        super().__init__()
        self.actions = actions

    def sample(self, state: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        return self.actions[torch.arange(state.shape[0]) % len(self.actions)]


@pytest.mark.parametrize("max_q_backup", [False, True])
def test_td_target_bootstraps_min_over_critics_and_masks_terminals(max_q_backup: bool) -> None:
    agent = DiffusionQL(
        OBS_DIM, ACT_DIM, 1.0, small_config(discount=0.9, max_q_backup=max_q_backup)
    )
    agent.critic_target = FakeCritic()
    candidates = torch.tensor([[0.1, 0.0], [0.4, 0.2], [-0.3, 0.0]])
    agent.config.num_backup_actions = 3
    agent.ema_actor = FixedCandidates(candidates)
    reward, terminal = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 1.0])
    target = agent.td_target(reward, torch.zeros(2, OBS_DIM), terminal)
    if max_q_backup:  # per critic the max over the 3 candidates (sums 0.1, 0.6, -0.3), then min
        next_q = min(0.6, 0.5 + 0.3)
    else:  # one candidate per state: state 0 gets candidates[0]
        next_q = min(0.1, 0.5 - 0.1)
    torch.testing.assert_close(target, torch.tensor([1.0 + 0.9 * next_q, 2.0]))


def test_update_returns_tensors_and_trains_every_network() -> None:
    torch.manual_seed(0)
    agent = DiffusionQL(OBS_DIM, ACT_DIM, 1.0, small_config(update_ema_every=2))
    before = copy.deepcopy(agent.state_dict())
    for step in range(2):
        metrics = agent.update(random_batch(seed=step))
    expected = {"bc_loss", "q_loss", "actor_loss", "critic_loss", "q_mean", "target_q_mean"}
    assert expected <= set(metrics)
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in metrics.values())
    after = agent.state_dict()
    for net in ("actor", "ema_actor", "critic", "critic_target"):
        moved = [not torch.equal(before[net][k], after[net][k]) for k in after[net]]
        assert any(moved), f"{net} did not change"
    # before step_start_ema (4) the EMA actor is a copy of the actor...
    ema, actor = agent.ema_actor.state_dict(), agent.actor.state_dict()
    assert all(torch.equal(ema[k], actor[k]) for k in actor)
    # ...from then on every 2nd step it moves (1 - decay) of the way towards it
    agent.update(random_batch(seed=2))
    ema_before = {k: v.clone() for k, v in agent.ema_actor.state_dict().items()}
    agent.update(random_batch(seed=3))
    actor = agent.actor.state_dict()
    for k, v in agent.ema_actor.state_dict().items():
        torch.testing.assert_close(v, ema_before[k] + 0.005 * (actor[k] - ema_before[k]))
    assert agent.step == 4


def test_q_term_is_scale_free_and_eta_zero_is_diffusion_bc() -> None:
    """L_q = -mean Q_k / mean |Q_j| (detached): multiplying Q by 100 leaves it unchanged."""
    torch.manual_seed(0)
    config = small_config(critic_lr=1e-12)  # the critic step barely moves the critic
    agent, scaled = (DiffusionQL(OBS_DIM, ACT_DIM, 1.0, config) for _ in range(2))
    scaled.load_state_dict(copy.deepcopy(agent.state_dict()))
    with torch.no_grad():
        last = scaled.critic.net.net[-1]
        last.weight.mul_(100.0)
        last.bias.mul_(100.0)
    torch.manual_seed(1)
    metrics = agent.update(random_batch())
    torch.manual_seed(1)
    metrics_scaled = scaled.update(random_batch())
    assert metrics_scaled["q_mean"].abs() > 50 * metrics["q_mean"].abs()
    torch.testing.assert_close(metrics_scaled["q_loss"], metrics["q_loss"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(
        metrics["actor_loss"], metrics["bc_loss"] + agent.config.eta * metrics["q_loss"]
    )
    bc_agent = DiffusionQL(OBS_DIM, ACT_DIM, 1.0, small_config(eta=0.0))
    metrics = bc_agent.update(random_batch())
    assert metrics["q_loss"].item() == 0.0
    torch.testing.assert_close(metrics["actor_loss"], metrics["bc_loss"])


def test_approx_q_gradient_is_edps_one_step_reconstruction() -> None:
    """q_gradient approx: L_q at a0_hat = (a_i - sqrt(1 - abar_i) eps_hat) / sqrt(abar_i),
    clipped, from L_bc's own step i, noise and denoiser pass (one pass, where chain makes
    T + 1), with the same gradients as that loss written out by hand."""
    torch.manual_seed(0)
    agent = DiffusionQL(OBS_DIM, ACT_DIM, 1.0, small_config(q_gradient="approx", eta=2.0))
    batch = random_batch(32)
    noise = agent.draw_noise(32)
    assert noise["actor_chain"] is None  # approx draws no chain noise
    calls = []
    hook = agent.actor.denoiser.register_forward_hook(lambda *args: calls.append(1))
    agent.critic.requires_grad_(False)
    loss, metrics = agent.actor_loss(batch, noise)
    hook.remove()
    assert len(calls) == 1
    grads = torch.autograd.grad(loss.sum(), list(agent.actor.parameters()))

    state, action = batch["observations"], batch["actions"]
    i, eps = noise["bc_steps"], noise["bc_noise"]
    abar = agent.actor.alphas_cumprod[i][..., None]
    noisy = abar.sqrt() * action + (1 - abar).sqrt() * eps
    eps_hat = agent.actor.denoiser(noisy, i, state)
    a0_hat = ((noisy - (1 - abar).sqrt() * eps_hat) / abar.sqrt()).clamp(-1.0, 1.0)
    q = agent.critic(state, a0_hat)  # (2, B)
    k = int(noise["critic_pick"])
    q_loss = -q[k].mean() / q[1 - k].abs().mean().detach()
    expected = (eps_hat - eps).square().mean() + 2.0 * q_loss
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(metrics["q_loss"], q_loss.detach())
    for got, want in zip(grads, torch.autograd.grad(expected, list(agent.actor.parameters()))):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)

    chain = DiffusionQL(OBS_DIM, ACT_DIM, 1.0, small_config(eta=2.0))
    calls.clear()
    hook = chain.actor.denoiser.register_forward_hook(lambda *args: calls.append(1))
    chain.critic.requires_grad_(False)
    chain.actor_loss(batch, chain.draw_noise(32))
    hook.remove()
    assert len(calls) == chain.config.n_timesteps + 1


def test_lr_decays_to_zero_with_cosine_schedule_or_stays_constant() -> None:
    for lr_decay, final in ((True, 0.0), (False, 3e-4)):
        agent = DiffusionQL(OBS_DIM, ACT_DIM, 1.0, small_config(steps=4, lr_decay=lr_decay))
        lrs = []
        for _ in range(4):
            agent.update(random_batch(batch_size=4))
            lrs.append(agent.actor_optimizer.param_groups[0]["lr"])
        assert lrs[-1] == pytest.approx(final, abs=1e-12)
        assert agent.critic_optimizer.param_groups[0]["lr"] == pytest.approx(final, abs=1e-12)
        if lr_decay:
            assert lrs == sorted(lrs, reverse=True) and lrs[0] < 3e-4


# --------------------------------------------------------------------------- acting


def test_act_is_batched_in_the_box_and_reproducible() -> None:
    agent = DiffusionQL(OBS_DIM, ACT_DIM, 0.5, small_config())
    observations = np.random.default_rng(0).normal(size=(7, OBS_DIM)).astype(np.float32)
    torch.manual_seed(1)
    first = agent.act(observations)
    torch.manual_seed(1)
    second = agent.act(observations)
    assert first.shape == (7, ACT_DIM) and first.dtype == np.float32
    assert np.abs(first).max() <= 0.5
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("selection", ["argmax", "softmax"])
def test_act_picks_the_candidate_the_target_critic_prefers(selection: str) -> None:
    class PreferPoint(nn.Module):  # Q = -20 |a - (0.4, -0.4)|^2: softmax is near-greedy
        def min(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
            return -20 * (actions - torch.tensor([0.4, -0.4])).square().sum(-1)

    torch.manual_seed(0)
    agent = DiffusionQL(
        OBS_DIM, ACT_DIM, 1.0, small_config(num_candidates=32, action_selection=selection)
    )
    agent.critic_target = PreferPoint()
    observations = np.zeros((200, OBS_DIM), np.float32)
    with torch.no_grad():
        plain = agent.actor.sample(torch.zeros(200, OBS_DIM)).numpy()
    picked = agent.act(observations)
    distance = lambda a: np.linalg.norm(a - np.array([0.4, -0.4]), axis=1).mean()  # noqa: E731
    assert distance(picked) < 0.5 * distance(plain)


# --------------------------------------------------------------------------- exact resume


def test_state_dict_round_trip_gives_identical_updates() -> None:
    torch.manual_seed(0)
    config = small_config(update_ema_every=1, max_q_backup=True, num_backup_actions=3)
    agent = DiffusionQL(OBS_DIM, ACT_DIM, 1.0, config)
    for step in range(6):  # past step_start_ema, with optimiser and scheduler state
        agent.update(random_batch(seed=step))
    saved = copy.deepcopy(agent.state_dict())
    torch.manual_seed(123)  # a different initialisation
    restored = DiffusionQL(OBS_DIM, ACT_DIM, 1.0, config)
    restored.load_state_dict(copy.deepcopy(saved))
    for step in range(6, 9):
        torch.manual_seed(step)
        expected = agent.update(random_batch(seed=step))
        torch.manual_seed(step)
        got = restored.update(random_batch(seed=step))
        for k in expected:
            assert torch.equal(expected[k], got[k]), k
    a, b = agent.state_dict(), restored.state_dict()
    for net in ("actor", "ema_actor", "critic", "critic_target"):
        assert all(torch.equal(a[net][k], b[net][k]) for k in a[net]), net
    assert a["actor_scheduler"] == b["actor_scheduler"] and a["step"] == b["step"] == 9
    torch.manual_seed(5)
    obs = np.ones((3, OBS_DIM), np.float32)
    first = agent.act(obs)
    torch.manual_seed(5)
    np.testing.assert_array_equal(first, restored.act(obs))


def test_state_dict_loads_with_weights_only(tmp_path: Path) -> None:
    agent = DiffusionQL(OBS_DIM, ACT_DIM, 1.0, small_config())
    agent.update(random_batch())
    torch.save(agent.state_dict(), tmp_path / "agent.pt")
    state = torch.load(tmp_path / "agent.pt", weights_only=True)
    DiffusionQL(OBS_DIM, ACT_DIM, 1.0, small_config()).load_state_dict(state)


# --------------------------------------------------------------------------- CLI


def test_cli_trains_and_writes_result(pendulum_store: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    code = diffusion_ql.main(
        [
            "--dataset",
            pendulum_store,
            "--steps",
            "20",
            "--eval-episodes",
            "2",
            "--hidden",
            "32",
            "32",
            "--num-candidates",
            "4",
            "--log-interval",
            "10",
            "--run-dir",
            str(run_dir),
            "--no-progress",
        ]
    )
    assert code == 0
    result = json.loads((run_dir / "result.json").read_text())
    assert result["algorithm"] == "diffusion_ql" and result["steps"] == 20
    assert result["selected_step"] == 20  # offline selection by bc_loss had a value
    saved = json.loads((run_dir / "config.json").read_text())["config"]
    assert saved["hidden"] == [32, 32] and saved["num_candidates"] == 4


def test_runs_saved_under_the_old_field_names_still_load_and_tabulate(
    pendulum_store: str, tmp_path: Path
) -> None:
    # runs written before lr -> actor_lr and hidden_dim -> hidden: the same agent, one config
    from dql.export import load_run
    from dql.runs import read_run_config
    from dql.tables import config_hash

    run_dir = tmp_path / "run"
    flags = ["--dataset", pendulum_store, "--steps", "10", "--eval-episodes", "1"]
    flags += ["--hidden", "16", "16", "16", "--actor-lr", "1e-3", "--num-candidates", "2"]
    assert diffusion_ql.main([*flags, "--run-dir", str(run_dir), "--no-progress"]) == 0
    file = run_dir / "config.json"
    saved = json.loads(file.read_text())
    today = config_hash(saved["config"])
    old = {k: v for k, v in saved["config"].items() if k not in ("hidden", "actor_lr")}
    file.write_text(json.dumps({**saved, "config": {**old, "hidden_dim": 16, "lr": 1e-3}}))
    assert config_hash(read_run_config(run_dir)["config"]) == today
    run = load_run(run_dir)
    assert (tuple(run.agent.config.hidden), run.agent.config.actor_lr) == ((16, 16, 16), 1e-3)


def test_cli_negative_eta_is_a_one_line_error(
    pendulum_store: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code = diffusion_ql.main(
        ["--dataset", pendulum_store, "--eta", "-1", "--out-dir", str(tmp_path)]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "--eta" in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # refused before any run directory was made


# --------------------------------------------------------------------------- hyperparameters

# reference.md: task -> (lr, eta, max_q_backup, reward transform, epochs, grad norm)
PUBLIC_SETTINGS = {
    "halfcheetah-medium": (3e-4, 1.0, False, "none", 2000, 9.0),
    "hopper-medium": (3e-4, 1.0, False, "none", 2000, 9.0),
    "walker2d-medium": (3e-4, 1.0, False, "none", 2000, 1.0),
    "halfcheetah-medium-replay": (3e-4, 1.0, False, "none", 2000, 2.0),
    "hopper-medium-replay": (3e-4, 1.0, False, "none", 2000, 4.0),
    "walker2d-medium-replay": (3e-4, 1.0, False, "none", 2000, 4.0),
    "halfcheetah-medium-expert": (3e-4, 1.0, False, "none", 2000, 7.0),
    "hopper-medium-expert": (3e-4, 1.0, False, "none", 2000, 5.0),
    "walker2d-medium-expert": (3e-4, 1.0, False, "none", 2000, 5.0),
    "antmaze-umaze": (3e-4, 0.5, False, "cql_antmaze", 1000, 2.0),
    "antmaze-umaze-diverse": (3e-4, 2.0, True, "cql_antmaze", 1000, 3.0),
    "antmaze-medium-play": (1e-3, 2.0, True, "cql_antmaze", 1000, 2.0),
    "antmaze-medium-diverse": (3e-4, 3.0, True, "cql_antmaze", 1000, 1.0),
    "antmaze-large-play": (3e-4, 4.5, True, "cql_antmaze", 1000, 10.0),
    "antmaze-large-diverse": (3e-4, 3.5, True, "cql_antmaze", 1000, 7.0),
    "pen-human": (3e-5, 0.15, False, "zscore", 1000, 7.0),
    "pen-cloned": (3e-5, 0.1, False, "zscore", 1000, 8.0),
    "kitchen-complete": (3e-4, 0.005, False, "none", 250, 9.0),
    "kitchen-partial": (3e-4, 0.005, False, "none", 1000, 10.0),
    "kitchen-mixed": (3e-4, 0.005, False, "none", 1000, 10.0),
}
DATASET_IDS = {  # how each task is named in the wild; task_name must map them to the table
    "hopper-medium": ["local/hopper/medium-v0", "mujoco/hopper/medium-v0", "hopper-medium-v2.hdf5"],
    "walker2d-medium-replay": ["local/walker2d/medium-replay-v0"],
    "antmaze-umaze-diverse": ["D4RL/antmaze/umaze-diverse-v1", "antmaze-umaze-diverse-v0.hdf5"],
    "pen-human": ["D4RL/pen/human-v2"],
    "kitchen-complete": ["D4RL/kitchen/complete-v2"],
}


@pytest.mark.parametrize("task", sorted(PUBLIC_SETTINGS))
def test_hyperparameter_table_matches_the_public_code(task: str) -> None:
    lr, eta, max_q, reward, epochs, grad_norm = PUBLIC_SETTINGS[task]
    for dataset in [task, *DATASET_IDS.get(task, [])]:
        assert task_name(dataset) == task
        values = task_hyperparams("diffusion_ql", dataset, DiffusionQLConfig)
        config = DiffusionQLConfig(**{**values, "dataset": dataset})
        config.validate()
        assert (config.actor_lr, config.eta, config.max_q_backup) == (lr, eta, max_q)
        assert (config.reward_transform, config.steps, config.grad_norm) == (
            reward,
            epochs * 1000,
            grad_norm,
        )
        assert config.eval_interval == 50_000 and config.critic_lr == 3e-4
        # the public code evaluates 10 episodes on the v2 Gym tasks and 100 on every other
        assert config.eval_episodes == (10 if "medium" in task and "maze" not in task else 100)
        assert not config.normalize_observations  # the public code feeds raw states


def test_every_table_entry_names_config_fields() -> None:
    table = tomllib.loads((HYPERPARAMS_DIR / "diffusion_ql.toml").read_text())
    fields = {f.name for f in dataclasses.fields(DiffusionQLConfig)}
    for task, values in {"defaults": table["defaults"], **table["tasks"]}.items():
        assert set(values) <= fields, task


# --------------------------------------------------------------------------- learning


@pytest.fixture(scope="module")
def flip_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("flip_minari")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        build_pendulum_dataset("flip", "test/pendulum/flip-v0")  # MSE BC cannot balance
    return str(root), "test/pendulum/flip-v0"


@pytest.mark.slow
def test_diffusion_ql_balances_where_behaviour_cloning_fails(
    flip_store: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, dataset = flip_store
    monkeypatch.setenv("MINARI_DATASETS_PATH", root)
    common = dict(
        dataset=dataset,
        eval_episodes=5,
        log_interval=200,
        checkpoint_interval=10_000,
        keep_eval_checkpoints=False,
        progress=False,
    )
    bc = run_training(
        TrainConfig(**common, steps=1000, eval_interval=500, run_dir=str(tmp_path / "bc")),
        TinyBC,
        "tiny_bc",
    )
    assert bc["best_score"] < 30  # the mean action of the data does not balance the pole

    # Default hyperparameters except a narrower network and a faster lr for a CPU budget.
    config = DiffusionQLConfig(
        **common,
        steps=1600,
        eval_interval=800,
        hidden=(64, 64, 64),
        actor_lr=1e-3,
        critic_lr=1e-3,
        run_dir=str(tmp_path / "dql"),
    )
    result = diffusion_ql.train(config)
    assert result["final_score"] >= 70, result
