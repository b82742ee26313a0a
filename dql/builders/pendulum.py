"""Small InvertedPendulum-v5 datasets from a linear balancing controller, built in seconds: the
data of the tests, of `make demo` and of the d3rlpy crosscheck (one recipe each, here, so that
they never drift apart).

    flip       each step takes the balancing action K s or its negation -K s, with probability
               1/2 each, plus N(0, 0.3^2) noise; episodes start from random cart positions and
               pole angles. The data's mean action is ~0, so MSE behaviour cloning cannot
               balance; the good half is identifiable only by its value (offline RL can).
    noisy      K s + sigma N(0, 1), sigma cycling over (0, 1.5, 3, 6) from episode to episode:
               mixed quality across episodes.
    stretches  K s, interrupted with probability 0.4 per step by 1-4 steps of -0.5 K s: mixed
               quality within episodes.

Reward is 1 per step while the pole stands, so ref_max_score is the time limit; ref_min_score
is uniformly random actions' mean return over --ref-episodes episodes (reset seeds REF_SEED + i).
Actions are clipped to the action box [-3, 3]; episode i is reset with seed + i and draws its
noise from its own generator.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from dql import __version__
from dql.builders.common import (
    ActFn,
    BuildReport,
    check_positive,
    collect_episodes,
    mean_return,
    prepare_dataset_dir,
    uniform_policy,
    write_dataset,
)

ENV_ID = "InvertedPendulum-v5"
GAINS = np.array([1.0, 20.0, 2.0, 3.0])  # a linear controller K s that balances the pole
MAX_FORCE = 3.0  # the action box is [-3, 3]
NOISE_LEVELS = (0.0, 1.5, 3.0, 6.0)
ACTION_BOX = gym.spaces.Box(-MAX_FORCE, MAX_FORCE, (1,), np.float32)
REQUIREMENTS = ["gymnasium[mujoco]>=1.0", "mujoco>=3.3,<3.12"]


def flip_act(obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    sign = 1.0 if rng.random() < 0.5 else -1.0
    return np.clip([sign * GAINS @ obs + 0.3 * rng.normal()], -MAX_FORCE, MAX_FORCE)


def random_start(env: gym.Env, rng: np.random.Generator) -> np.ndarray:
    """Cart anywhere on the rail, pole within 0.1 rad, small velocities: the data covers the
    states a balancing policy visits, not only those just after a reset."""
    qpos = np.array([rng.uniform(-0.7, 0.7), rng.uniform(-0.1, 0.1)])
    env.unwrapped.set_state(qpos, rng.normal(0.0, 0.2, 2))
    return env.unwrapped._get_obs()


def noisy_policy(episode: int) -> ActFn:
    sigma = NOISE_LEVELS[episode % len(NOISE_LEVELS)]
    return lambda obs, rng: np.clip([GAINS @ obs + sigma * rng.normal()], -MAX_FORCE, MAX_FORCE)


def stretches_policy(episode: int, probability: float = 0.4, longest: int = 4) -> ActFn:
    left = 0  # steps of the current destabilising stretch still to go

    def act(obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        nonlocal left
        if left == 0 and rng.random() < probability:
            left = int(rng.integers(1, longest + 1))
        gain = 1.0
        if left > 0:
            left, gain = left - 1, -0.5
        return np.clip([gain * GAINS @ obs], -MAX_FORCE, MAX_FORCE)

    return act


@dataclass(frozen=True)
class Behaviour:
    description: str
    time_limit: int
    size: int  # default transitions
    act: ActFn | None = None
    episode_policy: Callable[[int], ActFn] | None = None
    start: Callable[[gym.Env, np.random.Generator], np.ndarray] | None = None


BEHAVIOURS: dict[str, Behaviour] = {
    "flip": Behaviour(
        "each step the balancing action K s or -K s (probability 1/2 each) + N(0, 0.3^2), "
        "episodes from random cart positions and pole angles",
        time_limit=200,
        size=10_000,
        act=flip_act,
        start=random_start,
    ),
    "noisy": Behaviour(
        f"K s + sigma N(0, 1), sigma cycling over {NOISE_LEVELS} from episode to episode",
        time_limit=200,
        size=20_000,
        episode_policy=noisy_policy,
    ),
    "stretches": Behaviour(
        "K s interrupted with probability 0.4 per step by 1-4 steps of -0.5 K s",
        time_limit=100,
        size=10_000,
        episode_policy=stretches_policy,
    ),
}


def dataset_id(behaviour: str) -> str:
    return f"local/pendulum/{behaviour}-v0"


def build_pendulum(
    behaviour: str,
    *,
    size: int | None = None,
    seed: int = 0,
    dataset_id_override: str | None = None,
    max_episode_steps: int | None = None,
    ref_episodes: int = 100,
    overwrite: bool = False,
    progress: bool = True,
) -> BuildReport:
    """Build `local/pendulum/<behaviour>-v0` (see the module docstring for the behaviours)."""
    recipe = BEHAVIOURS[behaviour]
    size = check_positive("--size", recipe.size if size is None else size)
    time_limit = recipe.time_limit if max_episode_steps is None else max_episode_steps
    check_positive("--max-episode-steps", time_limit)
    check_positive("--ref-episodes", ref_episodes)
    started = time.time()
    name = dataset_id_override or dataset_id(behaviour)
    prepare_dataset_dir(name, overwrite)
    episodes = collect_episodes(
        ENV_ID,
        recipe.act,
        size,
        seed,
        time_limit,
        progress,
        f"pendulum {behaviour}",
        episode_policy=recipe.episode_policy,
        start=recipe.start,
    )
    spec = gym.make(ENV_ID, max_episode_steps=time_limit).spec
    ref_min = mean_return(spec, uniform_policy(ACTION_BOX), ref_episodes)
    description = (
        f"{ENV_ID} (time limit {time_limit}), built locally by dql {__version__} (dql data build "
        f"pendulum-{behaviour} --size {size} --seed {seed}): {recipe.description}, actions "
        f"clipped to [-3, 3]. ref_max_score: the time limit (reward 1 per step); ref_min_score: "
        f"uniformly random actions over {ref_episodes} episodes."
    )
    return write_dataset(
        name,
        episodes,
        env=spec,
        eval_env=spec,
        algorithm_name=f"linear controller, {behaviour} (dql.builders.pendulum)",
        description=description,
        ref_min_score=ref_min,
        ref_max_score=float(time_limit),
        ref_episodes=ref_episodes,
        requirements=REQUIREMENTS,
        started=started,
    )
