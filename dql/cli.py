"""Command-line plumbing: per-algorithm CLIs (tyro over the config dataclass, with per-task
defaults from experiments/hyperparams) and the `dql` umbrella command.

    dql train ALGORITHM [flags]     same as dql-ALGORITHM [flags]
    dql data build ENV-QUALITY      build a D4RL-style dataset locally (Minari format)
    dql sweep FILE                  run a sweep of algorithms x datasets x seeds
    dql table RUNS_DIR              tables of normalized scores from finished runs
    dql panel RUN_DIR [RUN_DIR ...] scores under observation/action noise, delay, dropped frames
    dql export RUN_DIR [--out F]    the policy as a self-contained TorchScript file
    dql replay RUN_DIR              re-run an evaluation's recorded episodes; failures by end reason
    dql latency RUN_DIR [...]       milliseconds per action of trained runs (writes latency.json)
    dql list                        algorithms and local datasets
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from dql.errors import UserError

C = TypeVar("C")


def parse_config(config_cls: type[C], algorithm: str, argv: Sequence[str] | None = None) -> C:
    """Parse flags into `config_cls`, with defaults taken from the task's hyperparameter table."""
    import tyro

    from dql.hyperparams import task_hyperparams

    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--dataset")
    pre.add_argument("--hyperparams")
    known, _ = pre.parse_known_args(argv)
    dataset = known.dataset or config_cls().dataset  # type: ignore[attr-defined]
    defaults = task_hyperparams(algorithm, dataset, config_cls, known.hyperparams)
    if known.hyperparams:  # consumed here; not a config field
        argv = _drop_flag(argv, "--hyperparams")
    default = config_cls(**{**defaults, "dataset": dataset})
    prog = f"dql-{algorithm.replace('_', '-')}"  # the console script, whatever ran us
    return tyro.cli(
        config_cls, prog=prog, default=default, args=argv, description=config_cls.__doc__
    )


def _drop_flag(argv: list[str], flag: str) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(flag + "="):
            out.append(arg)
    return out


def run_cli(
    config_cls: type[C],
    train: Callable[[C], dict[str, Any]],
    algorithm: str,
    argv: Sequence[str] | None = None,
) -> int:
    """Parse, train, print the result; user mistakes become one line on stderr and exit 2."""
    from dql.errors import DivergenceError
    from dql.training import TrainingInterrupted, exit_code_for

    try:
        try:
            config = parse_config(config_cls, algorithm, argv)
        except SystemExit as exc:  # tyro already printed the usage error (or --help)
            return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        result = train(config)
    except TrainingInterrupted as exc:
        print(str(exc), file=sys.stderr)
        return exit_code_for(exc)
    except KeyboardInterrupt:  # outside the training steps (loading data, writing results)
        print("interrupted; --resume continues from the last checkpoint, if any", file=sys.stderr)
        return 130
    except (UserError, DivergenceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_code_for(exc)
    print(
        f"{algorithm} on {result['dataset']} seed {result['seed']}: final normalized score "
        f"{result['final_score']:.1f}, best {result['best_score']:.1f} (step {result['best_step']})"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = "train, data, sweep, table, panel, export, replay, latency, list"
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    command, rest = argv[0], argv[1:]
    try:
        if command == "train":
            if not rest:
                raise UserError("usage: dql train ALGORITHM [flags]")
            from dql.registry import load_algorithm

            return int(load_algorithm(rest[0]).main(rest[1:]) or 0)
        if command == "data":
            from dql.builders.cli import main as data_main

            return int(data_main(rest) or 0)
        if command == "sweep":
            from dql.sweep import main as sweep_main

            return int(sweep_main(rest) or 0)
        if command == "table":
            from dql.tables import main as table_main

            return int(table_main(rest) or 0)
        if command == "panel":
            from dql.perturb import main as panel_main

            return int(panel_main(rest) or 0)
        if command == "export":
            from dql.export import main as export_main

            return int(export_main(rest) or 0)
        if command == "replay":
            from dql.traces import main as replay_main

            return int(replay_main(rest) or 0)
        if command == "latency":
            from dql.latency import main as latency_main

            return int(latency_main(rest) or 0)
        if command == "list":
            from dql.registry import ALGORITHMS

            print("algorithms:", ", ".join(ALGORITHMS))
            return 0
        raise UserError(f"unknown command {command!r}; choose one of {commands}")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
