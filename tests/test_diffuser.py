"""Diffuser and the MPC baseline: inpainted states hold exactly, value guidance raises the
predicted value, plans lead around the U-maze wall where a straight-line controller gets stuck,
the CLI trains and evaluates a checkpoint, and MPC through a learned model beats random actions."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import build_minari_dataset

from baselines import diffuser, mpc
from baselines.diffuser import Config, Diffuser, Plan, discounted_returns_to_go, track_waypoint
from dql.buffer import ReplayBuffer
from dql.builders.pointmaze import WaypointController
from dql.data import Transitions, flatten_observation, load_dataset
from dql.errors import ConfigError
from dql.evaluation import evaluate, make_env

MAZE_ID = "test/pointmaze/umaze-v0"
# (start cell, goal cell) at the two ends of the U: the straight line between them crosses the
# inner wall, so reaching the goal needs a plan around it (about 80-120 steps).
AROUND_THE_WALL = [
    ((1, 1), (3, 1)),
    ((3, 1), (1, 1)),
    ((1, 2), (3, 2)),
    ((3, 2), (1, 2)),
    ((1, 1), (3, 3)),
    ((3, 3), (1, 1)),
    ((1, 3), (3, 1)),
    ((3, 1), (1, 3)),
]
# Small enough for one CPU core; horizon 128 covers the longest path of the U at full speed.
PLANNER = dict(
    horizon=128,
    diffusion_steps=20,
    base_channels=8,
    channel_multipliers=(1, 2, 4),
    batch_size=16,
    learning_rate=1e-3,
    trajectory_normalizer="limits",
    clip_denoised=True,
    action_weight=1.0,
    ema_every=1,
    ema_start=0,
    goal_size=2,
    num_plans=1,
    guidance_scale=0.0,
    replan_interval=0,
    waypoint_tracking=True,
    # D4RL's PD rule, not the published one (the default): a planner trained this briefly plans
    # velocities far below its positions' rate of change (~5x vs 100x per-step displacement in
    # the data), and the published rule follows the planned velocities. Measured on this test:
    # 12% of goals (31% after 4000 steps) against 81% (78%) with the PD rule.
    waypoint_controller="pd",
    device="cpu",
)
TRAIN_STEPS = 800


def wandering_policy():
    """D4RL maze2d-style behaviour: BFS waypoints + PD + noise 0.5 towards a random cell,
    a new random cell on arrival (the env's own goal is ignored)."""
    env = gym.make("PointMaze_UMaze-v3")
    controller = WaypointController.from_env(env, noise=0.5)
    env.close()
    free = np.argwhere(controller.free)
    target = {}

    def policy(obs, rng, episode):
        pos = obs["observation"][:2]
        if target.get("episode") != episode or np.linalg.norm(pos - target["xy"]) < 0.5:
            cell = tuple(free[rng.integers(len(free))])
            target.update(episode=episode, xy=controller.cell_center(cell))
        noisy = dict(obs, desired_goal=target["xy"])
        return controller(noisy, rng)

    return policy


@pytest.fixture(scope="module")
def maze_store(tmp_path_factory: pytest.TempPathFactory):
    """20k steps of wandering in PointMaze_UMaze-v3 (300-step episodes): (store, data)."""
    import gymnasium_robotics

    gym.register_envs(gymnasium_robotics)
    root = tmp_path_factory.mktemp("maze_minari")
    mp = pytest.MonkeyPatch()
    mp.setenv("MINARI_DATASETS_PATH", str(root))
    try:
        build_minari_dataset(
            MAZE_ID,
            "PointMaze_UMaze-v3",
            wandering_policy(),
            20_000,
            ref_min_score=0.0,
            ref_max_score=250.0,
        )
        return str(root), load_dataset(MAZE_ID)
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def planner(maze_store) -> tuple[Diffuser, Transitions]:
    """A small Diffuser trained for TRAIN_STEPS steps on the maze. The value model learns the
    discounted sum of x positions (a reward it can read off the states; the env's sparse reward
    depends on a goal the trajectory does not contain)."""
    _, data = maze_store
    torch.manual_seed(0)
    config = Config(dataset=MAZE_ID, discount=0.9, **PLANNER)
    config.validate()
    agent = Diffuser(data.info.observation_dim, data.info.action_dim, 1.0, config)
    buffer = ReplayBuffer(data, seed=0, rewards=data.observations[:, 0].copy())
    agent.setup(buffer)
    for _ in range(TRAIN_STEPS):
        agent.update(agent.sample_batch(buffer, config.batch_size))
    return agent, data


class FixedCells(gym.Wrapper):
    """Episode with reset seed k starts in AROUND_THE_WALL[k][0] with the goal in [k][1]."""

    def reset(self, *, seed=None, options=None):
        start, goal = AROUND_THE_WALL[seed % len(AROUND_THE_WALL)]
        cells = {"reset_cell": np.array(start), "goal_cell": np.array(goal)}
        return self.env.reset(seed=seed, options=cells)


def initial_observations(data: Transitions, count: int) -> np.ndarray:
    env = FixedCells(make_env(data.info))
    rows = [flatten_observation(env.reset(seed=k)[0]) for k in range(count)]
    env.close()
    return np.stack(rows)


def success_rate(policy, data: Transitions, episodes: int = 32) -> float:
    result = evaluate(
        policy,
        data.info,
        num_episodes=episodes,
        env_fn=lambda: FixedCells(make_env(data.info)),
        progress=False,
    )
    return float(np.mean([end == "goal_reached" for end in result.end_reasons]))


# ----------------------------------------------------------------------------- unit checks


def test_returns_to_go_restart_at_every_episode_end():
    rewards = np.array([1.0, 1.0, 1.0, 2.0, 2.0])
    returns = discounted_returns_to_go(rewards, np.array([3, 5]), 0.5)
    np.testing.assert_allclose(returns, [1.75, 1.5, 1.0, 3.0, 2.0])


def test_config_refuses_a_horizon_the_unet_cannot_halve():
    with pytest.raises(ConfigError, match="multiple of 4"):
        Config(horizon=30, channel_multipliers=(1, 2, 4)).validate()
    with pytest.raises(ConfigError, match="goal-size"):
        Config(conditioning="goal").validate()


def test_value_discount_is_the_published_plan_configs():
    from dql.cli import parse_config

    assert Config().discount == 0.997
    assert (
        parse_config(Config, "diffuser", ["--dataset", "mujoco/hopper/medium-v0"]).discount == 0.997
    )


def test_waypoint_rules_on_a_hand_made_waypoint():
    position, velocity = np.array([[0.0, 0.0]]), np.array([[0.1, 0.0]])
    waypoint_position, waypoint_velocity = np.array([[0.5, 0.2]]), np.array([[0.3, -0.1]])
    waypoint = (position, velocity, waypoint_position, waypoint_velocity)
    # published maze2d rule: (pos_w - pos) + (vel_w - vel)
    np.testing.assert_allclose(track_waypoint(*waypoint, "diffuser"), [[0.7, 0.1]])
    # D4RL's collection rule: 10 (pos_w - pos) - vel
    np.testing.assert_allclose(track_waypoint(*waypoint, "pd", kp=10.0, kd=1.0), [[4.9, 2.0]])


@pytest.mark.parametrize("controller", ["diffuser", "pd"])
def test_act_steers_toward_the_next_planned_state_and_stops_past_the_plan(controller):
    """A hand-made plan of 4 states [x, y, vx, vy]: step t steers toward state t + 1 and, past
    the plan's end, toward its last position at zero velocity (published rule)."""
    config = Config(
        horizon=4, diffusion_steps=2, base_channels=4, channel_multipliers=(1, 2), goal_size=2,
        train_value=False, num_plans=1, replan_interval=0, waypoint_tracking=True,
        waypoint_controller=controller, waypoint_kp=2.0, waypoint_kd=0.5, device="cpu",
    )  # fmt: skip
    agent = Diffuser(8, 2, 1.0, config)  # observation [x, y, vx, vy, achieved (2), goal (2)]
    states = torch.tensor(
        [[[0.0, 0.0, 0.0, 0.0], [0.1, 0.0, 0.2, 0.0], [0.2, 0.1, 0.1, 0.2], [0.3, 0.2, 0.0, 0.1]]]
    )
    agent.plan = lambda observations: Plan(states.clone(), torch.zeros(1, 4, 2), None)
    observation = np.array([[0.05, -0.05, 0.1, 0.05, 0.05, -0.05, 0.3, 0.2]], np.float32)
    position, velocity = observation[:, :2], observation[:, 2:4]
    for t in range(6):  # the same observation each step: no reset, no replan
        k = min(t + 1, 3)
        target_velocity = states[:, k, 2:].numpy() if t < 3 else np.zeros((1, 2))
        waypoint = states[:, k, :2].numpy()
        expected = track_waypoint(position, velocity, waypoint, target_velocity, controller, 2, 0.5)
        assert np.abs(expected).max() < 1.0  # unclipped: the rule itself is compared
        np.testing.assert_allclose(agent.act(observation), expected, atol=1e-6, err_msg=f"t={t}")


# ----------------------------------------------------------------------------- planning


@pytest.mark.slow
def test_inpainted_states_equal_their_conditions_exactly(planner):
    agent, data = planner
    observations = initial_observations(data, 4)
    known = agent.known_mask(agent.config.horizon, "goal")
    values = torch.randn(4, agent.config.horizon, agent.transition_dim)
    samples = agent.diffusion.sample(agent.ema_denoiser, known, values)
    assert torch.equal(samples[:, known], values[:, known])
    assert not torch.equal(samples[:, ~known], values[:, ~known])

    plan = agent.plan(observations, num_plans=3)
    states = torch.as_tensor(observations[:, : agent.state_dim])
    assert torch.equal(plan.states[:, 0], states)  # s_0 = the current state, in env units
    assert torch.equal(plan.states[:, -1, :2], torch.as_tensor(observations[:, -2:]))  # goal
    start_only = agent.plan(observations, conditioning="start")
    assert torch.equal(start_only.states[:, 0], states)
    assert not torch.allclose(start_only.states[:, -1, :2], plan.states[:, -1, :2], atol=1e-2)


@pytest.mark.slow
def test_value_guidance_raises_the_predicted_value_from_the_same_noise(planner):
    agent, data = planner
    observations = np.repeat(initial_observations(data, 4), 4, axis=0)
    generator = torch.Generator()
    plans = {}
    for scale in (0.0, 1.0):
        generator.manual_seed(0)
        plans[scale] = agent.plan(
            observations, num_plans=1, guidance_scale=scale, generator=generator
        )
    unguided, guided = plans[0.0].values, plans[1.0].values
    assert guided.mean() > unguided.mean() + 0.1 * unguided.std()
    assert (guided > unguided).float().mean() >= 0.75
    # the value model rewards x positions: guided plans head right in their first steps
    early_x = {scale: plan.states[:, 1:10, 0].mean() for scale, plan in plans.items()}
    assert early_x[1.0] > early_x[0.0]


@pytest.mark.slow
def test_plans_lead_around_the_wall_to_the_goal(planner):
    agent, data = planner
    straight_line = lambda obs: np.clip(10 * (obs[:, 6:8] - obs[:, :2]) - obs[:, 2:4], -1, 1)  # noqa: E731
    baseline = success_rate(straight_line, data)
    torch.manual_seed(0)
    agent.reset()
    reached = success_rate(agent.act, data)
    # measured with three training seeds: 81%, 84%, 88% (straight line: 28%)
    assert baseline <= 0.5, "the start/goal pairs should defeat a straight-line controller"
    assert reached >= max(0.65, baseline + 0.3), (
        f"Diffuser reached {reached:.0%} of goals (straight line {baseline:.0%})"
    )


def test_receding_horizon_runs_the_plan_open_loop_between_replans(pendulum_store):
    data = load_dataset(pendulum_store)
    small = dict(horizon=8, diffusion_steps=4, base_channels=8, channel_multipliers=(1, 2))
    config = Config(dataset=pendulum_store, num_plans=4, replan_interval=2, device="cpu", **small)
    agent = Diffuser(data.info.observation_dim, data.info.action_dim, 3.0, config)
    agent.setup(ReplayBuffer(data, seed=0))
    observations = data.observations[:3]
    torch.manual_seed(0)
    plan = agent.plan(observations)
    torch.manual_seed(0)
    np.testing.assert_array_equal(agent.act(observations), plan.actions[:, 0].numpy())
    np.testing.assert_array_equal(agent.act(observations), plan.actions[:, 1].numpy())
    torch.manual_seed(1)  # the interval is over: a new plan from the current states
    replanned = agent.plan(observations)
    torch.manual_seed(1)
    np.testing.assert_array_equal(agent.act(observations), replanned.actions[:, 0].numpy())
    assert not torch.equal(replanned.actions[:, 0], plan.actions[:, 2])


# ----------------------------------------------------------------------------- CLI


def test_cli_trains_writes_result_and_evaluates_a_checkpoint(maze_store, tmp_path, monkeypatch):
    root, _ = maze_store
    monkeypatch.setenv("MINARI_DATASETS_PATH", root)
    run = tmp_path / "run"
    tiny = ["--horizon", "16", "--base-channels", "8", "--channel-multipliers", "1", "2"]
    tiny += ["--diffusion-steps", "4", "--batch-size", "4", "--device", "cpu", "--no-progress"]
    args = ["--dataset", MAZE_ID, "--steps", "4", "--eval-interval", "4", "--log-interval", "2"]
    args += ["--checkpoint-interval", "4", "--eval-episodes", "2", "--run-dir", str(run)]
    assert diffuser.main(args + tiny) == 0
    result = json.loads((run / "result.json").read_text())
    assert result["algorithm"] == "diffuser" and result["steps"] == 4
    saved = json.loads((run / "config.json").read_text())["config"]
    assert saved["goal_size"] == 2 and saved["waypoint_tracking"]  # the pointmaze-umaze table

    # planning flags change at test time; the architecture comes from the run's config.json
    checkpoint = run / "checkpoints" / "last.pt"
    evaluation = ["--dataset", MAZE_ID, "--eval-only", "--checkpoint", str(checkpoint)]
    evaluation += ["--plan-horizon", "32", "--num-plans", "2", "--eval-episodes", "2"]
    assert diffuser.main(evaluation + ["--device", "cpu", "--no-progress"]) == 0
    report = json.loads((run / "checkpoints" / "last.eval.json").read_text())
    assert report["planning"]["plan_horizon"] == 32 and report["planning"]["num_plans"] == 2
    assert len(report["episodes"]) == 2 and report["updates"] == 4

    assert diffuser.main(["--dataset", MAZE_ID, "--eval-only"]) == 2  # no checkpoint: one line


# ----------------------------------------------------------------------------- MPC baseline


def test_mpc_through_a_learned_model_beats_random_actions(pendulum_store, tmp_path):
    config = mpc.Config(
        dataset=pendulum_store,
        steps=1500,
        batch_size=128,
        eval_interval=1500,
        log_interval=500,
        checkpoint_interval=1500,
        eval_episodes=3,
        ensemble_size=3,
        hidden=(64, 64),
        plan_horizon=10,
        population=100,
        elites=10,
        iterations=3,
        device="cpu",
        run_dir=str(tmp_path / "mpc"),
        progress=False,
    )
    torch.manual_seed(0)
    result = mpc.train(config)
    # ref_min_score is a random policy's return: random actions score about 0
    assert result["final_score"] > 40, result
