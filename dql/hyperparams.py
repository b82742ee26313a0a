"""Per-task hyperparameters as data: experiments/hyperparams/<algorithm>.toml.

Each file has a [defaults] table and one [tasks."<task>"] table per task (task names as
`dql.data.task_name` gives them: hopper-medium, antmaze-umaze-diverse, pen-human, ...). Values
become the config's defaults for that dataset; flags on the command line override them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import tomllib

from dql.config_fields import kind_errors
from dql.data import task_name
from dql.errors import ConfigError

HYPERPARAMS_DIR = Path(__file__).resolve().parent.parent / "experiments" / "hyperparams"


def load_table(algorithm: str, path: str | Path | None = None) -> dict[str, Any]:
    file = Path(path) if path else HYPERPARAMS_DIR / f"{algorithm}.toml"
    if not file.exists():
        if path:
            raise ConfigError(f"hyperparameter file {file} not found")
        return {}
    try:
        return tomllib.loads(file.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: malformed TOML: {exc}") from None


def task_hyperparams(
    algorithm: str, dataset: str, config_cls: type, path: str | Path | None = None
) -> dict[str, Any]:
    """Defaults for `dataset` from the algorithm's table, checked against the config's fields."""
    table = load_table(algorithm, path)
    task = task_name(dataset)
    values = {**table.get("defaults", {}), **table.get("tasks", {}).get(task, {})}
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(
            f"hyperparameters for {algorithm}/{task} name unknown field(s): {', '.join(unknown)}"
        )
    for name, kind in kind_errors(config_cls, values).items():
        raise ConfigError(
            f"hyperparameters for {algorithm}/{task}: {name} = {values[name]!r} should be {kind}"
        )
    return values
