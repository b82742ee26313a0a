"""Baselines TD3+BC, IQL, CQL, BCQ and BC: each learns, each one's defining piece holds, a crashed
run resumes exactly, and each CLI runs and refuses nonsense.

The learning tests use a mixed-quality InvertedPendulum-v5 dataset (time limit 100) on which
behaviour cloning fails and offline RL does not: a good linear controller (conftest's gains K)
that, with probability 0.4 per step, hands over for 1-4 steps to a destabilising controller
-0.5 K s. The bad actions are ~45% of the data and are taken at the same kind of states as the
good ones; their average with the good ones is a controller that drops the pole, and the bad
stretches sometimes end the episode, so a critic can tell the two apart.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from conftest import build_pendulum_dataset

from baselines import bc, bcq, cql, iql, td3bc
from dql.data import load_dataset
from dql.evaluation import evaluate
from dql.runs import safe_torch_load
from dql.training import run_training

MIXED_ID = "test/pendulum/stretches-v0"
MODULES = {"td3bc": td3bc, "iql": iql, "cql": cql, "bcq": bcq, "bc": bc}
AGENTS = {"td3bc": td3bc.TD3BC, "iql": iql.IQL, "cql": cql.CQL, "bcq": bcq.BCQ, "bc": bc.BC}
SMALL = {"hidden": (64, 64)}
TINY = {"hidden": (16, 16)}  # CLI and resume tests: plumbing, not learning


@pytest.fixture(scope="session")
def mixed_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(store path, id) of the mixed dataset (pendulum-stretches: 10k steps, time limit 100)."""
    root = tmp_path_factory.mktemp("stretches_minari")
    mp = pytest.MonkeyPatch()
    mp.setenv("MINARI_DATASETS_PATH", str(root))
    try:
        build_pendulum_dataset("stretches", MIXED_ID)
    finally:
        mp.undo()
    return str(root), MIXED_ID


@pytest.fixture
def mixed_store(mixed_dataset: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    root, dataset_id = mixed_dataset
    monkeypatch.setenv("MINARI_DATASETS_PATH", root)
    return dataset_id


def make_config(module: ModuleType, dataset: str, run_dir: Path, steps: int, **overrides: Any):
    """A quiet config: evaluation (20 episodes) and checkpoint only at the end."""
    values = dict(
        dataset=dataset,
        steps=steps,
        eval_interval=steps,
        eval_episodes=20,
        log_interval=min(steps, 500),
        checkpoint_interval=steps,
        run_dir=str(run_dir),
        progress=False,
        keep_eval_checkpoints=False,
        device="cpu",
    )
    values.update(overrides)
    return module.Config(**values)


def final_score(name: str, dataset: str, run_dir: Path, steps: int, **overrides: Any) -> float:
    module = MODULES[name]
    return module.train(make_config(module, dataset, run_dir, steps, **overrides))["final_score"]


@pytest.fixture(scope="session")
def mixed_scores(mixed_dataset: tuple[str, str], tmp_path_factory) -> dict[str, float]:
    """Normalized scores on the mixed data of a uniformly random policy and of MSE BC."""
    root, dataset_id = mixed_dataset
    mp = pytest.MonkeyPatch()
    mp.setenv("MINARI_DATASETS_PATH", root)
    try:
        info = load_dataset(dataset_id).info
        rng = np.random.default_rng(0)
        random_policy = lambda obs: rng.uniform(-3.0, 3.0, (len(obs), 1))  # noqa: E731
        random = evaluate(
            random_policy, info, num_episodes=20, ref_scores=(5.0, 100.0), progress=False
        )
        # lr 1e-3 and 2000 steps: BC has converged, it fails for averaging, not for lack of steps
        run_dir = tmp_path_factory.mktemp("bc_mixed") / "run"
        bc_score = final_score("bc", dataset_id, run_dir, 2000, lr=1e-3, **SMALL)
    finally:
        mp.undo()
    return {"random": float(random.normalized_score), "bc": bc_score}


# --------------------------------------------------------------------------- learning


@pytest.mark.parametrize("gaussian", [False, True], ids=["mse", "gaussian"])
def test_bc_clones_a_good_controller(pendulum_store, tmp_path, gaussian):
    # conftest's data is mostly a good controller plus zero-mean noise: cloning it balances
    score = final_score("bc", pendulum_store, tmp_path / "run", 1000, lr=1e-3, gaussian=gaussian)
    assert score > 80


@pytest.mark.slow
def test_bc_fails_on_the_mixed_data(mixed_scores):
    # the premise of the comparisons below: averaging the two controllers drops the pole
    assert mixed_scores["random"] < 5
    assert mixed_scores["bc"] < 30


# Per-algorithm settings for a 1-4k step budget (hidden 64). TD3+BC's lambda = alpha / mean|Q|
# needs the Q level to be set by the falls, not by the +1 of every surviving step: rewards r - 1
# (0 while the pole stands, -1 when it falls) and gamma 0.9, with alpha 5; CQL's paper learning
# rates are too slow for 1000 steps; BCQ trains at its batch of 100, so its 4000 steps see about
# as many transitions as 1500 steps at 256.
OFFLINE_RL = {
    "td3bc": (2000, dict(reward_transform="antmaze", discount=0.9, alpha=5.0)),
    "iql": (1000, {}),
    "cql": (1000, dict(actor_lr=1e-3, critic_lr=1e-3, batch_size=128, actor_hidden=(64, 64, 64))),
    "bcq": (8000, dict(vae_hidden=(64, 64))),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(OFFLINE_RL))
def test_offline_rl_beats_bc_on_mixed_data(name, mixed_store, mixed_scores, tmp_path):
    steps, overrides = OFFLINE_RL[name]
    score = final_score(name, mixed_store, tmp_path / "run", steps, **SMALL, **overrides)
    assert score > mixed_scores["random"] + 40
    assert score > mixed_scores["bc"] + 25, f"{name} {score:.1f} vs BC {mixed_scores['bc']:.1f}"


# --------------------------------------------------------------------------- defining pieces


def random_batch(generator: torch.Generator, size: int = 64, obs_dim: int = 3, act_dim: int = 2):
    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    observations = normal(size, obs_dim)
    return {
        "observations": observations,
        "actions": 0.5 * torch.tanh(observations[:, :act_dim]),  # a narrow behaviour policy
        "rewards": normal(size),
        "next_observations": normal(size, obs_dim),
        "terminals": torch.zeros(size),
    }


def test_td3bc_lambda_is_alpha_over_mean_abs_q_and_carries_no_gradient():
    torch.manual_seed(0)
    config = td3bc.Config(device="cpu", alpha=2.5, **TINY)
    agent = td3bc.TD3BC(3, 2, 1.0, config)
    batch = random_batch(torch.Generator().manual_seed(0))
    loss, lmbda = agent.actor_loss(batch)
    policy_actions = agent.actor(batch["observations"])
    q1 = agent.critic(batch["observations"], policy_actions)[0]
    assert not lmbda.requires_grad
    assert lmbda.item() == pytest.approx(2.5 / q1.abs().mean().item(), rel=1e-6)
    # the gradient is that of -lambda Q + BC with lambda a constant, not through |Q|
    grads = torch.autograd.grad(loss, list(agent.actor.parameters()))
    constant = -lmbda.item() * q1.mean() + (policy_actions - batch["actions"]).square().mean()
    expected = torch.autograd.grad(constant, list(agent.actor.parameters()))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)


def test_iql_expectile_loss_weights_tau_above_and_one_minus_tau_below():
    residual = torch.tensor([-2.0, 1.0, 3.0])  # u = target - V
    loss = iql.expectile_loss(residual, 0.7)
    assert loss.item() == pytest.approx((0.3 * 4.0 + 0.7 * 1.0 + 0.7 * 9.0) / 3)
    assert iql.expectile_loss(residual, 0.5).item() == pytest.approx(0.5 * (4 + 1 + 9) / 3)
    # V below the target (u > 0) is pulled up harder than V above it is pulled down
    value = torch.zeros(2, requires_grad=True)
    iql.expectile_loss(torch.tensor([1.0, -1.0]) - value, 0.9).backward()
    assert value.grad.tolist() == pytest.approx([-0.9, 0.1])


def test_iql_updates_v_first_then_actor_and_critics_with_the_new_v():
    """The authors' order: after the V step, the critics' target is r + gamma V_new(s') and the
    actor's advantages are min_k Q'_k(s, a) - V_new(s), both from the updated V."""
    torch.manual_seed(0)
    config = iql.Config(device="cpu", value_lr=0.05, **TINY)  # a large V step: V_new != V_old
    agent = iql.IQL(3, 2, 1.0, config)
    before = copy.deepcopy(agent)
    batch = random_batch(torch.Generator().manual_seed(0))
    metrics = agent.update(batch)
    observations, actions = batch["observations"], batch["actions"]
    with torch.no_grad():
        target_q = before.critic_target.min(observations, actions)
        bc_losses = -before.actor.log_prob(observations, actions)
        q = before.critic(observations, actions)

        def expected(value: torch.nn.Module) -> dict[str, float]:
            advantage = target_q - value(observations).squeeze(-1)
            weights = torch.exp(config.beta * advantage).clamp(max=iql.MAX_ADVANTAGE_WEIGHT)
            next_v = value(batch["next_observations"]).squeeze(-1)
            target = batch["rewards"] + config.discount * next_v
            return {
                "advantage_mean": advantage.mean().item(),
                "actor_loss": (weights * bc_losses).mean().item(),
                "critic_loss": (q - target).square().mean(dim=1).sum().item(),
            }

        new_v, old_v = expected(agent.value), expected(before.value)
    for name in ("advantage_mean", "actor_loss", "critic_loss"):
        assert metrics[name].item() == pytest.approx(new_v[name], rel=1e-5, abs=1e-6), name
        assert metrics[name].item() != pytest.approx(old_v[name], rel=1e-3), name


def test_cql_actor_is_corls_three_layers_and_initial_std_037():
    torch.manual_seed(0)
    agent = cql.CQL(3, 2, 1.0, cql.Config(device="cpu"))
    linears = [m for m in agent.actor.net if isinstance(m, torch.nn.Linear)]
    assert [layer.out_features for layer in linears] == [256, 256, 256, 4]  # 3 x 256, (mu, sigma)
    assert linears[-1].weight.abs().max().item() < 1e-2  # xavier-uniform with gain 1e-2
    assert torch.count_nonzero(linears[-1].bias).item() == 0
    mean, log_std = agent.actor.distribution(torch.randn(512, 3))
    assert mean.abs().max().item() < 0.05
    assert log_std.exp().mean().item() == pytest.approx(math.exp(-1.0), abs=0.01)  # ~0.37
    # the scale and offset of log sigma are learned, by the actor's optimizer
    learned = {id(p) for group in agent.actor_optimizer.param_groups for p in group["params"]}
    assert (
        id(agent.actor.log_std_multiplier) in learned and id(agent.actor.log_std_offset) in learned
    )


def test_cql_lagrange_weight_rises_above_the_target_gap_and_falls_below_it():
    def log_alpha_prime_after_one_update(target_action_gap: float) -> float:
        torch.manual_seed(0)
        config = cql.Config(
            device="cpu", lagrange=True, target_action_gap=target_action_gap, **TINY
        )
        agent = cql.CQL(3, 2, 1.0, config)
        metrics = agent.update(random_batch(torch.Generator().manual_seed(0)))
        assert metrics["cql_alpha_prime"].item() == pytest.approx(math.e)  # starts at e
        return agent.log_cql_alpha_prime.item()

    lr = cql.Config().critic_lr  # Adam's first step moves log alpha' by lr
    assert log_alpha_prime_after_one_update(-1e3) == pytest.approx(1.0 + lr, abs=1e-6)
    assert log_alpha_prime_after_one_update(1e3) == pytest.approx(1.0 - lr, abs=1e-6)


def test_cql_gaps_are_clipped_per_state():
    torch.manual_seed(0)
    config = cql.Config(device="cpu", cql_clip_diff_min=1e3, cql_clip_diff_max=2e3, **TINY)
    agent = cql.CQL(3, 2, 1.0, config)
    batch = random_batch(torch.Generator().manual_seed(0))
    with torch.no_grad():
        q_data = agent.critic(batch["observations"], batch["actions"])
        policy = agent.actor.distribution(batch["observations"])
        next_policy = agent.actor.distribution(batch["next_observations"])
        gaps = agent.conservative_penalty(batch["observations"], q_data, policy, next_policy)
    assert gaps.tolist() == [1e3, 1e3]  # every state's gap is far below 1000: clipped up to it


def test_cql_max_target_backup_takes_the_best_of_n_policy_actions(monkeypatch):
    """y = r + gamma max_j min_k Q'_k(s', a'_j) over n samples a'_j of pi(.|s')."""
    torch.manual_seed(0)
    n = 7
    config = cql.Config(device="cpu", max_target_backup=True, num_sampled_actions=n, **TINY)
    agent = cql.CQL(3, 2, 1.0, config)
    before = copy.deepcopy(agent)
    calls = []
    target_min = agent.critic_target.min

    def recording_min(observations, actions):
        calls.append((observations, actions, target_min(observations, actions)))
        return calls[-1][2]

    monkeypatch.setattr(agent.critic_target, "min", recording_min)
    batch = random_batch(torch.Generator().manual_seed(0), size=32)
    metrics = agent.update(batch)
    ((observations, actions, values),) = calls
    assert actions.shape == (n * 32, 2)
    torch.testing.assert_close(observations, batch["next_observations"].repeat(n, 1))
    target = batch["rewards"] + config.discount * values.view(n, 32).max(dim=0).values
    with torch.no_grad():
        q = before.critic(batch["observations"], batch["actions"])
    td_loss = (q - target).square().mean(dim=1).sum()
    assert metrics["td_loss"].item() == pytest.approx(td_loss.item(), rel=1e-5)


def test_bcq_defaults_are_the_authors_batch_100_on_raw_states():
    config = bcq.Config()
    assert (config.batch_size, config.normalize_observations) == (100, False)


def test_bcq_perturbation_stays_within_phi_max_action():
    torch.manual_seed(0)
    max_action, phi = 2.0, 0.05
    perturbation = bcq.Perturbation(3, 2, max_action, phi, (16, 16))
    with torch.no_grad():  # large weights saturate tanh: the bound must hold at its edge
        for parameter in perturbation.parameters():
            parameter.mul_(50.0)
    observations = torch.randn(4096, 3)
    actions = torch.empty(4096, 2).uniform_(-0.9 * max_action, 0.9 * max_action)
    shift = (perturbation(observations, actions) - actions).abs()
    assert shift.max().item() <= phi * max_action + 1e-6
    assert shift.max().item() > 0.99 * phi * max_action  # the bound is reached, not vacuous
    # at the box edge the perturbed action is clipped into [-M, M]
    edge = torch.full((4096, 2), max_action)
    assert perturbation(observations, edge).abs().max().item() <= max_action


def test_cql_penalty_pushes_q_down_on_out_of_data_actions():
    """After the same updates on the same batches, Q at random actions relative to Q at the
    dataset's actions is lower with the penalty than without it, and below zero."""

    def gap_after_training(cql_alpha: float) -> float:
        torch.manual_seed(0)
        config = cql.Config(device="cpu", cql_alpha=cql_alpha, critic_lr=1e-3, **TINY)
        agent = cql.CQL(3, 2, 1.0, config)
        generator = torch.Generator().manual_seed(0)
        for _ in range(300):
            agent.update(random_batch(generator))
        batch = random_batch(torch.Generator().manual_seed(1), size=512)
        with torch.no_grad():
            q_data = agent.critic(batch["observations"], batch["actions"]).mean()
            random_actions = torch.empty_like(batch["actions"]).uniform_(-1.0, 1.0)
            q_random = agent.critic(batch["observations"], random_actions).mean()
        return (q_random - q_data).item()

    with_penalty, without_penalty = gap_after_training(5.0), gap_after_training(0.0)
    assert with_penalty < without_penalty - 2.0
    assert with_penalty < -2.0


def test_sampled_actions_give_the_same_values_in_one_pass_or_many(monkeypatch):
    """CQL's penalty and BCQ's target are computed in cache-sized passes on a CPU when the
    networks are large: the values must not depend on it (same draws, same maths)."""
    from dql import actors

    def values(cache: int) -> tuple[torch.Tensor, torch.Tensor]:
        monkeypatch.setattr(actors, "CPU_CACHE_FLOATS", cache)
        torch.manual_seed(0)
        cql_agent = cql.CQL(3, 2, 1.0, cql.Config(device="cpu", **TINY))
        bcq_agent = bcq.BCQ(3, 2, 1.0, bcq.Config(device="cpu", vae_hidden=(16, 16), **TINY))
        batch = random_batch(torch.Generator().manual_seed(0), size=32)
        observations = batch["observations"]
        with torch.no_grad():
            q_data = cql_agent.critic(observations, batch["actions"])
            policy = cql_agent.actor.distribution(observations)
            next_policy = cql_agent.actor.distribution(batch["next_observations"])
            penalty = cql_agent.conservative_penalty(observations, q_data, policy, next_policy)
            target_q = bcq_agent.sampled_target_q(observations)
        return penalty, target_q

    penalty, target_q = values(0)  # one pass per sampled action set
    reference_penalty, reference_target_q = values(2**40)  # one pass over all
    assert target_q.shape == (2, 10, 32)
    torch.testing.assert_close(penalty, reference_penalty)
    torch.testing.assert_close(target_q, reference_target_q)


# --------------------------------------------------------------------------- exact resume


class _Crash(Exception):
    pass


def crashing(agent_cls: type, at_update: int) -> type:
    """`agent_cls` whose `at_update`-th update raises (a crash: no checkpoint is written)."""

    class Crashing(agent_cls):
        calls = 0

        def update(self, batch):
            type(self).calls += 1
            if type(self).calls == at_update:
                raise _Crash
            return super().update(batch)

    return Crashing


def assert_same_state(a: Any, b: Any, path: str = "agent") -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{path} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_same_state(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


@pytest.mark.parametrize("name", list(MODULES))
def test_crashed_run_resumes_to_the_same_weights(name, pendulum_store, tmp_path):
    """10 steps straight vs 5 steps, a crash in step 6, --resume to 10: identical agent state
    (networks, targets, optimisers, schedules, counters; 5 is odd for TD3+BC's policy delay)."""
    module, extra = MODULES[name], {"vae_hidden": (16, 16)} if name == "bcq" else {}

    def config(run: str, **kw: Any):
        return make_config(
            module,
            pendulum_store,
            tmp_path / run,
            10,
            checkpoint_interval=5,
            batch_size=32,
            eval_episodes=1,
            max_episode_steps=20,
            **TINY,
            **extra,
            **kw,
        )

    run_training(config("straight"), AGENTS[name], name)
    with pytest.raises(_Crash):
        run_training(config("resumed"), crashing(AGENTS[name], 6), name)
    run_training(config("resumed", resume=True), AGENTS[name], name)
    straight = safe_torch_load(tmp_path / "straight/checkpoints/last.pt")
    resumed = safe_torch_load(tmp_path / "resumed/checkpoints/last.pt")
    assert_same_state(straight["agent"], resumed["agent"])


# --------------------------------------------------------------------------- CLIs


@pytest.mark.parametrize("name", list(MODULES))
def test_cli_trains_and_writes_result(name, pendulum_store, tmp_path, capsys):
    run_dir = tmp_path / "run"
    argv = [
        "--dataset", pendulum_store, "--steps", "30", "--eval-interval", "30",
        "--eval-episodes", "2", "--log-interval", "10", "--checkpoint-interval", "30",
        "--max-episode-steps", "30", "--run-dir", str(run_dir), "--no-progress",
        "--hidden", "16", "16",
    ]  # fmt: skip
    if name == "bcq":
        argv += ["--vae-hidden", "16", "16"]
    assert MODULES[name].main(argv) == 0
    result = json.loads((run_dir / "result.json").read_text())
    assert result["algorithm"] == name and result["steps"] == 30
    assert "final normalized score" in capsys.readouterr().out


@pytest.mark.parametrize(
    "name, flag, value",
    [
        ("td3bc", "--alpha", "-1"),
        ("td3bc", "--policy-delay", "0"),
        ("iql", "--expectile", "1.5"),
        ("iql", "--beta", "-3"),
        ("cql", "--cql-alpha", "-1"),
        ("cql", "--num-sampled-actions", "0"),
        ("bcq", "--phi", "-0.1"),
        ("bcq", "--lmbda", "2"),
        ("bc", "--lr", "0"),
    ],
)
def test_cli_refuses_nonsense_with_one_line_and_exit_2(name, flag, value, tmp_path, capsys):
    code = MODULES[name].main([flag, value, "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error:") and flag in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "name, dataset, expected",
    [
        (
            "iql",
            "mujoco/hopper/medium-v0",
            dict(expectile=0.7, beta=3.0, reward_transform="locomotion"),
        ),
        (
            "iql",
            "D4RL/antmaze/umaze-diverse-v1",
            dict(expectile=0.9, beta=10.0, reward_transform="antmaze"),
        ),
        ("iql", "D4RL/pen/human-v2", dict(expectile=0.7, beta=0.5, reward_transform="none")),
        (
            "cql",
            "D4RL/antmaze/large-play-v1",
            dict(
                lagrange=True,
                cql_alpha=5.0,
                target_action_gap=0.8,
                max_target_backup=True,
                cql_clip_diff_min=-200.0,
                reward_transform="corl_antmaze",
                actor_lr=1e-4,
                entropy_lr=1e-4,
                normalize_observations=False,
            ),
        ),
        (
            "cql",
            "hopper-medium-replay-v2.hdf5",
            dict(
                cql_alpha=10.0,
                lagrange=False,
                max_target_backup=False,
                actor_lr=3e-5,
                entropy_lr=3e-5,
                reward_transform="none",
                normalize_observations=True,
            ),
        ),
        ("cql", "D4RL/pen/human-v2", dict(cql_alpha=1.0, lagrange=False)),
        (
            "td3bc",
            "local/walker2d/medium-expert-v0",
            dict(alpha=2.5, policy_noise=0.2, policy_delay=2),
        ),
        (
            "bcq",
            "local/hopper/medium-v0",
            dict(
                phi=0.05,
                lmbda=0.75,
                num_sampled_actions=10,
                batch_size=100,
                normalize_observations=False,
            ),
        ),
        ("bc", "local/hopper/medium-v0", dict(gaussian=False, lr=3e-4)),
    ],
)
def test_per_task_defaults_come_from_the_hyperparameter_tables(name, dataset, expected):
    from dql.cli import parse_config

    config = parse_config(MODULES[name].Config, name, ["--dataset", dataset])
    assert {key: getattr(config, key) for key in expected} == expected


# BC, BCQ and TD3+BC have one setting for every task, the dataclass defaults (their tables restate
# them): a table that was not read could not be told apart there, so they are not listed
@pytest.mark.parametrize("name", ["cql", "iql"])
def test_every_table_entry_reaches_the_config_and_a_flag_overrides_it(name):
    # the cases above are the papers' numbers, several of them also the dataclass defaults; here
    # every task entry of every table is what a user gets from the CLI for that task, and the
    # entries that differ from the defaults show the table is read at all
    import dataclasses as dc

    from dql.cli import parse_config
    from dql.data import task_name
    from dql.hyperparams import load_table

    table = load_table(name)
    config_cls = MODULES[name].Config
    defaults = {f.name: getattr(config_cls(), f.name) for f in dc.fields(config_cls)}
    differing = 0
    entries = {"no-entry-task": {}, **table.get("tasks", {})}  # the first: [defaults] alone
    for task, entry in entries.items():
        dataset = f"{task}-v2.hdf5"
        assert task_name(dataset) == task
        expected = {**table.get("defaults", {}), **entry}
        config = parse_config(config_cls, name, ["--dataset", dataset])
        got = {k: getattr(config, k) for k in expected}
        assert got == {
            k: type(got[k])(v) if isinstance(v, list) else v for k, v in expected.items()
        }
        differing += any(defaults[k] != v for k, v in expected.items())
        key, value = next(iter(entry.items() or expected.items()))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            flag = f"--{key.replace('_', '-')}"
            override = parse_config(config_cls, name, ["--dataset", dataset, flag, str(value * 2)])
            assert getattr(override, key) == value * 2
    assert differing
