"""Locomotion datasets (Gymnasium MuJoCo v5) built the D4RL way from SB3 SAC behaviour policies."""

from __future__ import annotations

import json
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch


def _evaluate_sb3(model, env_id: str, episodes: int, seed: int) -> tuple[float, float]:
    """Mean and std return of the stochastic SAC policy over `episodes` seeded episodes."""
    env = gym.make(env_id)
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        done, ret = False, 0.0
        while not done:
            action, _ = model.predict(obs, deterministic=False)
            obs, reward, terminated, truncated, _ = env.step(action)
            ret += float(reward)
            done = terminated or truncated
        returns.append(ret)
    env.close()
    return float(np.mean(returns)), float(np.std(returns))


def train_sac(
    env_id: str,
    out_dir: Path,
    total_steps: int,
    checkpoint_every: int = 10_000,
    eval_episodes: int = 10,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Train SB3 SAC (default hyperparameters) on `env_id`; resumable from `out_dir`.

    Every `checkpoint_every` steps it writes the actor weights (`actor_<step>.pt`), a line in
    `log.jsonl` with the stochastic policy's mean evaluation return, the full model
    (`latest.zip`) and the replay buffer (`replay_buffer.pkl`), so a rerun continues.
    """
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback

    out_dir.mkdir(parents=True, exist_ok=True)
    env = gym.make(env_id)
    latest, buffer_path = out_dir / "latest.zip", out_dir / "replay_buffer.pkl"
    if latest.exists() and buffer_path.exists():
        model = SAC.load(latest, env=env, device="cpu")
        model.load_replay_buffer(buffer_path)
        print(f"resuming {env_id} SAC from step {model.num_timesteps}", flush=True)
    else:
        model = SAC(
            "MlpPolicy",
            env,
            buffer_size=max(total_steps, 1),  # never full, so the buffer is the whole history
            seed=seed,
            device="cpu",
            verbose=0,
        )
    remaining = total_steps - model.num_timesteps
    if remaining <= 0:
        return out_dir

    class Checkpoint(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.t0 = time.time()

        def _on_step(self) -> bool:
            step = self.model.num_timesteps
            if step % checkpoint_every:
                return True
            torch.save(self.model.actor.state_dict(), out_dir / f"actor_{step}.pt")
            mean, std = _evaluate_sb3(self.model, env_id, eval_episodes, seed=10_000)
            self.model.save(out_dir / "latest.tmp.zip")
            self.model.save_replay_buffer(out_dir / "replay_buffer.tmp.pkl")
            (out_dir / "latest.tmp.zip").replace(latest)
            (out_dir / "replay_buffer.tmp.pkl").replace(buffer_path)
            record = {
                "step": step,
                "eval_return_mean": mean,
                "eval_return_std": std,
                "eval_episodes": eval_episodes,
                "wall_s": round(time.time() - self.t0, 1),
                "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
            with open(out_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            print(json.dumps(record), flush=True)
            return True

    model.learn(
        remaining,
        callback=Checkpoint(),
        reset_num_timesteps=False,
        progress_bar=progress,
    )
    return out_dir
