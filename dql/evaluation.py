"""Evaluation harness shared by every algorithm.

N episodes run in parallel in a Gymnasium vector env with one batched policy call per step, fixed
reset seeds (seed, seed+1, ...), the dataset's observation flattening and normalisation, and
per-episode records (return, length, why it ended) turned into normalized scores.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

from dql.data import DatasetInfo, ObservationNormalizer, flatten_observation, normalized_score
from dql.errors import NonFiniteActionError, UserError

Policy = Callable[[np.ndarray], np.ndarray]  # (B, obs_dim) normalised observations -> (B, act_dim)


ROBOTICS_ENV_MARKERS = ("Maze", "Adroit", "Kitchen", "Fetch", "Hand")


def _register_optional_envs(name: str) -> None:
    """PointMaze, AntMaze, Adroit and Kitchen live in gymnasium-robotics (imported only then)."""
    if not any(marker in name for marker in ROBOTICS_ENV_MARKERS):
        return
    try:
        import gymnasium_robotics

        gym.register_envs(gymnasium_robotics)
    except ImportError:
        pass


def make_env(info: DatasetInfo, env_id: str | None = None, **kwargs: Any) -> gym.Env:
    """The evaluation env of a dataset: `env_id` if given, else the dataset's eval env spec,
    else its data-collection env spec, else the env id known for it."""
    spec_json = info.eval_env_spec_json or info.env_spec_json
    _register_optional_envs(f"{env_id} {spec_json} {info.env_id}")
    try:
        if env_id is not None:
            env = gym.make(env_id, **kwargs)
        elif spec_json:
            spec = gym.envs.registration.EnvSpec.from_json(spec_json)
            env = gym.make(spec, **kwargs)
        elif info.env_id:
            env = gym.make(info.env_id, **kwargs)
        else:
            raise UserError(
                f"dataset {info.dataset_id!r} names no environment; pass --env-id to evaluate"
            )
    except UserError:
        raise
    except Exception as exc:
        name = env_id or info.env_id or "the dataset's env"
        raise UserError(f"cannot create evaluation env {name}: {exc}") from None
    check_env_matches(env, info)
    return env


def flat_size(space: gym.Space) -> int:
    if isinstance(space, gym.spaces.Dict):
        return sum(flat_size(s) for s in space.spaces.values())
    return int(np.prod(space.shape)) if space.shape else 1


def check_env_matches(env: gym.Env, info: DatasetInfo) -> None:
    obs_dim = flat_size(env.observation_space)
    act_dim = flat_size(env.action_space)
    if obs_dim != info.observation_dim or act_dim != info.action_dim:
        env.close()
        raise UserError(
            f"evaluation env {env.spec.id if env.spec else env} has observation size {obs_dim} and "
            f"action size {act_dim}, but dataset {info.dataset_id!r} has "
            f"{info.observation_dim} and {info.action_dim}"
        )


@dataclass
class EvalResult:
    returns: np.ndarray
    lengths: np.ndarray
    end_reasons: list[str]
    seeds: list[int]
    normalized_scores: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mean_return(self) -> float:
        return float(self.returns.mean())

    @property
    def normalized_score(self) -> float | None:
        return None if self.normalized_scores is None else float(self.normalized_scores.mean())

    def episodes(self) -> list[dict[str, Any]]:
        """Per-episode records, JSON-ready."""
        scores = self.normalized_scores
        return [
            {
                "seed": seed,
                "return": float(r),
                "length": int(n),
                "end": reason,
                "normalized_score": None if scores is None else float(scores[i]),
            }
            for i, (seed, r, n, reason) in enumerate(
                zip(self.seeds, self.returns, self.lengths, self.end_reasons)
            )
        ]

    def to_json(self) -> str:
        return json.dumps(
            {"mean_return": self.mean_return, "normalized_score": self.normalized_score}
        )


def _check_finite_actions(
    actions: np.ndarray, lengths: np.ndarray, seeds: list[int], policy_name: str
) -> None:
    bad_rows = np.flatnonzero(~np.isfinite(actions).reshape(len(actions), -1).all(axis=1))
    if bad_rows.size:
        i = int(bad_rows[0])
        value = actions[i].reshape(-1)[~np.isfinite(actions[i].reshape(-1))][0]
        others = f" (and {bad_rows.size - 1} more episodes)" if bad_rows.size > 1 else ""
        raise NonFiniteActionError(
            f"{policy_name} produced a non-finite action ({value}) at step {lengths[i]} of "
            f"episode {i} (reset seed {seeds[i]}){others}; it was not sent to the simulator"
        )


def evaluate(
    policy: Policy,
    info: DatasetInfo,
    *,
    num_episodes: int = 10,
    seed: int = 0,
    normalizer: ObservationNormalizer | None = None,
    ref_scores: tuple[float, float] | None = None,
    env_id: str | None = None,
    env_fn: Callable[[], gym.Env] | None = None,
    max_episode_steps: int | None = None,
    observation_hook: Callable[[np.ndarray], np.ndarray] | None = None,
    action_hook: Callable[[np.ndarray], np.ndarray] | None = None,
    progress: bool = True,
    record_traces: bool = False,
    policy_name: str = "the policy",
) -> EvalResult:
    """Run `num_episodes` episodes at once, one batched `policy` call per step.

    `observation_hook` / `action_hook` transform what the policy sees / does (perturbation
    experiments); both see batches. Episode i is reset with seed `seed + i`.
    `record_traces` keeps, per episode, the env's flat observations (T+1), the clipped actions
    it received (T) and the rewards (T) in `extra["traces"]` (see dql.traces).
    A NaN or infinite action stops the evaluation with NonFiniteActionError (naming the step,
    the episode and `policy_name`) before it reaches the simulator: np.clip keeps NaN.
    """
    if num_episodes < 1:
        raise UserError(f"num_episodes must be >= 1, got {num_episodes}")
    kwargs = {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}
    make_one = env_fn or (lambda: make_env(info, env_id, **kwargs))
    envs = gym.vector.SyncVectorEnv([make_one for _ in range(num_episodes)])
    seeds = [seed + i for i in range(num_episodes)]
    normalize = normalizer if normalizer is not None else (lambda x: x)
    low, high = envs.single_action_space.low, envs.single_action_space.high
    returns = np.zeros(num_episodes)
    lengths = np.zeros(num_episodes, np.int64)
    finished = np.zeros(num_episodes, bool)
    reasons = [""] * num_episodes
    traces: dict[str, list[list[np.ndarray]]] | None = (
        {k: [[] for _ in range(num_episodes)] for k in ("observations", "actions", "rewards")}
        if record_traces
        else None
    )
    try:
        obs, _ = envs.reset(seed=seeds)
        bar = tqdm(desc="eval", unit="step", leave=False, disable=None if progress else True)
        while not finished.all():
            flat = flatten_observation(obs)
            seen = flat  # what the env produced, before any perturbation
            if observation_hook is not None:
                flat = observation_hook(flat)
            actions = np.asarray(policy(normalize(flat)), np.float32)
            if action_hook is not None:
                actions = action_hook(actions)
            _check_finite_actions(actions, lengths, seeds, policy_name)
            sent = np.clip(actions, low, high)
            obs, rewards, terminated, truncated, infos = envs.step(sent)
            active = ~finished
            if traces is not None:
                for i in np.flatnonzero(active):
                    traces["observations"][i].append(np.array(seen[i]))
                    traces["actions"][i].append(np.array(sent[i]))
                    traces["rewards"][i].append(np.float64(rewards[i]))
            returns[active] += rewards[active]
            lengths[active] += 1
            success = np.asarray(infos.get("success", np.zeros(num_episodes, bool)), bool)
            for i in np.flatnonzero(active & (terminated | truncated)):
                reasons[i] = (
                    "goal_reached"
                    if success[i]
                    else ("terminated" if terminated[i] else "time_limit")
                )
                finished[i] = True
                if traces is not None:  # the episode's last observation (autoreset comes next step)
                    traces["observations"][i].append(np.array(flatten_observation(obs)[i]))
            bar.update(1)
        bar.close()
    finally:
        envs.close()
    scores = None if ref_scores is None else normalized_score(returns, *ref_scores)
    result = EvalResult(returns, lengths, reasons, seeds, scores)
    if traces is not None:
        result.extra["traces"] = {k: [np.stack(ep) for ep in v] for k, v in traces.items()}
    return result
