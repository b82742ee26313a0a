"""Adding an algorithm is one file plus one registry line: a tiny algorithm written to a temporary
folder (as a user would write it, importing only the core) is registered with one line and then
trained from the CLI, interrupted and resumed, swept, tabulated, timed and exported."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch

from dql import registry
from dql.cli import main as dql_main

NEW_ALGORITHM = '''
"""MSE behaviour cloning, the smallest algorithm the protocol allows."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np
import torch

from dql.nets import make_optimizer
from dql.actors import DeterministicActor
from dql.training import TrainConfig, run_training


@dataclass
class Config(TrainConfig):
    width: int = 32
    """Hidden width of the actor."""


class NewBC:
    def __init__(self, observation_dim, action_dim, max_action, config):
        hidden = (config.width, config.width)
        self.actor = DeterministicActor(observation_dim, action_dim, max_action, hidden)
        self.optimizer = make_optimizer(self.actor.parameters(), 1e-3)
        self.interrupt_at = int(os.environ.get("NEW_ALGO_INTERRUPT_AT", 0))  # Ctrl-C, for tests
        self.updates = 0

    def update(self, batch):
        self.updates += 1
        if self.updates == self.interrupt_at:
            raise KeyboardInterrupt
        loss = (self.actor(batch["observations"]) - batch["actions"]).square().mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": loss}

    @torch.no_grad()
    def act(self, observations):
        return self.actor(torch.as_tensor(observations)).numpy()

    def state_dict(self):
        return {"actor": self.actor.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state):
        self.actor.load_state_dict(state["actor"])
        self.optimizer.load_state_dict(state["optimizer"])


Agent = NewBC


def train(config):
    return run_training(config, Agent, "new_bc")


def main(argv=None):
    from dql.cli import run_cli

    return run_cli(Config, train, "new_bc", argv)


if __name__ == "__main__":
    sys.exit(main())
'''

SHORT = ["--steps", "60", "--eval-interval", "60", "--eval-episodes", "2", "--log-interval", "10"]
SHORT += ["--checkpoint-interval", "20", "--no-progress", "--no-save-traces"]


@pytest.fixture
def new_algorithm(tmp_path, monkeypatch):
    folder = tmp_path / "user_code"
    folder.mkdir()
    (folder / "new_bc_algo.py").write_text(NEW_ALGORITHM)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", str(folder))  # the sweep's worker processes import it too
    monkeypatch.setitem(registry.ALGORITHMS, "new_bc", "new_bc_algo")  # the one registry line
    return "new_bc"


def test_a_new_algorithm_trains_resumes_sweeps_tabulates_and_exports(
    new_algorithm, pendulum_store, tmp_path, monkeypatch, capsys
):
    run_dir = tmp_path / "run"
    argv = ["train", new_algorithm, "--dataset", pendulum_store, "--run-dir", str(run_dir), *SHORT]
    monkeypatch.setenv("NEW_ALGO_INTERRUPT_AT", "30")
    assert dql_main(argv) == 130  # interrupted, as by Ctrl-C: a checkpoint is kept
    assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"
    monkeypatch.delenv("NEW_ALGO_INTERRUPT_AT")
    assert dql_main([*argv, "--resume"]) == 0
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").open()]
    assert steps == [10, 20, 30, 40, 50, 60]  # continued from the checkpoint, no step twice
    result = json.loads((run_dir / "result.json").read_text())
    assert result["algorithm"] == "new_bc" and result["steps"] == 60

    sweep_file = tmp_path / "new.toml"
    sweep_file.write_text(
        textwrap.dedent(f"""
        algorithms = ["{new_algorithm}"]
        datasets = ["{pendulum_store}"]
        seeds = [0, 1]
        steps = 40
        eval_interval = 40
        eval_episodes = 2
        log_interval = 20
        checkpoint_interval = 20
        save_traces = false
        [overrides.{new_algorithm}]
        width = 16
        """)
    )
    out = tmp_path / "sweep"
    assert dql_main(["sweep", str(sweep_file), "--out", str(out), "--workers", "1"]) == 0
    for seed in (0, 1):
        config = json.loads(
            (out / "new_bc" / "pendulum-mixed" / f"seed_{seed}" / "config.json").read_text()
        )
        assert config["config"]["width"] == 16 and config["config"]["seed"] == seed
    assert dql_main(["table", str(out), "--no-plots"]) == 0
    table = (out / "results.md").read_text()
    assert "new_bc" in table and "(2)" in table  # a column for it, over its 2 seeds

    assert dql_main(["latency", str(run_dir)]) == 0
    assert dql_main(["export", str(run_dir), "--out", str(tmp_path / "policy.pt")]) == 0
    policy = torch.jit.load(str(tmp_path / "policy.pt"))
    observation = np.zeros((1, 4), np.float32)
    assert policy(torch.as_tensor(observation)).shape == (1, 1)
    assert "matches agent.act" in capsys.readouterr().out
