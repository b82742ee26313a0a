"""experiments/parity_diffusion_ql.py, the harness around the Diffusion-QL authors' code, run on
a stand-in checkout (their repository is not available to tests): it refuses settings their
agent cannot express, and a run stopped after an evaluation and rerun ends with the rows of an
uninterrupted one."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "parity_diffusion_ql.py"

# Their agent's interface (agents/ql_diffusion.py): train() draws from torch's and numpy's RNGs
# as theirs does, and its BC loss (a row's selection_loss) depends on the weights and the RNGs.
FAKE_AGENT = """
import numpy as np, torch
class Diffusion_QL:
    def __init__(self, state_dim, action_dim, max_action, device, discount, tau, **kwargs):
        self.action_dim, self.step = action_dim, 0
        self.actor = torch.nn.Linear(1, action_dim)
        self.ema_model = torch.nn.Linear(1, action_dim)
        self.critic = torch.nn.Linear(1, 1)
        self.critic_target = torch.nn.Linear(1, 1)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters())
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters())
    def train(self, sampler, iterations, batch_size=100):
        losses = []
        for _ in range(iterations):
            state, action = sampler.sample(batch_size)[:2]
            with torch.no_grad():
                self.actor.bias += 0.01 * torch.randn(self.action_dim) * np.random.uniform()
            losses.append(float(action.mean() + self.actor.bias.detach().sum()))
            self.step += 1
        return {"bc_loss": losses, "critic_loss": [2 * x for x in losses], "ql_loss": losses}
    def sample_action(self, state):
        return torch.tanh(self.actor.bias).detach().numpy()
"""
FAKE_SAMPLER = """
import torch
class Data_Sampler:
    def __init__(self, data, device, reward_tune="no"):
        self.action = torch.from_numpy(data["actions"])
        self.reward_tune = reward_tune
    def sample(self, batch_size):
        ind = torch.randint(0, len(self.action), size=(batch_size,))
        return self.action[ind], self.action[ind]
"""


@pytest.fixture
def parity():
    spec = importlib.util.spec_from_file_location("parity_diffusion_ql", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    for name in [n for n in sys.modules if n == "agents" or n.startswith(("agents.", "utils"))]:
        del sys.modules[name]  # the stand-in checkout's packages


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    root = tmp_path / "authors"
    for package, name, text in (
        ("agents", "ql_diffusion", FAKE_AGENT),
        ("utils", "data_sampler", FAKE_SAMPLER),
    ):
        (root / package).mkdir(parents=True)
        (root / package / "__init__.py").write_text("")
        (root / package / f"{name}.py").write_text(text)
    return root


def write_sweep(path: Path, dataset: str, extra: str = "") -> Path:
    path.write_text(
        f'name = "parity"\nalgorithms = ["diffusion_ql"]\ndatasets = ["{dataset}"]\nseeds = [3]\n'
        "steps = 30\neval_interval = 10\neval_episodes = 2\nsave_traces = false\n"
        f"[overrides.diffusion_ql]\ncompile = false\n{extra}"
    )
    return path


def test_settings_their_agent_has_no_switch_for_are_refused_by_name(
    parity, pendulum_store, tmp_path, checkout, capsys
):
    sweep = write_sweep(
        tmp_path / "s.toml",
        pendulum_store,
        'normalize_observations = true\nq_gradient = "approx"\n',
    )
    code = parity.main(
        [
            "train",
            str(sweep),
            "--authors-code",
            str(checkout),
            "--only",
            "*",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "normalize_observations = True (theirs: False)" in err
    assert "q_gradient = 'approx' (theirs: 'chain')" in err
    assert not (tmp_path / "o").exists()


def test_a_path_that_is_not_their_checkout_is_an_error(parity, pendulum_store, tmp_path, capsys):
    sweep = write_sweep(tmp_path / "s.toml", pendulum_store)
    code = parity.main(
        [
            "train",
            str(sweep),
            "--authors-code",
            str(tmp_path),
            "--only",
            "*",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2
    assert "no agents/ql_diffusion.py" in capsys.readouterr().err


def test_a_rerun_after_a_stop_ends_as_an_uninterrupted_run(
    parity, pendulum_store, tmp_path, checkout
):
    sweep = write_sweep(tmp_path / "s.toml", pendulum_store)
    args = ["train", str(sweep), "--authors-code", str(checkout), "--only", "*"]
    assert parity.main([*args, "--out", str(tmp_path / "whole")]) == 0

    stopped = tmp_path / "stopped"
    real_evaluate = parity.evaluate
    calls = []

    def evaluate_then_stop(*a, **k):  # the process dies after its second evaluation is saved
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return real_evaluate(*a, **k)

    parity.evaluate = evaluate_then_stop
    with pytest.raises(KeyboardInterrupt):
        parity.main([*args, "--out", str(stopped)])
    resumed = []

    def evaluate_and_count(*a, **k):
        resumed.append(1)
        return real_evaluate(*a, **k)

    parity.evaluate = evaluate_and_count
    assert parity.main([*args, "--out", str(stopped)]) == 0
    parity.evaluate = real_evaluate
    assert len(resumed) == 1  # it continued from step 20, not from the start

    def rows(out: Path) -> list[dict]:
        run = out / "diffusion_ql_authors" / "pendulum-mixed" / "seed_3"
        lines = (run / "eval.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "wall_time"} for line in lines]

    whole = rows(tmp_path / "whole")
    assert [r["step"] for r in whole] == [10, 20, 30]
    assert len({r["selection_loss"] for r in whole}) == 3  # it depends on weights and RNGs
    assert rows(stopped) == whole
    saved = json.loads(
        (stopped / "diffusion_ql_authors/pendulum-mixed/seed_3/config.json").read_text()
    )
    assert saved["config"]["run_dir"] == str(stopped / "diffusion_ql_authors/pendulum-mixed/seed_3")
