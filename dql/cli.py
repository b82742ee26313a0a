"""The `dql` command: one tyro subcommand per tool, and the per-algorithm training CLIs.

Each subcommand is a dataclass below whose fields are its flags (the field docstrings are the
help text); its `run()` imports the module that does the work only then, so `dql --help` and a
mistyped flag answer at once. `dql train ALGORITHM ...` is handed to the algorithm's own tyro
CLI before the umbrella parses anything: an algorithm's flags and their defaults depend on the
algorithm and on `--dataset` (experiments/hyperparams), which one parser cannot know up front.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import tyro
from tyro.conf import Positional, UseAppendAction

from dql.errors import UserError
from dql.registry import ALGORITHMS

C = TypeVar("C")

DESCRIPTION = (
    "dql: offline reinforcement learning. Diffusion-QL and the baselines it is compared with "
    "(IQL, CQL, BCQ, TD3+BC, BC, Diffuser), trained from D4RL-style Minari datasets that "
    "`dql data build` makes locally; sweeps over seeds, tables of normalized scores, "
    "robustness panels and exported policies. `dql COMMAND --help` shows a command's flags."
)


# ---------------------------------------------------------------------------------------------
# Per-algorithm training CLIs (dql-ALGORITHM and `dql train ALGORITHM`)


def parse_config(config_cls: type[C], algorithm: str, argv: Sequence[str] | None = None) -> C:
    """Parse flags into `config_cls`, with defaults taken from the task's hyperparameter table."""
    from dql.hyperparams import task_hyperparams

    argv = list(sys.argv[1:] if argv is None else argv)
    # the defaults depend on --dataset and --hyperparams, so these two are read before tyro runs
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
            return _exit_status(exc)
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


# ---------------------------------------------------------------------------------------------
# The umbrella's subcommands


@dataclasses.dataclass(frozen=True)
class TrainArgs:
    """Train one algorithm on one dataset and seed (`dql train ALGORITHM --help` lists its
    flags; the same as the dql-ALGORITHM command)."""

    algorithm: Positional[
        Annotated[str, tyro.conf.arg(help=f"one of {', '.join(ALGORITHMS)}", metavar="ALGORITHM")]
    ]

    def run(self) -> int:  # reached only as `dql train ALGORITHM` with no flags
        return train_main([self.algorithm])


@dataclasses.dataclass(frozen=True)
class DataBuildArgs:
    """Build one D4RL-style dataset into the Minari store ($MINARI_DATASETS_PATH or
    ~/.minari/datasets): <env>-<quality> (hopper, halfcheetah, walker2d, ant x random, medium,
    medium-replay, medium-expert, expert), pointmaze-<maze> (umaze, medium, large, each also
    -dense) or pendulum-<behaviour> (flip, noisy, stretches: small InvertedPendulum sets from a
    linear controller). Ids: local/<env>/<quality>-v0, local/pointmaze/<maze>-v0."""

    name: Positional[str]
    """e.g. hopper-medium, walker2d-medium-replay, pointmaze-umaze, pendulum-flip"""
    size: int | None = None
    """transitions to collect (default 1,000,000; pendulum: 10,000-20,000; medium-expert: per
    half; medium-replay: ignored, the buffer decides)"""
    seed: int = 0
    """episode i resets with seed + i"""
    out: Annotated[str | None, tyro.conf.arg(aliases=("--dataset-id",))] = None
    """dataset id to write instead of local/<env>/<quality>-v0"""
    policy_dir: Path | None = None
    """behaviour policies <env>_<level>.pt and SAC runs sac_<env>/ (default $DQL_POLICY_DIR or
    ~/.cache/dql/policies; the policies shipped in dql/policies are used when none is there)"""
    train_steps: int | None = None
    """SAC steps when a behaviour policy must be trained (default: the recipe's)"""
    ref_episodes: int = 100
    """episodes averaged for ref_min_score / ref_max_score"""
    max_episode_steps: int | None = None
    """locomotion, pendulum: time limit of the data-collection env (default: the env's;
    pendulum: the behaviour's)"""
    chunk: int | None = None
    """pointmaze: steps per stored episode (default: the env's time limit)"""
    noise: float = 0.5
    """pointmaze: std of the Gaussian action noise"""
    overwrite: bool = False
    """replace an existing dataset"""
    no_progress: bool = False
    """no progress bars"""
    portable: bool = False
    """locomotion (not medium-replay): the behaviour policies act in float64, actions rounded to
    float32, so the bytes do not depend on the CPU's BLAS kernels (docs/datasets.md); a different
    build from the default one"""

    def run(self) -> int:
        from dql.builders.cli import build_command

        return build_command(self)


@dataclasses.dataclass(frozen=True)
class DataListArgs:
    """Print every dataset name that `dql data build` accepts."""

    def run(self) -> int:
        from dql.builders.cli import dataset_names

        print("\n".join(dataset_names()))
        return 0


@dataclasses.dataclass(frozen=True)
class DataArgs:
    """Build D4RL-style offline datasets locally, in Minari format (docs/datasets.md)."""

    command: (
        Annotated[DataBuildArgs, tyro.conf.subcommand("build")]
        | Annotated[DataListArgs, tyro.conf.subcommand("list")]
    )

    def run(self) -> int:
        return self.command.run()


@dataclasses.dataclass(frozen=True)
class SweepArgs:
    """Run a sweep file (algorithms x datasets x seeds, TOML); rerun it to resume."""

    file: Positional[str]
    """sweep TOML file, e.g. experiments/sweeps/demo.toml"""
    out: str | None = None
    """output directory (default: runs/sweeps/NAME)"""
    workers: int | None = None
    """concurrent runs, local backend (default: CPU count)"""
    backend: Literal["local", "ray"] = "local"
    """where runs execute: local processes or a Ray cluster"""
    address: str | None = None
    """Ray cluster address (default: start a local one)"""
    retry_failed: bool = False
    """rerun failed runs from scratch (the failed run is kept as seed_N.failed-K)"""
    cpus_per_run: int = 1
    """CPU threads per run"""
    gpus_per_run: float = 0.0
    """GPUs per run (Ray)"""
    dry_run: bool = False
    """check the file and show the plan; train nothing"""
    batched_seeds: bool = False
    """train the seeds of a task as one batched model where the algorithm can"""
    only: UseAppendAction[tuple[str, ...]] = ()
    """launch only runs whose key (ALGORITHM/TASK/seed_N) matches this glob; repeatable"""
    launch_for: float | None = None
    """start no run after this many minutes; running runs finish (local backend)"""
    allow_other_build: bool = False
    """launch runs even where the local dataset differs from the one finished runs trained on"""

    def run(self) -> int:
        from dql.sweep import sweep_command

        return sweep_command(self)


@dataclasses.dataclass(frozen=True)
class TableArgs:
    """Tables of normalized scores (mean, std, IQM with bootstrap intervals, Welch tests
    against a reference algorithm) and learning curves from finished runs."""

    runs_dir: Positional[str]
    """directory holding run directories (searched recursively)"""
    out: str | None = None
    """where results.md/.tex, CSVs and PNGs go (default RUNS_DIR)"""
    score: Literal["final", "best"] = "final"
    """score for aggregates and tests (best selects on evaluation episodes: labelled so)"""
    reference: str | None = None
    """algorithm the others are tested against (default bc)"""
    reps: int = 2000
    """bootstrap resamples"""
    no_plots: bool = False
    """skip the learning-curve PNGs"""

    def run(self) -> int:
        from dql.tables import table_command

        return table_command(self)


@dataclasses.dataclass(frozen=True)
class PanelArgs:
    """The perturbation panel: evaluate trained agents under observation noise, action noise,
    action delay and dropped observations; write a table and a plot."""

    run_dirs: Positional[tuple[str, ...]]
    """run directories to evaluate"""
    obs_noise: tuple[float, ...] | None = None
    """observation-noise sigmas (normalised units)"""
    action_noise: tuple[float, ...] | None = None
    """action-noise sigmas (x max action)"""
    delay: tuple[int, ...] | None = None
    """action delays in steps"""
    drop_prob: tuple[float, ...] | None = None
    """observation drop probabilities"""
    episodes: int = 10
    """episodes per setting"""
    seed: int | None = None
    """first reset seed (default: the run's eval seed)"""
    checkpoint: str = "last"
    """last, best, selected or a step"""
    device: str = "auto"
    """cpu, cuda or auto"""
    out: str = "results/panel"
    """output directory"""
    trade: str | None = None
    """NAME=V1,V2,...: vary an act-time setting (e.g. num_candidates=1,5,50): latency vs score"""
    record: bool = False
    """save episode 0 of each setting as video"""

    def run(self) -> int:
        from dql.perturb import panel_command

        return panel_command(self)


@dataclasses.dataclass(frozen=True)
class ExportArgs:
    """Export a trained policy as a self-contained TorchScript or ONNX file (observation
    normalisation included), checked against the agent's own actions."""

    run_dir: Positional[str]
    """run directory (holds config.json and checkpoints/)"""
    format: Literal["torchscript", "onnx"] = "torchscript"
    """torchscript (every policy but Diffuser's; seeded noise kept) or onnx (policies that
    sample no noise, checked with ONNX Runtime; needs the export extra)"""
    out: str | None = None
    """output file (default: RUN_DIR/policy.pt, or policy.onnx)"""
    checkpoint: str = "last"
    """last, best, selected (offline choice) or a step"""
    set: tuple[str, ...] = ()
    """NAME=VALUE act-time settings baked into the export, e.g. num_candidates=10"""
    no_check: bool = False
    """skip the check against agent.act"""

    def run(self) -> int:
        from dql.export import export_command

        return export_command(self)


@dataclasses.dataclass(frozen=True)
class ReplayArgs:
    """Re-run recorded evaluation episodes (RUN_DIR/traces.*) from their seeds, check that the
    returns match and print the episodes by end reason."""

    path: Positional[str]
    """run directory, or a traces .json/.npz file"""
    atol: float = 1e-6
    """relative return tolerance"""
    video: tuple[int, ...] | None = None
    """also render these episodes as video"""
    video_dir: str | None = None
    """where videos go (default: next to the traces)"""

    def run(self) -> int:
        from dql.traces import replay_command

        return replay_command(self)


@dataclasses.dataclass(frozen=True)
class LatencyArgs:
    """Milliseconds per action of trained runs (batch 1 and 10); writes RUN_DIR/latency.json."""

    run_dirs: Positional[tuple[str, ...]]
    """run directories to time"""
    checkpoint: str = "last"
    """last, best, or a step"""
    device: str = "cpu"
    """cpu or cuda[:N]"""

    def run(self) -> int:
        from dql.latency import latency_command

        return latency_command(self)


@dataclasses.dataclass(frozen=True)
class DemoArgs:
    """BC, TD3+BC, IQL and Diffusion-QL on a small pendulum dataset where cloning fails, 3
    seeds, about 8 minutes on 2 cores (what `make demo` runs)."""

    workers: int | None = None
    """parallel runs (default: CPU count)"""
    out: Path | None = None
    """demo directory (default runs/demo)"""
    sweep: Path | None = None
    """sweep file to run (default experiments/sweeps/demo.toml)"""

    def run(self) -> int:
        from dql.demo import demo_command

        return demo_command(self)


@dataclasses.dataclass(frozen=True)
class ListArgs:
    """The algorithms, the dataset names `dql data build` accepts, and the datasets in the
    local Minari store ($MINARI_DATASETS_PATH)."""

    def run(self) -> int:
        import minari
        from minari.storage.datasets_root_dir import get_dataset_path

        from dql.builders.cli import dataset_names

        print("algorithms:", ", ".join(ALGORITHMS))
        print("buildable (dql data build NAME):", ", ".join(dataset_names()))
        stored = sorted(minari.list_local_datasets(compatible_minari_version=False))
        print(f"in the local store {get_dataset_path()}:", ", ".join(stored) or "none yet")
        return 0


COMMANDS: dict[str, type] = {
    "train": TrainArgs,
    "data": DataArgs,
    "sweep": SweepArgs,
    "table": TableArgs,
    "panel": PanelArgs,
    "export": ExportArgs,
    "replay": ReplayArgs,
    "latency": LatencyArgs,
    "demo": DemoArgs,
    "list": ListArgs,
}
# bool fields are plain switches (--overwrite, --no-plots), as a user types them
TYRO_CONFIG = (
    tyro.conf.OmitSubcommandPrefixes,
    tyro.conf.FlagCreatePairsOff,
    tyro.conf.PositionalMetavarFromFieldName,
)


def train_main(argv: Sequence[str]) -> int:
    from dql.registry import load_algorithm

    return int(load_algorithm(argv[0]).main(list(argv[1:])) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """`dql COMMAND ...`; returns the exit status (2 and one line for a user mistake)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["train"] and argv[1:2] and not argv[1].startswith("-"):
            return train_main(argv[1:])
        command = tyro.extras.subcommand_cli_from_dict(
            COMMANDS, prog="dql", description=DESCRIPTION, args=argv, config=TYRO_CONFIG
        )
        return int(command.run() or 0)
    except SystemExit as exc:  # tyro printed the usage error, or --help
        return _exit_status(exc)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _exit_status(exc: SystemExit) -> int:
    return exc.code if isinstance(exc.code, int) else int(exc.code is not None)


if __name__ == "__main__":
    sys.exit(main())
