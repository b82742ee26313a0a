"""Config fields declare their roles as metadata; the core reads them instead of key lists."""

from __future__ import annotations

import dataclasses
import json

import pytest

from baselines import bcq, diffuser, td3bc
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
