"""`dql data build <name>`: build a D4RL-style dataset into the local Minari store (the flags
are dql.cli.DataBuildArgs; `python -m dql.builders.cli ...` is the same as `dql data ...`).

dql data build hopper-medium --size 20000
dql data build pointmaze-umaze-dense
dql data build pendulum-flip          # seconds; the demo's dataset
dql data list
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from dql.errors import UserError

if TYPE_CHECKING:
    from dql.cli import DataBuildArgs

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


def build_command(args: DataBuildArgs) -> int:
    """`dql data build NAME`: build one dataset into the Minari store, print its summary."""
    env, rest = parse_name(args.name)
    common = dict(
        seed=args.seed,
        dataset_id_override=args.out,
        ref_episodes=args.ref_episodes,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    size = DEFAULT_SIZE if args.size is None else args.size  # pendulum: its behaviour's own
    if args.portable and env in ("pendulum", "pointmaze"):
        raise UserError("--portable is for locomotion datasets (their behaviour is a network)")
    if env == "pendulum":
        if args.train_steps is not None or args.chunk is not None:
            raise UserError("--train-steps and --chunk are not for pendulum datasets")
        from dql.builders.pendulum import build_pendulum

        report = build_pendulum(
            rest, size=args.size, max_episode_steps=args.max_episode_steps, **common
        )
    elif env == "pointmaze":
        if args.max_episode_steps is not None or args.train_steps is not None:
            raise UserError("--max-episode-steps and --train-steps are for locomotion datasets")
        from dql.builders.pointmaze import build_pointmaze

        report = build_pointmaze(rest, size=size, noise=args.noise, chunk=args.chunk, **common)
    else:
        if args.chunk is not None:
            raise UserError("--chunk is for pointmaze datasets")
        from dql.builders.locomotion import build_locomotion

        report = build_locomotion(
            env,
            rest,
            size=size,
            policy_dir=args.policy_dir,
            train_steps=args.train_steps,
            max_episode_steps=args.max_episode_steps,
            portable=args.portable,
            **common,
        )
    print(report.summary())
    return 0


if __name__ == "__main__":
    from dql.cli import main

    sys.exit(main(["data", *sys.argv[1:]]))
