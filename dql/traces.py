"""Evaluation episodes on disk, their replay, failure labels, and videos made from them.

An evaluation with `record_traces=True` keeps, per episode, the env's flat observations (T+1),
the clipped actions the env received (T) and the rewards (T). `save_traces` writes them as

    traces.npz    observations (sum T+1, obs_dim) float32, actions (sum T, act_dim) float32,
                  rewards (sum T,) float64, lengths (E,): episodes back to back
    traces.json   per-episode seed, return, length, end reason, normalized score; the env
                  (dataset info, env id, time limit) and the run's config and step

`replay` resets the same env with each recorded seed, steps the recorded actions and checks
that returns, lengths, end reasons and observations come out the same: MuJoCo is
deterministic, so a mismatch means the artifact, the env version or the seeding changed.
End reasons are those of `dql.evaluation.evaluate`: time_limit, terminated (a fall, for
locomotion) and goal_reached (an env reporting info["success"]).

`render_episode` replays one episode in an offscreen MuJoCo renderer and writes MP4
(imageio-ffmpeg) or GIF (Pillow). Headless machines need an offscreen GL: EGL through Mesa
(Debian: libegl1 + libgl1-mesa-dri) works without a GPU; `MUJOCO_GL=osmesa` needs libosmesa6.
MUJOCO_GL defaults to egl here when unset.

    dql replay RUN_DIR [--video N]    re-run the final evaluation's traces; exit 1 on mismatch
"""

from __future__ import annotations

import io
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dql.data import DatasetInfo, flatten_observation
from dql.errors import UserError
from dql.evaluation import EvalResult, make_env
from dql.runs import atomic_write_bytes, atomic_write_json, read_json

if TYPE_CHECKING:
    from dql.cli import ReplayArgs

END_REASONS = ("time_limit", "terminated", "goal_reached")


@dataclass
class Traces:
    """Recorded episodes: per-episode arrays plus the JSON metadata (`meta["episodes"]`)."""

    observations: list[np.ndarray]  # (T+1, obs_dim) each
    actions: list[np.ndarray]  # (T, act_dim) each
    rewards: list[np.ndarray]  # (T,) each
    meta: dict[str, Any]

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def episodes(self) -> list[dict[str, Any]]:
        return self.meta["episodes"]


def save_traces(
    directory: str | Path,
    result: EvalResult,
    *,
    info: DatasetInfo,
    env_id: str | None = None,
    max_episode_steps: int | None = None,
    metadata: dict[str, Any] | None = None,
    name: str = "traces",
) -> Path:
    """Write `result.extra["traces"]` as NAME.npz + NAME.json in `directory`; returns the json."""
    if "traces" not in result.extra:
        raise ValueError("the evaluation was run without record_traces=True")
    recorded = result.extra["traces"]
    directory = Path(directory)
    arrays = {
        "observations": np.concatenate(recorded["observations"]).astype(np.float32),
        "actions": np.concatenate(recorded["actions"]).astype(np.float32),
        "rewards": np.concatenate(recorded["rewards"]).astype(np.float64),
        "lengths": np.asarray([len(a) for a in recorded["actions"]], np.int64),
    }
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(directory / f"{name}.npz", buffer.getvalue())
    meta = {
        "format": "dql-traces-1",
        "episodes": result.episodes(),
        "end_reasons": end_reason_counts(result.end_reasons),
        "mean_return": result.mean_return,
        "normalized_score": result.normalized_score,
        "env": {
            "dataset_info": info.to_dict(),
            "env_id": env_id,
            "max_episode_steps": max_episode_steps,
        },
        **(metadata or {}),
    }
    atomic_write_json(directory / f"{name}.json", meta)
    return directory / f"{name}.json"


def load_traces(path: str | Path) -> Traces:
    """Traces from a run directory (its traces.json/.npz) or from a NAME.json / NAME.npz path."""
    path = Path(path)
    stem = path / "traces" if path.is_dir() else path.with_suffix("")
    json_file, npz_file = stem.with_suffix(".json"), stem.with_suffix(".npz")
    if not json_file.exists() or not npz_file.exists():
        raise UserError(
            f"{path}: no traces ({json_file.name} and {npz_file.name}); they are written at each "
            "evaluation of a run trained with --save-traces (the default)"
        )
    meta = read_json(json_file)
    with np.load(npz_file) as data:
        lengths = data["lengths"]
        action_ends = np.cumsum(lengths)[:-1]
        obs_ends = np.cumsum(lengths + 1)[:-1]
        return Traces(
            observations=np.split(data["observations"], obs_ends),
            actions=np.split(data["actions"], action_ends),
            rewards=np.split(data["rewards"], action_ends),
            meta=meta,
        )


def end_reason_counts(reasons: Sequence[str]) -> dict[str, int]:
    """Episodes per end reason, every known reason listed (0 included)."""
    counts = Counter(reasons)
    return {
        reason: counts.get(reason, 0)
        for reason in (*END_REASONS, *sorted(set(counts) - set(END_REASONS)))
    }


def traces_env(traces: Traces, **kwargs: Any) -> Any:
    """The evaluation env the traces were recorded in (same spec, same time limit)."""
    env = traces.meta["env"]
    if env["max_episode_steps"] is not None:
        kwargs["max_episode_steps"] = env["max_episode_steps"]
    return make_env(DatasetInfo.from_dict(env["dataset_info"]), env["env_id"], **kwargs)


@dataclass
class ReplayedEpisode:
    seed: int
    recorded_return: float
    replayed_return: float
    recorded_length: int
    replayed_length: int
    recorded_end: str
    replayed_end: str
    max_observation_error: float

    def matches(self, atol: float = 1e-6) -> bool:
        scale = max(1.0, abs(self.recorded_return))
        return (
            abs(self.replayed_return - self.recorded_return) <= atol * scale
            and self.replayed_length == self.recorded_length
            and self.replayed_end == self.recorded_end
            and self.max_observation_error <= atol * 1e3
        )


def replay(
    traces: Traces, episodes: Sequence[int] | None = None, env: Any = None
) -> list[ReplayedEpisode]:
    """Step the recorded actions from the recorded seeds; report what came out per episode."""
    own_env = env is None
    env = traces_env(traces) if own_env else env
    out = []
    try:
        for i in range(len(traces)) if episodes is None else episodes:
            out.append(_replay_one(env, traces, i))
    finally:
        if own_env:
            env.close()
    return out


def _replay_one(
    env: Any, traces: Traces, index: int, frames: list | None = None
) -> ReplayedEpisode:
    record = traces.episodes[index]
    observation, _ = env.reset(seed=record["seed"])
    observed = [flatten_observation(observation)]
    if frames is not None:
        frames.append(env.render())
    total, end = 0.0, "not_ended"
    for action in traces.actions[index]:
        observation, reward, terminated, truncated, info = env.step(action)
        total += float(reward)
        observed.append(flatten_observation(observation))
        if frames is not None:
            frames.append(env.render())
        if terminated or truncated:
            success = bool(info.get("success", False))
            end = "goal_reached" if success else ("terminated" if terminated else "time_limit")
            break
    recorded_obs = traces.observations[index]
    n = min(len(observed), len(recorded_obs))
    error = float(np.abs(np.stack(observed[:n]) - recorded_obs[:n]).max()) if n else 0.0
    return ReplayedEpisode(
        seed=record["seed"],
        recorded_return=float(record["return"]),
        replayed_return=total,
        recorded_length=int(record["length"]),
        replayed_length=len(observed) - 1,
        recorded_end=record["end"],
        replayed_end=end,
        max_observation_error=error,
    )


# --------------------------------------------------------------------------- video


def render_episode(
    traces: Traces, index: int, path: str | Path, *, width: int = 480, height: int = 480
) -> Path:
    """Replay episode `index` with offscreen rendering and write it to `path` (.mp4 or .gif;
    .mp4 falls back to .gif when imageio-ffmpeg is missing). Returns the path written."""
    if not os.environ.get("DISPLAY"):
        os.environ.setdefault("MUJOCO_GL", "egl")
    frames: list[np.ndarray] = []
    try:
        env = traces_env(traces, render_mode="rgb_array", width=width, height=height)
    except UserError:
        env = traces_env(traces, render_mode="rgb_array")  # envs without size arguments
    try:
        _replay_one(env, traces, index, frames)
        fps = int(env.metadata.get("render_fps") or 30)
    except Exception as exc:
        raise UserError(
            f"offscreen rendering failed ({type(exc).__name__}: {exc}); install an offscreen GL "
            "(Debian: libegl1 libgl1-mesa-dri for MUJOCO_GL=egl, or libosmesa6 for "
            "MUJOCO_GL=osmesa)"
        ) from None
    finally:
        env.close()
    return write_video(frames, path, fps)


def write_video(frames: Sequence[np.ndarray], path: str | Path, fps: int) -> Path:
    """MP4 through imageio-ffmpeg when installed, else an animated GIF through Pillow."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".mp4":
        try:
            import imageio.v2 as imageio
            import imageio_ffmpeg  # noqa: F401 -- the MP4 backend

            with imageio.get_writer(path, fps=fps, codec="libx264", macro_block_size=1) as writer:
                for frame in frames:
                    writer.append_data(np.asarray(frame))
            return path
        except ImportError:
            path = path.with_suffix(".gif")
    from PIL import Image

    images = [Image.fromarray(np.asarray(frame)) for frame in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return path


# --------------------------------------------------------------------------- command


def replay_command(args: ReplayArgs) -> int:
    """`dql replay`: replay recorded episodes; exit 1 when one does not reproduce."""
    traces = load_traces(args.path)
    results = replay(traces)
    print(
        f"{'episode':>7} {'seed':>7} {'end':>12} {'length':>6} {'return':>12} {'replayed':>12}  ok"
    )
    bad = 0
    for i, r in enumerate(results):
        ok = r.matches(args.atol)
        bad += not ok
        print(
            f"{i:>7} {r.seed:>7} {r.recorded_end:>12} {r.recorded_length:>6} "
            f"{r.recorded_return:>12.3f} {r.replayed_return:>12.3f}  {'yes' if ok else 'NO'}"
        )
    counts = end_reason_counts([e["end"] for e in traces.episodes])
    print("episodes by end reason: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    print(
        "(terminated: the env ended the episode early, a fall for locomotion; time_limit: ran "
        "out the clock, a failure for goal tasks)"
    )
    if args.video is not None:
        base = Path(args.path)
        video_dir = (
            Path(args.video_dir)
            if args.video_dir
            else (base if base.is_dir() else base.parent) / "videos"
        )
        for index in args.video or [0]:
            if not 0 <= index < len(traces):
                raise UserError(f"--video {index}: the traces hold episodes 0..{len(traces) - 1}")
            written = render_episode(traces, index, video_dir / f"episode_{index}.mp4")
            print(f"wrote {written}")
    if bad:
        print(f"{bad} of {len(results)} episodes did not replay to the recorded result")
        return 1
    print(f"all {len(results)} episodes replay to the recorded returns")
    return 0
