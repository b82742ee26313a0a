"""Config fields declare their roles and ranges as metadata; the core reads them instead of key
lists and per-file range checks."""

from __future__ import annotations

import dataclasses
import json

import pytest

from baselines import bcq, diffuser, mpc, td3bc
from dql import diffusion_ql
from dql.config_fields import field_ranges
from dql.errors import ConfigError
from dql.tables import config_hash
from dql.training import _check_resume_config, fields_with_role, result_neutral_fields


def as_saved(config) -> dict:
    """The config as config.json holds it (tuples read back as lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def test_runs_differing_only_where_results_cannot_change_share_a_config_hash():
    base = td3bc.Config(dataset="local/hopper/medium-v0")
    same = dataclasses.replace(base, seed=3, num_threads=2, device="cpu", progress=False)
    assert config_hash(as_saved(base)) == config_hash(as_saved(same))
    other = dataclasses.replace(base, alpha=1.0)
    assert config_hash(as_saved(base)) != config_hash(as_saved(other))


def test_resume_allows_resumable_fields_and_refuses_the_rest():
    saved = as_saved(td3bc.Config())
    resumable = fields_with_role(td3bc.Config, "resumable")
    _check_resume_config(saved, {**saved, "num_threads": 2, "device": "cpu"}, resumable)
    with pytest.raises(ConfigError, match="seed: saved 0 vs now 1"):
        _check_resume_config(saved, {**saved, "seed": 1}, resumable)


def test_a_subclass_that_changes_a_default_keeps_the_fields_roles():
    # BCQ and Diffuser redeclare normalize_observations with another default.
    for config_class in (bcq.Config, diffuser.Config):
        assert "normalize_observations" in fields_with_role(config_class, "architecture")
    assert "horizon" in fields_with_role(diffuser.Config, "architecture")
    assert "seed" in result_neutral_fields(bcq.Config)
    assert "dataset" in fields_with_role(bcq.Config, "set_by_sweep")
    assert "dataset" not in fields_with_role(bcq.Config, "per_seed")


RANGE_CASES = [  # (config class, field, a value just outside, the message)
    (td3bc.Config, "tau", 0.0, "--tau must be in (0, 1], got 0.0"),
    (td3bc.Config, "discount", 1.01, "--discount must be in [0, 1], got 1.01"),
    (td3bc.Config, "hidden", (256, 0), "--hidden must be positive widths, got (256, 0)"),
    (td3bc.Config, "steps", 2.5, "--steps must be a positive integer, got 2.5"),
    (bcq.Config, "batch_size", 0, "--batch-size must be a positive integer, got 0"),
    (bcq.Config, "phi", 2.5, "--phi must be in [0, 2], got 2.5"),
    (diffusion_ql.DiffusionQLConfig, "ema_decay", 1.0, "--ema-decay must be in [0, 1), got 1.0"),
    (diffusion_ql.DiffusionQLConfig, "time_dim", 2, "--time-dim must be >= 4, got 2"),
    (mpc.Config, "steps", 0, "--steps must be a positive integer, got 0"),
]


@pytest.mark.parametrize("config_class, name, value, message", RANGE_CASES)
def test_declared_ranges_refuse_the_value_just_outside(config_class, name, value, message):
    config_class().validate()  # the defaults are inside
    with pytest.raises(ConfigError) as refused:
        config_class(**{name: value}).validate()
    assert str(refused.value) == message


def test_ranges_keep_their_bounds_and_none_where_a_field_allows_it():
    td3bc.Config(tau=1.0, discount=0.0, alpha=0.0, max_episode_steps=None).validate()
    # BCQ and MPC redeclare batch_size / steps with other defaults: the range stays declared.
    assert field_ranges(bcq.Config)["batch_size"] == ">= 1"
    assert field_ranges(mpc.Config)["steps"] == ">= 1"
    with pytest.raises(ConfigError, match="--max-episode-steps must be a positive integer"):
        td3bc.Config(max_episode_steps=0).validate()


def test_hyperparameter_tables_are_checked_against_the_field_types(tmp_path):
    # the per-task table is a file like a sweep: a value of the wrong kind is refused with the
    # field and the kind it takes, before any config is built from it
    from dql.hyperparams import task_hyperparams

    table = tmp_path / "table.toml"
    table.write_text('[defaults]\nactor_lr = 3e-4\n[tasks."hopper-medium"]\nhidden = 256\n')
    dataset = "local/hopper/medium-v0"
    with pytest.raises(ConfigError, match=r"hidden = 256 should be tuple\[int, \.\.\.\]"):
        task_hyperparams("td3bc", dataset, td3bc.Config, table)
    table.write_text('[defaults]\nactor_lr = "fast"\n')
    with pytest.raises(ConfigError, match="actor_lr = 'fast' should be float"):
        task_hyperparams("td3bc", dataset, td3bc.Config, table)
    table.write_text("[defaults]\nactor_lr = 1\nhidden = [64, 64]\n")  # an int is a float
    assert task_hyperparams("td3bc", dataset, td3bc.Config, table) == {
        "actor_lr": 1,
        "hidden": [64, 64],
    }
