"""The fast paths compute what the plain ones do: compiled vs eager steps, fused vs foreach Adam,
a batched seed vs a normal run of that seed, seeds independent of each other, batched runs
writing normal run directories; and the benchmark runs. No timing is asserted here."""

from __future__ import annotations

import copy
import importlib
import json
import os
import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dql import diffusion_ql
from dql.batched_seeds import (
    SeedStack,
    run_batched,
    supports_batched_seeds,
    train_batched_seeds,
)
from dql.checkpoint import SEED_BATCH_KEYS
from dql.diffusion_ql import COMPILE_MIN_STEPS, DiffusionQL, DiffusionQLConfig
from dql.errors import ConfigError
from dql.nets import CriticEnsemble, make_optimizer
from dql.registry import agent_class
from dql.training import seed_everything

OBS_DIM, ACT_DIM = 4, 2
ROOT = Path(__file__).resolve().parent.parent


def small_config(**overrides) -> DiffusionQLConfig:
    fields = dict(
        device="cpu",
        hidden=(32, 32, 32),
        num_candidates=4,
        steps=100,
        step_start_ema=2,
        update_ema_every=1,
        grad_norm=0.5,  # small enough that clipping acts
    )
    return DiffusionQLConfig(**{**fields, **overrides})


def random_batch(seed: int, batch_size: int = 16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "observations": torch.randn(batch_size, OBS_DIM, generator=g),
        "actions": torch.rand(batch_size, ACT_DIM, generator=g) * 2 - 1,
        "rewards": torch.randn(batch_size, generator=g),
        "next_observations": torch.randn(batch_size, OBS_DIM, generator=g),
        "terminals": (torch.rand(batch_size, generator=g) < 0.3).float(),
    }


def stacked(batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([b[k] for b in batches]) for k in batches[0]}


def assert_resumed_step_equal(batched: Any, resumed: Any, batch: dict) -> None:
    """Load every seed of `batched` into the fresh `resumed`: their next steps are identical."""
    for k in range(2):
        resumed.load_seed_state_dict(k, copy.deepcopy(batched.seed_state_dict(k)))
    expected, got = batched.update(batch), resumed.update(batch)
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


def assert_close_state(a: dict, b: dict, atol: float = 1e-5) -> None:
    for net in ("actor", "ema_actor", "critic", "critic_target"):
        for name, value in a[net].items():
            torch.testing.assert_close(value, b[net][name], rtol=1e-4, atol=atol, msg=net + name)


# --------------------------------------------------------------------------- batched seeds


def dql_stack(config: DiffusionQLConfig, seeds: list[int]) -> SeedStack:
    return SeedStack(DiffusionQL, (OBS_DIM, ACT_DIM, 1.0), config, seeds)


@pytest.mark.parametrize(
    "max_q_backup, q_gradient", [(False, "chain"), (True, "chain"), (False, "approx")]
)
def test_batched_seed_k_is_a_normal_run_seeded_k(max_q_backup: bool, q_gradient: str) -> None:
    """Diffusion-QL draws every random number of a step first (`per_seed_noise`), so a batched
    seed k draws the noise of a normal run seeded k: same initial weights, and over several
    steps the same losses, per-seed clipped gradient norms, weights and Adam moments as a normal
    agent built after seed_everything(k) and fed k's batches."""
    config = small_config(max_q_backup=max_q_backup, num_backup_actions=3, q_gradient=q_gradient)
    seeds = [3, 7, 11]
    batched = dql_stack(config, seeds)
    singles, rng_states = [], []
    for seed in seeds:  # a normal run draws init and noise from the global RNG seeded by the loop
        seed_everything(seed)
        singles.append(DiffusionQL(OBS_DIM, ACT_DIM, 1.0, config))
        rng_states.append(torch.get_rng_state())
    for k, single in enumerate(singles):
        assert_close_state(batched.seed_state_dict(k), single.state_dict(), atol=0)
    clipped = False
    for step in range(4):
        batches = [random_batch(100 * step + k) for k in range(len(seeds))]
        metrics = batched.update(stacked(batches))
        assert all(v.shape == (len(seeds),) for v in metrics.values())
        for k, single in enumerate(singles):
            torch.set_rng_state(rng_states[k])
            expected = single.update(batches[k])
            rng_states[k] = torch.get_rng_state()
            for name, value in expected.items():
                torch.testing.assert_close(metrics[name][k], value, rtol=1e-4, atol=1e-5)
            clipped |= bool(expected["actor_grad_norm"] > config.grad_norm)
    assert clipped  # per-seed clipping was exercised
    for k, single in enumerate(singles):
        mine, theirs = batched.seed_state_dict(k), single.state_dict()
        assert_close_state(mine, theirs)
        for opt in ("actor_optimizer", "critic_optimizer"):
            for index, entries in theirs[opt]["state"].items():
                for name, value in entries.items():
                    torch.testing.assert_close(
                        mine[opt]["state"][index][name], value, atol=1e-6, rtol=1e-4
                    )


def test_batched_seeds_are_independent() -> None:
    """Another batch for seed 1 changes seed 1's update and nothing of seeds 0 and 2."""
    config = small_config()
    base, other = (dql_stack(config, [0, 1, 2]) for _ in range(2))
    batches = [random_batch(k) for k in range(3)]
    changed = list(batches)
    changed[1] = random_batch(99)
    first, second = base.update(stacked(batches)), other.update(stacked(changed))
    for name in first:
        assert torch.equal(first[name][[0, 2]], second[name][[0, 2]]), name
    assert not torch.equal(first["critic_loss"][1], second["critic_loss"][1])
    for k, moved in ((0, False), (1, True), (2, False)):
        a, b = base.seed_state_dict(k), other.seed_state_dict(k)
        same = all(torch.equal(a["actor"][n], b["actor"][n]) for n in a["actor"])
        assert same != moved, k


def test_seed_state_dict_round_trips_into_normal_and_batched_agents() -> None:
    config = small_config()
    batched = dql_stack(config, [5, 6])
    for step in range(3):
        batched.update(stacked([random_batch(2 * step), random_batch(2 * step + 1)]))
    # seed 6 as a normal agent: the same weights act the same
    single = DiffusionQL(OBS_DIM, ACT_DIM, 1.0, config)
    single.load_state_dict(copy.deepcopy(batched.seed_state_dict(1)))
    obs = np.random.default_rng(0).normal(size=(3, OBS_DIM)).astype(np.float32)
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    snapshot = DiffusionQL(OBS_DIM, ACT_DIM, 1.0, config)
    snapshot.load_state_dict(batched.seed_state_dict(1))
    np.testing.assert_array_equal(single.act(obs, g1), snapshot.act(obs, g2))
    # both seeds into a fresh batched agent (a resumed batch): the next step, noise included,
    # is identical
    resumed = dql_stack(config, [0, 1])
    assert_resumed_step_equal(batched, resumed, stacked([random_batch(50), random_batch(51)]))


def test_only_agents_with_the_protocol_batch_seeds() -> None:
    from tiny_algo import TanhMlpBC

    from baselines.bc import BC
    from baselines.iql import IQL
    from baselines.td3bc import TD3BC

    assert supports_batched_seeds(DiffusionQL)
    from baselines.bcq import BCQ
    from baselines.cql import CQL

    generic = (BC, TD3BC, IQL, CQL, BCQ)  # the generic stack
    assert all(supports_batched_seeds(cls) for cls in generic)
    assert not supports_batched_seeds(TanhMlpBC)


# Algorithms on the generic stack (dql.batched_seeds.SeedStack), with noise-free updates where
# the algorithm has noise, so that seed k can equal a normal run seeded k.
STACKED = {
    "bc": {},
    "bc_gaussian": {"gaussian": True},
    "td3bc": {"policy_noise": 0.0},
    "iql": {},
}
UNEQUAL = {  # noise in every update
    "cql": {"actor_hidden": (32, 32)},
    "cql_lagrange": {"actor_hidden": (32, 32), "lagrange": True},
    "bcq": {"vae_hidden": (32, 32)},
}


def stacked_case(name: str, seeds: list[int]) -> tuple[Any, list[Any]]:
    from dql.batched_seeds import SeedStack
    from dql.training import seed_everything

    module = importlib.import_module(f"baselines.{name.split('_')[0]}")
    agent_cls = agent_class(module)
    options = {**STACKED, **UNEQUAL}[name]
    config = module.Config(device="cpu", hidden=(32, 32), steps=10, **options)
    stack = SeedStack(agent_cls, (OBS_DIM, ACT_DIM, 1.0), config, seeds)
    singles = []
    for seed in seeds:  # as run_training seeds a run before it builds the agent
        seed_everything(seed)
        singles.append(agent_cls(OBS_DIM, ACT_DIM, 1.0, config))
    return stack, singles


def assert_states_close(a: Any, b: Any, path: str = "", **tol: float) -> None:
    if isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, msg=path, **tol)
    elif isinstance(a, dict):
        for key in a:
            if key not in SEED_BATCH_KEYS:
                assert_states_close(a[key], b[key], f"{path}.{key}", **tol)
    elif isinstance(a, (list, tuple)):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_states_close(x, y, f"{path}[{i}]", **tol)
    else:
        assert a == b, path


@pytest.mark.parametrize("name", sorted(STACKED))
def test_stacked_seed_k_is_a_normal_run_seeded_k(name: str) -> None:
    """Same initial weights bit for bit; after 4 updates on each seed's own batches the same
    weights, optimizer states and metrics up to the rounding of batched matmuls."""
    torch.manual_seed(0)
    seeds = [3, 4, 5]
    stack, singles = stacked_case(name, seeds)
    for k, single in enumerate(singles):
        assert_states_close(stack.seed_state_dict(k), single.state_dict(), rtol=0, atol=0)
    batches = [[random_batch(10 * step + k) for k in range(3)] for step in range(4)]
    for per_seed in batches:
        metrics = stack.update(stacked(per_seed))
        for k, single in enumerate(singles):
            expected = single.update(per_seed[k])
            for key, value in expected.items():
                torch.testing.assert_close(metrics[key][k], value, rtol=1e-4, atol=1e-5)
    for k, single in enumerate(singles):
        assert_states_close(stack.seed_state_dict(k), single.state_dict(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["iql", "cql", "cql_lagrange", "bcq"])
def test_stacked_seeds_are_independent(name: str) -> None:
    """Seed 0's trajectory does not depend on seed 1's data (noise included: CQL samples
    actions everywhere, so it cannot equal a normal run, but each seed's noise is its own)."""
    first, singles = stacked_case(name, [0, 1])
    second, _ = stacked_case(name, [0, 1])
    for k, single in enumerate(singles):  # the initial weights are a normal run's, exactly
        assert_states_close(first.seed_state_dict(k), single.state_dict(), rtol=0, atol=0)
    for step in range(3):
        first.update(stacked([random_batch(step), random_batch(100 + step)]))
        second.update(stacked([random_batch(step), random_batch(200 + step)]))
    assert_states_close(first.seed_state_dict(0), second.seed_state_dict(0), rtol=0, atol=0)
    with pytest.raises(AssertionError):
        assert_states_close(first.seed_state_dict(1), second.seed_state_dict(1), rtol=0, atol=0)


def test_stacked_seeds_resume_exactly() -> None:
    """Seed states round-trip through normal agents into a fresh stack, whose next step (noise
    included) is the same."""

    from baselines.td3bc import TD3BC

    noisy, _ = stacked_case("td3bc", [0, 1])
    noisy.agent.config = replace(noisy.agent.config, policy_noise=0.2)  # noise in the target
    for step in range(2):
        noisy.update(stacked([random_batch(step), random_batch(50 + step)]))
    normal = TD3BC(OBS_DIM, ACT_DIM, 1.0, noisy.agent.config)
    normal.load_state_dict(copy.deepcopy(noisy.seed_state_dict(1)))  # a normal agent's state
    resumed, _ = stacked_case("td3bc", [0, 1])
    resumed.agent.config = noisy.agent.config
    assert_resumed_step_equal(noisy, resumed, stacked([random_batch(7), random_batch(8)]))


def test_batched_runs_write_normal_run_directories(pendulum_store: str, tmp_path: Path) -> None:
    """Two seeds batched: each seed's run directory is complete and its losses are those of a
    normal run of that seed; a rerun finds them complete."""
    config = small_config(
        dataset=pendulum_store,
        steps=30,
        eval_interval=15,
        eval_episodes=2,
        log_interval=10,
        checkpoint_interval=15,
        out_dir=str(tmp_path / "batched"),
        progress=False,
        save_traces=False,
    )
    results = train_batched_seeds(config, [0, 1])
    assert [r["seed"] for r in results] == [0, 1] and all(r["steps"] == 30 for r in results)
    normal = diffusion_ql.train(replace(config, seed=1, out_dir=str(tmp_path / "normal")))
    run = tmp_path / "batched" / "diffusion_ql" / "pendulum-mixed" / "seed_1"
    for name in ("config.json", "metrics.jsonl", "eval.jsonl", "result.json"):
        assert (run / name).exists(), name
    assert json.loads((run / "status.json").read_text())["status"] == "complete"
    assert json.loads((run / "config.json").read_text())["seed"] == 1
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    normal_dir = tmp_path / "normal" / "diffusion_ql" / "pendulum-mixed" / "seed_1"
    expected = [
        json.loads(line) for line in (normal_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in rows] == [r["step"] for r in expected] == [10, 20, 30]
    for got, want in zip(rows, expected):
        for key in ("bc_loss", "critic_loss", "q_mean"):
            assert got[key] == pytest.approx(want[key], rel=1e-3, abs=1e-4), key
    assert normal["steps"] == 30
    # a checkpoint of a batched seed is a normal agent's
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["agent"]
    DiffusionQL(4, 1, 3.0, small_config()).load_state_dict(state)
    # rerun: complete runs are returned as they are
    again = run_batched(
        [replace(config, seed=0, resume=True), replace(config, seed=1, resume=True)]
    )
    assert [a["final_score"] for a in again] == [r["final_score"] for r in results]


def metric_rows(run_dir: str | Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_sweep_batches_the_seeds_of_a_task(pendulum_store: str, tmp_path: Path) -> None:
    """--batched-seeds: the seeds of one dataset form one job for Diffusion-QL (native) and
    TD3+BC (the generic stack), not for MPC (a planner: no `@per_seed` maths), and a job completes
    every seed's run as a sweep run; TD3+BC's losses are those of normal runs (noise off)."""
    from dql.sweep import load_sweep, plan_jobs, plan_runs, run_job

    file = tmp_path / "s.toml"
    file.write_text(
        f'algorithms = ["diffusion_ql", "td3bc", "mpc"]\ndatasets = ["{pendulum_store}"]\n'
        "seeds = [0, 1]\nsteps = 20\neval_interval = 20\neval_episodes = 2\n"
        "log_interval = 10\nsave_traces = false\n"
        "[overrides.diffusion_ql]\nhidden = [16, 16, 16]\nnum_candidates = 2\n"
        "[overrides.td3bc]\npolicy_noise = 0.0\n"
    )
    runs = plan_runs(load_sweep(file), tmp_path / "out")
    jobs = plan_jobs(runs, batched_seeds=True)
    assert [[r.key for r in job] for job in jobs] == [
        ["diffusion_ql/pendulum-mixed/seed_0", "diffusion_ql/pendulum-mixed/seed_1"],
        ["td3bc/pendulum-mixed/seed_0", "td3bc/pendulum-mixed/seed_1"],
        ["mpc/pendulum-mixed/seed_0"],
        ["mpc/pendulum-mixed/seed_1"],
    ]
    for job in jobs[:2]:
        outcomes = run_job(job)
        assert [o["status"] for o in outcomes] == ["complete", "complete"], outcomes
        for spec in job:
            result = json.loads((Path(spec.run_dir) / "result.json").read_text())
            assert result["seed"] == spec.seed
    from baselines import td3bc

    config = td3bc.Config(
        dataset=pendulum_store,
        seed=1,
        steps=20,
        eval_interval=20,
        eval_episodes=2,
        log_interval=10,
        save_traces=False,
        policy_noise=0.0,
        progress=False,
        run_dir=str(tmp_path / "normal"),
    )
    td3bc.train(config)
    for got, want in zip(
        metric_rows(jobs[1][1].run_dir), metric_rows(tmp_path / "normal"), strict=True
    ):
        for key in ("critic_loss", "actor_loss", "q_mean"):
            assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-5), key


# --------------------------------------------------------------------------- compiled step


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_step_matches_eager(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled losses give the eager step's losses, gradients and weights. aot_eager
    checks the captured graphs (forward and backward) quickly; inductor, the real compiler,
    takes minutes on a cold cache and runs only with DQL_SLOW_TESTS=1."""
    if backend == "inductor" and not os.environ.get("DQL_SLOW_TESTS"):
        pytest.skip("set DQL_SLOW_TESTS=1 to compile with inductor (minutes)")
    original = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn: original(fn, backend=backend))
    config = small_config(steps=COMPILE_MIN_STEPS, n_timesteps=3, max_q_backup=True)
    torch.manual_seed(0)
    eager = DiffusionQL(OBS_DIM, ACT_DIM, 1.0, replace(config, compile=False))
    compiled = DiffusionQL(OBS_DIM, ACT_DIM, 1.0, config)
    compiled.load_state_dict(copy.deepcopy(eager.state_dict()))
    assert compiled.compiled and not eager.compiled
    for step in range(3):
        torch.manual_seed(step)
        expected = eager.update(random_batch(step))
        torch.manual_seed(step)
        got = compiled.update(random_batch(step))
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5)
    assert_close_state(compiled.state_dict(), eager.state_dict())


COMPILED_CASES = {  # every loss variant the compiled step must reproduce, Diffusion-BC included
    "bc-T5": dict(eta=0.0),
    "ql-T5": dict(eta=1.0),
    "bc-T50": dict(eta=0.0, n_timesteps=50),
    "ql-T50": dict(eta=2.5, n_timesteps=50),
    "bc-maxq": dict(eta=0.0, max_q_backup=True, num_backup_actions=3),
    "ql-maxq": dict(eta=1.0, max_q_backup=True, num_backup_actions=3),
    "bc-bandit": dict(eta=0.0, discount=0.0),
    "ql-bandit": dict(eta=2.5, discount=0.0),
    "bc-bf16": dict(eta=0.0, precision="bf16"),
    "ql-bf16": dict(eta=1.0, precision="bf16"),
    "approx-T5": dict(eta=1.0, q_gradient="approx"),
    "approx-T50-bf16": dict(eta=1.0, q_gradient="approx", n_timesteps=50, precision="bf16"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(COMPILED_CASES))
def test_inductor_step_matches_eager(case: str) -> None:
    """The real compiler (inductor, as `--compile` runs it) against the eager step, from the
    same weights, batches and noise: same losses, and every loss that trains something has a
    gradient. Diffusion-BC (eta = 0) used to lose the actor loss's grad_fn under inductor
    (aot_eager did not show it), so the whole update crashed in every compiled run."""
    config = small_config(steps=COMPILE_MIN_STEPS, **COMPILED_CASES[case])
    torch.manual_seed(0)
    eager = DiffusionQL(OBS_DIM, ACT_DIM, 1.0, replace(config, compile=False))
    compiled = DiffusionQL(OBS_DIM, ACT_DIM, 1.0, config)
    compiled.load_state_dict(copy.deepcopy(eager.state_dict()))
    assert compiled.compiled and not eager.compiled
    initial = {n: p.detach().clone() for n, p in compiled.actor.named_parameters()}
    tolerance = (
        dict(rtol=2e-2, atol=2e-2) if config.precision == "bf16" else dict(rtol=1e-4, atol=1e-5)
    )
    for step in range(2):
        torch.manual_seed(step)
        expected = eager.update(random_batch(step))
        torch.manual_seed(step)
        got = compiled.update(random_batch(step))  # raised "does not require grad" for eta 0
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], msg=name, **tolerance)
    if config.precision == "fp32":
        assert_close_state(compiled.state_dict(), eager.state_dict())
    for (name, before), after in zip(initial.items(), compiled.actor.parameters()):
        assert not torch.equal(before, after), f"compiled actor weight {name} did not train"


@pytest.mark.slow
def test_compiled_batched_seeds_match_eager_batched_seeds() -> None:
    """torch.compile over the stack's vmapped losses (batched seeds with --compile) gives the
    eager stack's numbers."""
    config = small_config(steps=COMPILE_MIN_STEPS, n_timesteps=3)
    eager, compiled = dql_stack(replace(config, compile=False), [0, 1]), dql_stack(config, [0, 1])
    assert compiled.agent.compiled and not eager.agent.compiled
    for step in range(2):
        batch = stacked([random_batch(step), random_batch(50 + step)])
        expected, got = eager.update(batch), compiled.update(batch)
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5, msg=name)


def test_bf16_losses_track_fp32() -> None:
    """--precision bf16 (autocast) from the same weights, batches and noise: every loss within
    3% (or 0.01) of fp32's over the first steps."""
    config = small_config(hidden=(64, 64, 64))
    torch.manual_seed(0)
    fp32 = DiffusionQL(OBS_DIM, ACT_DIM, 1.0, config)
    bf16 = DiffusionQL(OBS_DIM, ACT_DIM, 1.0, replace(config, precision="bf16"))
    bf16.load_state_dict(copy.deepcopy(fp32.state_dict()))
    for step in range(10):
        torch.manual_seed(step)
        expected = fp32.update(random_batch(step, batch_size=64))
        torch.manual_seed(step)
        got = bf16.update(random_batch(step, batch_size=64))
        for name in ("bc_loss", "critic_loss", "q_mean", "target_q_mean"):
            torch.testing.assert_close(got[name], expected[name], rtol=0.03, atol=0.01)
    with pytest.raises(ConfigError, match="--precision"):
        small_config(precision="fp16").validate()


@pytest.mark.parametrize("name", ["td3bc", "iql", "cql", "bcq", "bc"])
def test_baseline_bf16_losses_track_fp32(name: str) -> None:
    """--precision bf16 for a baseline: same weights, batches and noise give every reported
    number within 3% (or 0.02) of fp32's over the first steps, and the step does run in bf16
    (the numbers are not bit-identical). Learning rates are tiny so that the weights stay
    comparable: Adam's first steps move every weight by ~lr whatever the gradient's size, so a
    rounding that flips a tiny gradient's sign would otherwise be amplified."""
    module = importlib.import_module(f"baselines.{name}")
    agent_cls = agent_class(module)
    config = module.Config(device="cpu", progress=False)
    tiny_lrs = {f.name: 1e-7 for f in fields(config) if f.name.endswith("lr")}
    config = replace(config, **tiny_lrs)
    torch.manual_seed(0)
    fp32 = agent_cls(OBS_DIM, ACT_DIM, 1.0, config)
    bf16 = agent_cls(OBS_DIM, ACT_DIM, 1.0, replace(config, precision="bf16"))
    bf16.load_state_dict(copy.deepcopy(fp32.state_dict()))
    differs = False
    for step in range(4):
        torch.manual_seed(step)
        expected = fp32.update(random_batch(step, batch_size=64))
        torch.manual_seed(step)
        got = bf16.update(random_batch(step, batch_size=64))
        for key, value in expected.items():
            torch.testing.assert_close(got[key], value, rtol=0.03, atol=0.02, msg=key)
            differs |= not torch.equal(got[key], value)
    assert differs, "bf16 computed bit-identical numbers: autocast is not engaged"
    with pytest.raises(ConfigError, match="--precision"):
        replace(config, precision="fp16").validate()


def test_compile_is_off_for_short_runs() -> None:
    assert not DiffusionQL(OBS_DIM, ACT_DIM, 1.0, small_config(steps=1000)).compiled
    long_run = small_config(steps=COMPILE_MIN_STEPS)
    assert DiffusionQL(OBS_DIM, ACT_DIM, 1.0, long_run).compiled
    off = small_config(steps=COMPILE_MIN_STEPS, compile=False)
    assert not DiffusionQL(OBS_DIM, ACT_DIM, 1.0, off).compiled


# --------------------------------------------------------------------------- optimiser


def test_one_critic_alone_is_that_member_of_the_ensemble() -> None:
    """CriticEnsemble.member(k) (used where a loss needs Q_1 only) gives forward()[k]: same
    values and same gradients for the inputs and that member's weights."""
    torch.manual_seed(0)
    critic = CriticEnsemble(OBS_DIM, ACT_DIM, 3, (32, 32))
    observations = torch.randn(16, OBS_DIM)
    for k in range(3):
        grads = []
        for q_of in (
            lambda a, k=k: critic(observations, a)[k],
            lambda a, k=k: critic.member(k, observations, a),
        ):
            actions = torch.randn(16, ACT_DIM, generator=torch.Generator().manual_seed(k))
            actions.requires_grad_(True)
            critic.zero_grad(set_to_none=True)
            q = q_of(actions)
            q.square().sum().backward()
            grads.append(
                (q.detach(), actions.grad, [p.grad[k].clone() for p in critic.parameters()])
            )
        (q_all, a_all, w_all), (q_one, a_one, w_one) = grads
        torch.testing.assert_close(q_one, q_all, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a_one, a_all, rtol=1e-5, atol=1e-6)
        for mine, theirs in zip(w_one, w_all):
            torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)


def test_optimizer_falls_back_to_foreach_adam_where_there_is_no_fused_kernel(monkeypatch) -> None:
    # torch < 2.4 has no fused CPU Adam and raises: the same update with foreach instead
    torch.manual_seed(0)
    params = [torch.randn(8, 5, requires_grad=True)]
    assert make_optimizer(params, 1e-2).defaults["fused"]
    real_adam = torch.optim.Adam

    def no_fused_kernel(*args, fused=None, **kwargs):
        if fused:
            raise RuntimeError("fused=True requires CUDA")
        return real_adam(*args, **kwargs)

    monkeypatch.setattr(torch.optim, "Adam", no_fused_kernel)
    fallback = make_optimizer(params, 1e-2, weight_decay=0.1)
    assert fallback.defaults["foreach"] and not fallback.defaults["fused"]
    assert fallback.defaults["weight_decay"] == 0.1 and fallback.defaults["lr"] == 1e-2


# --------------------------------------------------------------------------- benchmark


@pytest.mark.slow
def test_bench_quick_runs_and_writes_a_report(tmp_path: Path) -> None:
    """experiments/bench.py --quick end to end on two algorithms (a smoke test: ~20 s)."""
    command = [
        sys.executable,
        str(ROOT / "experiments" / "bench.py"),
        "--quick",
        "--algorithms",
        "diffusion_ql",
        "td3bc",
        "--seconds",
        "0.2",
        "--out",
        str(tmp_path),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    rows = {r["algorithm"]: r for r in report["algorithms"]}
    assert set(rows) == {"diffusion_ql", "td3bc"}
    assert rows["diffusion_ql"]["train_ratio"] > 0 and rows["diffusion_ql"]["steps_per_s"] > 0
    assert report["batched_seeds"]["seeds"] == 5
    assert report["evaluation"] and report["machine"]["threads"] == 1
    assert "## Training" in (tmp_path / "bench.md").read_text()
    (q_gradient,) = report["q_gradient"]  # --quick: T = 5 only
    assert q_gradient["n_timesteps"] == 5 and q_gradient["approx_steps_per_s"] > 0
    assert "## EDP action approximation" in (tmp_path / "bench.md").read_text()
