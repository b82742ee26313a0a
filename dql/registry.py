"""Algorithm name -> module. Each module declares `Config` (its TrainConfig), `Agent` (its agent
class), `ALGORITHM`, `train(config) -> dict` and `main()`. Adding an algorithm is one new file
plus one line here; modules are imported only when used. The core reaches an algorithm only
through these names and the agent protocol (dql.training.Agent; `policy_module()` for export)."""

from __future__ import annotations

import importlib
from types import ModuleType

from dql.errors import UserError

ALGORITHMS: dict[str, str] = {
    "diffusion_ql": "dql.diffusion_ql",
    "td3bc": "baselines.td3bc",
    "iql": "baselines.iql",
    "cql": "baselines.cql",
    "bcq": "baselines.bcq",
    "bc": "baselines.bc",
    "diffuser": "baselines.diffuser",
    "mpc": "baselines.mpc",
}
ALIASES = {
    "diffusion-ql": "diffusion_ql",
    "dql": "diffusion_ql",
    "td3+bc": "td3bc",
    "td3_bc": "td3bc",
}


def canonical_name(name: str) -> str:
    name = ALIASES.get(name.lower(), name.lower())
    if name not in ALGORITHMS:
        raise UserError(f"unknown algorithm {name!r}; choose one of {', '.join(ALGORITHMS)}")
    return name


def load_algorithm(name: str) -> ModuleType:
    name = canonical_name(name)
    try:
        return importlib.import_module(ALGORITHMS[name])
    except ModuleNotFoundError as exc:
        if exc.name == ALGORITHMS[name]:
            raise UserError(f"algorithm {name!r} is not available in this version") from None
        raise


def agent_class(module: ModuleType) -> type:
    """The agent class an algorithm module declares as `Agent`."""
    agent = getattr(module, "Agent", None)
    if not isinstance(agent, type):
        raise UserError(
            f"{module.__name__} declares no agent class: add `Agent = <its agent class>`"
        )
    return agent
