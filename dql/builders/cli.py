"""`dql data build <name>`: build a D4RL-style dataset into the local Minari store.

python -m dql.builders.cli build hopper-medium --size 20000
python -m dql.builders.cli build pointmaze-umaze-dense
python -m dql.builders.cli build pendulum-flip          # seconds; the demo's dataset
python -m dql.builders.cli list
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dql.errors import UserError

LOCOMOTION_ENVS = ("hopper", "halfcheetah", "walker2d", "ant")
DEFAULT_SIZE = 1_000_000  # locomotion and pointmaze; pendulum behaviours have their own


def dataset_names() -> list[str]:
    """Every name `dql data build` accepts."""
    from dql.builders.locomotion import QUALITIES
    from dql.builders.pendulum import BEHAVIOURS
    from dql.builders.pointmaze import MAZE_NAMES

    return (
        [f"{e}-{q}" for e in LOCOMOTION_ENVS for q in QUALITIES]
        + [f"pointmaze-{m}" for m in MAZE_NAMES]
        + [f"pendulum-{b}" for b in BEHAVIOURS]
    )


def parse_name(name: str) -> tuple[str, str]:
    """'hopper-medium-replay' -> ('hopper', 'medium-replay'); 'pointmaze-umaze' -> ('pointmaze', 'umaze')."""
    if name not in dataset_names():
        envs = ", ".join((*LOCOMOTION_ENVS, "pointmaze", "pendulum"))
        if name.startswith("antmaze"):
            raise UserError(
                "antmaze datasets are not built locally: load Minari's D4RL/antmaze/* datasets"
            )
        from dql.builders.locomotion import QUALITIES
        from dql.builders.pendulum import BEHAVIOURS
        from dql.builders.pointmaze import MAZE_NAMES

        raise UserError(
            f"unknown dataset {name!r}; valid: <env>-<quality> with env in {envs}, quality in "
            f"{', '.join(QUALITIES)} (locomotion), {', '.join(MAZE_NAMES)} (pointmaze) or "
            f"{', '.join(BEHAVIOURS)} (pendulum)"
        )
    env, rest = name.split("-", 1)
    return env, rest


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dql data", description="Build D4RL-style offline datasets locally, in Minari format."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="print every dataset name that `build` accepts")
    build = sub.add_parser(
        "build",
        help="build one dataset into the Minari store ($MINARI_DATASETS_PATH or ~/.minari/datasets)",
        description="Build <env>-<quality> (hopper, halfcheetah, walker2d, ant x random, medium, "
        "medium-replay, medium-expert, expert), pointmaze-<maze> (umaze, medium, large, each "
        "also -dense) or pendulum-<behaviour> (flip, noisy, stretches: small InvertedPendulum "
        "sets from a linear controller). Ids: local/<env>/<quality>-v0, local/pointmaze/<maze>-v0.",
    )
    build.add_argument("name", help="e.g. hopper-medium, walker2d-medium-replay, pointmaze-umaze")
    build.add_argument(
        "--size",
        type=int,
        default=None,
        help="transitions to collect (default 1,000,000; pendulum: 10,000-20,000; "
        "medium-expert: per half; medium-replay: ignored, the buffer decides)",
    )
    build.add_argument("--seed", type=int, default=0, help="episode i resets with seed + i")
    build.add_argument(
        "--out",
        "--dataset-id",
        dest="out",
        default=None,
        help="dataset id to write instead of local/<env>/<quality>-v0",
    )
    build.add_argument(
        "--policy-dir",
        type=Path,
        default=None,
        help="behaviour policies <env>_<level>.pt and SAC runs sac_<env>/ "
        "(default $DQL_POLICY_DIR or ~/.cache/dql/policies; the policies shipped "
        "in dql/policies are used when none is found there)",
    )
    build.add_argument(
        "--train-steps",
        type=int,
        default=None,
        help="SAC steps when a behaviour policy must be trained (default: recipe)",
    )
    build.add_argument(
        "--ref-episodes",
        type=int,
        default=100,
        help="episodes averaged for ref_min_score / ref_max_score",
    )
    build.add_argument(
        "--max-episode-steps",
        type=int,
        default=None,
        help="locomotion, pendulum: time limit of the data-collection env (default: env's; "
        "pendulum: the behaviour's)",
    )
    build.add_argument(
        "--chunk",
        type=int,
        default=None,
        help="pointmaze: steps per stored episode (default: the env's time limit)",
    )
    build.add_argument(
        "--noise", type=float, default=0.5, help="pointmaze: std of the Gaussian action noise"
    )
    build.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    build.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `dql data ...`; returns the exit status."""
    args = make_parser().parse_args(argv)
    try:
        if args.command == "list":
            print("\n".join(dataset_names()))
            return 0
        env, rest = parse_name(args.name)
        if env == "pendulum":
            if args.train_steps is not None or args.chunk is not None:
                raise UserError("--train-steps and --chunk are not for pendulum datasets")
            from dql.builders.pendulum import build_pendulum

            report = build_pendulum(
                rest,
                size=args.size,
                seed=args.seed,
                dataset_id_override=args.out,
                max_episode_steps=args.max_episode_steps,
                ref_episodes=args.ref_episodes,
                overwrite=args.overwrite,
                progress=not args.no_progress,
            )
        elif env == "pointmaze":
            if args.max_episode_steps is not None or args.train_steps is not None:
                raise UserError("--max-episode-steps and --train-steps are for locomotion datasets")
            from dql.builders.pointmaze import build_pointmaze

            report = build_pointmaze(
                rest,
                size=DEFAULT_SIZE if args.size is None else args.size,
                seed=args.seed,
                dataset_id_override=args.out,
                noise=args.noise,
                chunk=args.chunk,
                ref_episodes=args.ref_episodes,
                overwrite=args.overwrite,
                progress=not args.no_progress,
            )
        else:
            if args.chunk is not None:
                raise UserError("--chunk is for pointmaze datasets")
            from dql.builders.locomotion import build_locomotion

            report = build_locomotion(
                env,
                rest,
                size=DEFAULT_SIZE if args.size is None else args.size,
                seed=args.seed,
                dataset_id_override=args.out,
                policy_dir=args.policy_dir,
                train_steps=args.train_steps,
                ref_episodes=args.ref_episodes,
                max_episode_steps=args.max_episode_steps,
                overwrite=args.overwrite,
                progress=not args.no_progress,
            )
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
