"""PointMaze datasets (Gymnasium-Robotics v3) built the D4RL maze2d way: planner + PD + noise.

No learning is involved. A breadth-first search over the maze grid gives, for the current goal,
the shortest cell path; the waypoint is the farthest point along that path (cell centres, then
the goal itself) that the ball can reach in a straight line without touching a wall; a PD rule
tracks it:
    a = clip(kp (w - p) - kd v + sigma eps),   kp = 10, kd = 1, eps ~ N(0, I), sigma = 0.5
The task is continuing: the env resamples the goal when the ball reaches it, and the one long
trajectory is cut into fixed-length chunks (the env's time limit), each stored as an episode
that ends in a truncation; there are no terminals. Reference scores come from the fixed-goal
evaluation env (the registered env, default kwargs): ref_max is the noise-free controller,
ref_min uniformly random actions.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from dql import __version__
from dql.builders.common import (
    REF_SEED,
    BuildReport,
    check_positive,
    mean_return,
    prepare_dataset_dir,
    uniform_policy,
    write_dataset,
)
from dql.errors import UserError

REQUIREMENTS = ["gymnasium-robotics>=1.2", "mujoco>=3.3,<3.12"]


@dataclass(frozen=True)
class MazeRecipe:
    """One PointMaze dataset family (mirrored in experiments/datasets/recipes.toml)."""

    env_id: str  # sparse-reward id; the dense one inserts "Dense" before "-v3"
    chunk: int  # steps per stored episode (the env's time limit)


MAZES: dict[str, MazeRecipe] = {
    "umaze": MazeRecipe("PointMaze_UMaze-v3", chunk=300),
    "medium": MazeRecipe("PointMaze_Medium-v3", chunk=600),
    "large": MazeRecipe("PointMaze_Large-v3", chunk=800),
}
MAZE_NAMES = tuple(f"{m}{d}" for m in MAZES for d in ("", "-dense"))


def register_envs() -> None:
    import gymnasium_robotics

    gym.register_envs(gymnasium_robotics)


def maze_env_id(maze: str) -> str:
    """Registered env id for a maze name such as "umaze" or "large-dense"."""
    base, dense = maze.removesuffix("-dense"), maze.endswith("-dense")
    if base not in MAZES:
        raise UserError(f"unknown maze {maze!r}; valid: {', '.join(MAZE_NAMES)}")
    env_id = MAZES[base].env_id
    return env_id.replace("-v3", "Dense-v3") if dense else env_id


class WaypointController:
    """Grid planner + PD tracking for a point mass in a Gymnasium-Robotics maze.

    `waypoint(pos, goal)` gives the point to steer to, `pd_action(pos, vel, target)` the
    clipped PD action towards any target (a Diffuser planner reuses it to track its plan), and
    `__call__(obs, rng)` both, with Gaussian action noise when `rng` is given.
    """

    def __init__(
        self,
        maze_map: Sequence[Sequence[Any]],
        scaling: float = 1.0,
        *,
        kp: float = 10.0,
        kd: float = 1.0,
        noise: float = 0.0,
        action_low: float | np.ndarray = -1.0,
        action_high: float | np.ndarray = 1.0,
        margin: float = 0.2,
    ) -> None:
        self.free = np.array([[cell != 1 for cell in row] for row in maze_map], dtype=bool)
        self.rows, self.cols = self.free.shape
        self.scaling = float(scaling)
        self.x_center = self.cols / 2 * self.scaling  # as gymnasium_robotics' Maze
        self.y_center = self.rows / 2 * self.scaling
        self.kp, self.kd, self.noise = kp, kd, noise
        self.low, self.high = action_low, action_high
        self.margin = margin * self.scaling  # clearance kept from walls on straight segments
        self._distance_cache: dict[tuple[int, int], np.ndarray] = {}

    @classmethod
    def from_env(cls, env: gym.Env, **kwargs: Any) -> WaypointController:
        maze = env.unwrapped.maze
        space = env.action_space
        return cls(
            maze.maze_map,
            maze.maze_size_scaling,
            action_low=space.low,
            action_high=space.high,
            **kwargs,
        )

    # grid geometry (same conventions as gymnasium_robotics.envs.maze.maze_v4.Maze)
    def cell(self, xy: np.ndarray) -> tuple[int, int]:
        i = int(np.floor((self.y_center - xy[1]) / self.scaling))
        j = int(np.floor((xy[0] + self.x_center) / self.scaling))
        return min(max(i, 0), self.rows - 1), min(max(j, 0), self.cols - 1)

    def cell_center(self, cell: tuple[int, int]) -> np.ndarray:
        return np.array(
            [
                (cell[1] + 0.5) * self.scaling - self.x_center,
                self.y_center - (cell[0] + 0.5) * self.scaling,
            ]
        )

    def distances(self, goal_cell: tuple[int, int]) -> np.ndarray:
        """BFS steps from every cell to `goal_cell` (inf for walls and unreachable cells)."""
        if goal_cell not in self._distance_cache:
            dist = np.full(self.free.shape, np.inf)
            dist[goal_cell] = 0
            queue = deque([goal_cell])
            while queue:
                i, j = queue.popleft()
                for ni, nj in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)):
                    if 0 <= ni < self.rows and 0 <= nj < self.cols and self.free[ni, nj]:
                        if dist[ni, nj] == np.inf:
                            dist[ni, nj] = dist[i, j] + 1
                            queue.append((ni, nj))
            self._distance_cache[goal_cell] = dist
        return self._distance_cache[goal_cell]

    def path(self, start: tuple[int, int], goal_cell: tuple[int, int]) -> list[tuple[int, int]]:
        """Shortest cell path from `start` to `goal_cell`, both included."""
        dist = self.distances(goal_cell)
        cells = [start]
        while cells[-1] != goal_cell and len(cells) <= self.free.size:
            i, j = cells[-1]
            neighbours = [(i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)]
            neighbours = [c for c in neighbours if 0 <= c[0] < self.rows and 0 <= c[1] < self.cols]
            best = min(neighbours, key=lambda c: dist[c])
            if dist[best] >= dist[i, j]:  # start is walled in: no path
                break
            cells.append(best)
        return cells

    def _clear(self, start: np.ndarray, end: np.ndarray) -> bool:
        """Whether the ball, with `margin` clearance, can go straight from start to end."""
        n = max(2, int(np.linalg.norm(end - start) / (0.1 * self.scaling)) + 1)
        points = start + np.linspace(0.0, 1.0, n)[:, None] * (end - start)  # [n, 2]
        offsets = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1], [0, 0]]) * self.margin
        probes = (points[:, None, :] + offsets[None]).reshape(-1, 2)
        i = np.floor((self.y_center - probes[:, 1]) / self.scaling).astype(int)
        j = np.floor((probes[:, 0] + self.x_center) / self.scaling).astype(int)
        inside = (i >= 0) & (i < self.rows) & (j >= 0) & (j < self.cols)
        return bool(inside.all() and self.free[i, j].all())

    def waypoint(self, pos: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """The farthest point along the BFS path (cell centres, then the goal) in straight sight."""
        cells = self.path(self.cell(pos), self.cell(goal))
        targets = [self.cell_center(c) for c in cells[1:-1]] + [np.asarray(goal, dtype=float)]
        best = targets[0]
        for target in targets[:4]:  # a few cells of look-ahead are enough and keep it cheap
            if not self._clear(pos, target):
                break
            best = target
        return best

    def pd_action(self, pos: np.ndarray, vel: np.ndarray, target: np.ndarray) -> np.ndarray:
        """a = clip(kp (target - pos) - kd vel)."""
        return np.clip(self.kp * (target - pos) - self.kd * vel, self.low, self.high)

    def __call__(self, obs: dict[str, np.ndarray], rng: np.random.Generator | None) -> np.ndarray:
        state = obs["observation"]  # [x, y, vx, vy]
        pos, vel = state[:2], state[2:4]
        action = self.pd_action(pos, vel, self.waypoint(pos, obs["desired_goal"]))
        if rng is not None and self.noise > 0:
            action = np.clip(
                action + self.noise * rng.standard_normal(action.shape), self.low, self.high
            )
        return action


def success_rate(
    env_id: str, controller: WaypointController, episodes: int, seed: int = 0
) -> float:
    """Fraction of fixed-goal episodes (continuing_task=False) the noise-free controller ends at
    the goal."""
    register_envs()
    env = gym.make(env_id, continuing_task=False)
    successes = 0
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        while True:
            obs, _, terminated, truncated, info = env.step(controller(obs, None))
            if terminated or truncated:
                successes += bool(info.get("success", terminated))
                break
    env.close()
    return successes / episodes


def dataset_id(maze: str) -> str:
    return f"local/pointmaze/{maze}-v0"


def build_pointmaze(
    maze: str,
    *,
    size: int = 1_000_000,
    seed: int = 0,
    dataset_id_override: str | None = None,
    noise: float = 0.5,
    chunk: int | None = None,
    ref_episodes: int = 100,
    overwrite: bool = False,
    progress: bool = True,
) -> BuildReport:
    """Build `local/pointmaze/<maze>-v0`: one noisy continuing trajectory cut into chunks."""
    from minari.data_collector import EpisodeBuffer
    from tqdm import tqdm

    register_envs()
    env_id = maze_env_id(maze)
    chunk = chunk or MAZES[maze.removesuffix("-dense")].chunk
    check_positive("--size", size)
    check_positive("--chunk", chunk)
    check_positive("--ref-episodes", ref_episodes)
    if noise < 0:
        raise UserError(f"--noise must be >= 0, got {noise}")
    started = time.time()
    name = dataset_id_override or dataset_id(maze)
    prepare_dataset_dir(name, overwrite)

    collect_kwargs = {"continuing_task": True, "reset_target": True}
    data_spec = gym.make(env_id, max_episode_steps=chunk, **collect_kwargs).spec
    env = gym.make(env_id, max_episode_steps=size + 1, **collect_kwargs)  # we cut the chunks
    controller = WaypointController.from_env(env, noise=noise)
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    episodes, total = [], 0
    with tqdm(total=size, desc=f"pointmaze {maze}", unit="step", disable=not progress) as bar:
        while total < size:
            steps = min(chunk, size - total)
            observations = {k: np.empty((steps + 1, *v.shape)) for k, v in obs.items()}
            actions = np.empty((steps, *env.action_space.shape), dtype=env.action_space.dtype)
            rewards = np.empty(steps)
            for t in range(steps):
                for k, v in obs.items():
                    observations[k][t] = v
                actions[t] = controller(obs, rng)
                obs, rewards[t], terminated, truncated, _ = env.step(actions[t])
                assert not (terminated or truncated), "the continuing maze task never ends"
            for k, v in obs.items():
                observations[k][steps] = v
            truncations = np.zeros(steps, dtype=bool)
            truncations[-1] = True  # chunk boundary; the trajectory continues in the next one
            episodes.append(
                EpisodeBuffer(
                    seed=seed if total == 0 else None,
                    observations=observations,
                    actions=actions,
                    rewards=rewards,
                    terminations=np.zeros(steps, dtype=bool),
                    truncations=truncations,
                )
            )
            total += steps
            bar.update(steps)
    env.close()

    eval_spec = gym.spec(env_id)
    eval_env = gym.make(eval_spec)
    expert = WaypointController.from_env(eval_env)
    ref_max = mean_return(eval_spec, expert, ref_episodes, stochastic=False)
    ref_min = mean_return(eval_spec, uniform_policy(eval_env.action_space), ref_episodes)
    eval_env.close()
    description = (
        f"{env_id} (continuing_task=True, reset_target=True), built locally by dql "
        f"{__version__} (dql data build pointmaze-{maze} --size {size} --seed {seed}). "
        f"One continuing trajectory of {size:,} steps from a BFS waypoint planner with PD "
        f"tracking a = clip({controller.kp:g} (w - p) - {controller.kd:g} v) plus Gaussian "
        f"action noise {noise:g}; the goal is resampled on success. Cut into {chunk}-step "
        f"episodes that end in truncations (each episode starts where the previous one ended); "
        f"no terminals. Reference scores over {ref_episodes} episodes (reset seeds {REF_SEED} + "
        f"i) in {env_id} with default kwargs (fixed goal): ref_max the noise-free controller, "
        f"ref_min uniform random actions."
    )
    return write_dataset(
        name,
        episodes,
        env=data_spec,
        eval_env=eval_spec,
        algorithm_name="BFS waypoints + PD controller with Gaussian action noise (D4RL maze2d)",
        description=description,
        ref_min_score=ref_min,
        ref_max_score=ref_max,
        ref_episodes=ref_episodes,
        requirements=REQUIREMENTS,
        started=started,
    )
