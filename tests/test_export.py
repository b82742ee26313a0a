"""Policy export: a TorchScript file that plain torch.jit.load runs without this package and
that gives the live agent's actions (for stochastic policies: for the same seed)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_algo import ActorBC  # tests/tiny_algo.py: pytest puts tests/ on sys.path
from torch import nn

from dql import registry
from dql.cli import main as dql_main
from dql.data import DatasetInfo, ObservationNormalizer
from dql.errors import UserError
from dql.export import TrainedRun, check_export, export_policy, load_exported
from dql.nets import mlp
from dql.registry import agent_class
from dql.training import TrainConfig, run_training


class SampledPolicy(nn.Module):
    """a = mu(s) + 0.5 max_action * z, z ~ N(0, I) from torch's RNG."""

    def __init__(self, mean: nn.Module, max_action: float) -> None:
        super().__init__()
        self.mean, self.scale = mean, 0.5 * max_action

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        mu = self.mean(observations)
        return mu + self.scale * torch.randn_like(mu)


class GaussianBC(ActorBC):
    """A stochastic policy that exposes its sampler through `policy_module()`."""

    def policy_module(self) -> nn.Module:
        return SampledPolicy(self.actor, self.max_action)

    @torch.no_grad()
    def act(self, observations: np.ndarray) -> np.ndarray:
        mu = self.actor(torch.as_tensor(observations))
        return (mu + 0.5 * self.max_action * torch.randn_like(mu)).numpy()


class PreTanhBC(ActorBC):
    """`actor` outputs pre-activation values and act() squashes them: guessing fails."""

    def __init__(self, observation_dim, action_dim, max_action, config) -> None:
        super().__init__(observation_dim, action_dim, max_action, config)
        self.actor = mlp(observation_dim, action_dim, (16,))

    @torch.no_grad()
    def act(self, observations: np.ndarray) -> np.ndarray:
        return (torch.tanh(self.actor(torch.as_tensor(observations))) * self.max_action).numpy()


def in_memory_run(agent, observation_dim=4, action_dim=1, max_action=3.0) -> TrainedRun:
    low = np.full(action_dim, -max_action, np.float32)
    info = DatasetInfo("test/x-v0", "minari", observation_dim, action_dim, low, -low, "hash")
    normalizer = ObservationNormalizer(
        np.linspace(-1, 1, observation_dim).astype(np.float32),
        np.linspace(0.5, 2, observation_dim).astype(np.float32),
    )
    config = {"dataset": "test/x-v0", "seed": 0}
    return TrainedRun(Path("."), "test", config, info, normalizer, (0.0, 1.0), agent, "", {}, "cpu")


def run_without_dql(code: str, cwd: Path) -> str:
    """Run Python with this package made unimportable; return stdout."""
    prelude = "import sys; sys.modules['dql'] = None; sys.modules['baselines'] = None\n"
    done = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def trained_run(pendulum_store, tmp_path, monkeypatch):
    module = types.ModuleType("tiny_bc_for_export_tests")
    module.Agent = ActorBC
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(registry.ALGORITHMS, "tiny_bc", module.__name__)
    config = TrainConfig(
        dataset=pendulum_store,
        steps=300,
        eval_interval=300,
        eval_episodes=1,
        log_interval=100,
        checkpoint_interval=300,
        run_dir=str(tmp_path / "run"),
        progress=False,
        save_traces=False,
    )
    run_training(config, ActorBC, "tiny_bc")
    return tmp_path / "run"


def test_exported_policy_runs_without_the_package_and_matches_the_agent(trained_run, tmp_path):
    from dql.export import load_run

    out = tmp_path / "policy.pt"
    assert dql_main(["export", str(trained_run), "--out", str(out)]) == 0
    run = load_run(trained_run)
    rng = np.random.default_rng(0)
    raw = (run.normalizer.mean + run.normalizer.std * rng.normal(size=(6, 4))).astype(np.float32)
    np.save(tmp_path / "raw.npy", raw)
    printed = run_without_dql(
        f"""
        import json, numpy as np, torch
        extra = {{"dql.json": ""}}
        policy = torch.jit.load({str(out)!r}, _extra_files=extra)
        raw = torch.as_tensor(np.load("raw.npy"))
        np.save("batch.npy", policy(raw).numpy())
        np.save("single.npy", policy(raw[0]).numpy())
        meta = json.loads(extra["dql.json"])
        print(meta["algorithm"], meta["observation_dim"], policy.action_dim, policy.max_action)
        """,
        tmp_path,
    )
    assert printed.split() == ["tiny_bc", "4", "1", "3.0"]
    expected = np.clip(run.agent.act(run.normalizer(raw)), -3, 3)
    np.testing.assert_allclose(np.load(tmp_path / "batch.npy"), expected, atol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "single.npy"), expected[0], atol=1e-6)
    assert not np.allclose(expected, expected[0])  # the observations do matter


def test_stochastic_export_reproduces_the_agent_for_the_same_seed(tmp_path):
    torch.manual_seed(0)
    run = in_memory_run(GaussianBC(4, 1, 3.0, None))
    meta = export_policy(run, tmp_path / "policy.pt")
    assert meta["check_max_error"] <= 1e-6
    policy, _ = load_exported(tmp_path / "policy.pt")
    raw = torch.randn(5, 4)
    assert torch.equal(policy(raw, 3), policy(raw, 3))
    assert not torch.allclose(policy(raw, 3), policy(raw, 4))
    torch.manual_seed(3)
    expected = run.agent.act(run.normalizer(raw.numpy()))
    np.testing.assert_allclose(policy(raw, 3).numpy(), np.clip(expected, -3, 3), atol=1e-6)


def test_export_refuses_a_policy_that_does_not_reproduce_act(tmp_path):
    run = in_memory_run(PreTanhBC(4, 1, 3.0, None))
    with pytest.raises(UserError, match="does not reproduce agent.act"):
        export_policy(run, tmp_path / "policy.pt")
    assert not (tmp_path / "policy.pt").exists()


@pytest.mark.parametrize("selection", ["softmax", "argmax"])
def test_diffusion_ql_export_matches_act_with_fixed_noise(tmp_path, selection):
    diffusion_ql = pytest.importorskip("dql.diffusion_ql")
    config = diffusion_ql.Config(
        device="cpu", hidden=(32, 32, 32), num_candidates=6, action_selection=selection
    )
    torch.manual_seed(0)
    agent = agent_class(diffusion_ql)(4, 2, 1.0, config)
    run = in_memory_run(agent, observation_dim=4, action_dim=2, max_action=1.0)
    meta = export_policy(run, tmp_path / "dql.pt")
    assert meta["check_max_error"] == 0.0
    policy = torch.jit.load(str(tmp_path / "dql.pt"))
    raw = torch.randn(9, 4)
    for seed in (0, 11):
        torch.manual_seed(seed)
        expected = agent.act(run.normalizer(raw.numpy()))
        np.testing.assert_array_equal(policy(raw, seed).numpy(), expected)
    # the reverse chain is really sampled: another seed gives other actions
    assert not torch.equal(policy(raw, 0), policy(raw, 1))
    # the check is not vacuous: a perturbed critic changes which candidate is picked
    with torch.no_grad():
        for p in agent.critic_target.parameters():
            p.add_(torch.randn_like(p))
    assert check_export(policy, run) > 1e-3


def test_onnx_export_runs_in_onnx_runtime_without_the_package(trained_run, tmp_path):
    from dql.export import load_run

    out = tmp_path / "policy.onnx"
    assert dql_main(["export", str(trained_run), "--format", "onnx", "--out", str(out)]) == 0
    run = load_run(trained_run)
    rng = np.random.default_rng(1)
    raw = (run.normalizer.mean + run.normalizer.std * rng.normal(size=(6, 4))).astype(np.float32)
    np.save(tmp_path / "raw.npy", raw)
    printed = run_without_dql(
        f"""
        import json, numpy as np, onnx, onnxruntime
        session = onnxruntime.InferenceSession({str(out)!r}, providers=["CPUExecutionProvider"])
        raw = np.load("raw.npy")
        np.save("batch.npy", session.run(None, {{"observations": raw}})[0])
        np.save("one.npy", session.run(None, {{"observations": raw[:1]}})[0])
        props = {{p.key: p.value for p in onnx.load({str(out)!r}).metadata_props}}
        meta = json.loads(props["dql.json"])
        print(meta["algorithm"], meta["observation_dim"], meta["format"])
        """,
        tmp_path,
    )
    assert printed.split() == ["tiny_bc", "4", "dql-onnx-policy-1"]
    expected = np.clip(run.agent.act(run.normalizer(raw)), -3, 3)
    np.testing.assert_allclose(np.load(tmp_path / "batch.npy"), expected, atol=1e-5)
    np.testing.assert_allclose(np.load(tmp_path / "one.npy"), expected[:1], atol=1e-5)
    assert not np.allclose(expected, expected[0])  # the observations do matter


@pytest.mark.parametrize("name", ["td3bc", "iql", "cql", "bc"])
def test_onnx_export_of_each_noise_free_baseline_matches_act(name, tmp_path):
    from dql.export import export_onnx

    module = registry.load_algorithm(name)
    torch.manual_seed(0)
    agent = agent_class(module)(4, 2, 1.0, module.Config(device="cpu", hidden=(32, 32)))
    run = in_memory_run(agent, observation_dim=4, action_dim=2, max_action=1.0)
    meta = export_onnx(run, tmp_path / f"{name}.onnx")
    assert meta["check_max_error"] <= 1e-5


def test_onnx_export_refuses_a_policy_that_samples_noise(tmp_path):
    # Diffusion-QL and BCQ sample at every action: ONNX Runtime could not reproduce their noise
    from dql.export import export_onnx

    run = in_memory_run(GaussianBC(4, 1, 3.0, None))
    with pytest.raises(UserError, match="samples noise"):
        export_onnx(run, tmp_path / "policy.onnx")
    assert not (tmp_path / "policy.onnx").exists()
    diffusion_ql = pytest.importorskip("dql.diffusion_ql")
    config = diffusion_ql.Config(device="cpu", hidden=(16, 16, 16), num_candidates=4)
    agent = agent_class(diffusion_ql)(4, 2, 1.0, config)
    dql_run = in_memory_run(agent, observation_dim=4, action_dim=2, max_action=1.0)
    with pytest.raises(UserError, match="samples noise"):
        export_onnx(dql_run, tmp_path / "dql.onnx")
