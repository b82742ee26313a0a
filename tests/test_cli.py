"""The `dql` umbrella command: one tyro parser, help written for a user, one-line errors."""

from __future__ import annotations

import pytest

from dql.cli import COMMANDS, main


def test_help_lists_every_command_in_words(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "offline reinforcement learning" in out
    assert "plumbing" not in out.lower()
    for name in COMMANDS:
        assert f"• {name}" in out
    assert "perturbation panel" in out  # `dql panel` says what it is


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_has_help(name, capsys):
    assert main([name, "--help"]) == 0
    assert f"usage: dql {name}" in capsys.readouterr().out


def test_flags_reach_the_command(tmp_path, capsys, monkeypatch):
    # the flags arrive typed and named as the user wrote them: a tuple flag, a repeatable flag,
    # a plain switch and an alias
    seen = {}
    import dql.perturb
    import dql.sweep

    monkeypatch.setattr(dql.perturb, "panel_command", lambda args: seen.setdefault("p", args) and 0)
    monkeypatch.setattr(dql.sweep, "sweep_command", lambda args: seen.setdefault("s", args) and 0)
    assert main(["panel", "a", "b", "--obs-noise", "0.1", "0.3", "--record"]) == 0
    assert seen["p"].run_dirs == ("a", "b") and seen["p"].obs_noise == (0.1, 0.3)
    assert seen["p"].record and seen["p"].delay is None
    argv = ["sweep", "f.toml", "--only", "bc/*", "--only", "iql/*", "--launch-for", "30"]
    assert main([*argv, "--dry-run"]) == 0
    assert seen["s"].only == ("bc/*", "iql/*") and seen["s"].launch_for == 30.0
    assert seen["s"].dry_run and not seen["s"].retry_failed


def test_user_mistakes_are_one_line_and_exit_2(tmp_path, capsys):
    assert main(["tabel"]) == 2  # unknown command
    assert main(["table", str(tmp_path), "--scroe", "best"]) == 2  # unknown flag
    assert main(["table", str(tmp_path), "--score", "median"]) == 2  # bad choice
    capsys.readouterr()
    assert main(["panel"]) == 2  # no run directory
    assert capsys.readouterr().err.strip() == "error: give at least one RUN_DIR"
    assert main(["train", "nope"]) == 2
    assert "unknown algorithm 'nope'" in capsys.readouterr().err


def test_train_hands_flags_to_the_algorithm(monkeypatch):
    # `dql train ALGORITHM ...` reaches the algorithm's own CLI with its flags untouched
    import baselines.bc

    got = []
    monkeypatch.setattr(baselines.bc, "main", lambda argv: got.append(argv) or 0)
    assert main(["train", "bc", "--dataset", "x", "--steps", "5"]) == 0
    assert got == [["--dataset", "x", "--steps", "5"]]


def test_list_names_the_algorithms_and_the_stored_datasets(tmp_path, monkeypatch, capsys):
    from conftest import build_pendulum_dataset

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "diffusion_ql" in out and "pendulum-flip" in out and "none yet" in out
    build_pendulum_dataset("flip", "test/pendulum/listed-v0", size=500)
    assert main(["list"]) == 0
    assert "test/pendulum/listed-v0" in capsys.readouterr().out.splitlines()[-1]
