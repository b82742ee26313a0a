"""The generic agent checkpoint (dql.checkpoint): every algorithm's state round-trips into a
fresh agent built with another seed, a checkpoint that does not fit is one error naming the keys,
and an optimised tensor keeps its identity (its optimiser still updates it after a load)."""

from __future__ import annotations

import importlib

import pytest
import torch

from dql import registry
from dql.errors import UserError


def _agent(name: str, seed: int):
    module = importlib.import_module(registry.ALGORITHMS[name])
    torch.manual_seed(seed)
    config = (
        module.Config(dataset="x/y/z-v0", compile=False)
        if hasattr(module.Config, "compile")
        else module.Config(dataset="x/y/z-v0")
    )
    return module.Agent(5, 2, 1.0, config)


def _flat(state, prefix=""):
    if isinstance(state, dict):
        for key, value in state.items():
            yield from _flat(value, f"{prefix}{key}/")
    elif isinstance(state, (list, tuple)):
        for i, value in enumerate(state):
            yield from _flat(value, f"{prefix}{i}/")
    else:
        yield prefix, state


def _equal(a, b) -> bool:
    fa, fb = dict(_flat(a)), dict(_flat(b))
    if fa.keys() != fb.keys():
        return False
    for key, x in fa.items():
        y = fb[key]
        if isinstance(x, torch.Tensor):
            if not torch.equal(x, y):
                return False
        elif x != y:
            return False
    return True


@pytest.mark.parametrize("name", sorted(registry.ALGORITHMS))
def test_state_round_trips_into_an_agent_built_with_another_seed(name):
    source, target = _agent(name, 0), _agent(name, 1)
    assert not _equal(source.state_dict(), target.state_dict())  # the seeds differ somewhere
    target.load_state_dict(source.state_dict())
    assert _equal(source.state_dict(), target.state_dict())


def test_a_checkpoint_that_does_not_fit_names_the_keys():
    agent = _agent("td3bc", 0)
    state = agent.state_dict()
    del state["critic_target"]
    state["vae"] = {}
    with pytest.raises(UserError, match="missing critic_target; unexpected vae"):
        agent.load_state_dict(state)


def test_an_optimised_temperature_keeps_its_identity_after_a_load():
    source, target = _agent("cql", 0), _agent("cql", 1)
    with torch.no_grad():
        source.log_entropy_alpha.fill_(0.25)
    held = target.log_entropy_alpha
    target.load_state_dict(source.state_dict())
    assert target.log_entropy_alpha is held and held.item() == 0.25
    assert target.entropy_optimizer.param_groups[0]["params"][0] is held
