"""Dataset layer: one entry point, `load_dataset(spec)`, for Minari ids, Minari directories and
D4RL-format HDF5 files, returning one `Transitions` object with the semantics offline RL needs.

Semantics (tested in tests/test_data.py):
- A time-limit truncation is not a terminal. Minari stores T+1 observations per episode, so every
  transition, the truncated last one included, keeps its real next observation and bootstraps.
- D4RL HDF5 files follow D4RL's `qlearning_dataset`: next_observations[i] = observations[i+1];
  a timeout step (whose next observation belongs to a new episode) and the file's last step are
  dropped. If the file has a `next_observations` key, it is used and no step is dropped.
- Dict observations are flattened in the order `observation, achieved_goal, desired_goal`, then
  any other keys sorted by name (nested dicts likewise, recursively). The evaluation env applies the
  same function (`flatten_observation`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from dql.errors import DatasetError

# D4RL reference returns (random, expert) of the gym-v2 era environments, by task family.
# They do not transfer to Gymnasium v5 envs: locally built datasets carry their own.
D4RL_REF_SCORES: dict[str, tuple[float, float]] = {
    "hopper": (-20.272305, 3234.3),
    "halfcheetah": (-280.178953, 12135.0),
    "walker2d": (1.629008, 4592.3),
    "ant": (-325.6, 3879.7),
    "maze2d-umaze": (23.85, 161.86),
    "maze2d-medium": (13.13, 277.39),
    "maze2d-large": (6.7, 273.99),
    "antmaze": (0.0, 1.0),
    "pen": (96.262799, 3076.833102),
    "kitchen": (0.0, 4.0),
}

# Gymnasium env ids used to evaluate D4RL HDF5 files (the closest maintained version).
D4RL_ENV_IDS: dict[str, str] = {
    "hopper": "Hopper-v5",
    "halfcheetah": "HalfCheetah-v5",
    "walker2d": "Walker2d-v5",
    "ant": "Ant-v5",
}

OBSERVATION_KEY_ORDER = ("observation", "achieved_goal", "desired_goal")
RewardTransform = Literal[
    "none", "zscore", "normalize", "locomotion", "cql_antmaze", "corl_antmaze", "antmaze"
]
REWARD_TRANSFORMS = get_args(RewardTransform)
HDF5_REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")
_MINARI_ID = re.compile(r"^([\w.-]+/)*[\w.-]+-v\d+$")


@dataclass
class DatasetInfo:
    """What is known about a dataset besides its arrays."""

    dataset_id: str
    source: str  # "minari", "minari-dir" or "hdf5"
    observation_dim: int
    action_dim: int
    action_low: np.ndarray
    action_high: np.ndarray
    content_hash: str
    env_id: str | None = None
    env_spec_json: str | None = None  # Gymnasium EnvSpec of the data-collecting env
    eval_env_spec_json: str | None = None  # the env to evaluate in, when it differs
    ref_min_score: float | None = None
    ref_max_score: float | None = None
    observation_keys: tuple[str, ...] | None = None  # flattening order of dict observations
    mean_episode_return: float | None = None  # the behaviour's level (a cut last episode counts)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items()}
        out["action_low"] = self.action_low.tolist()
        out["action_high"] = self.action_high.tolist()
        out["observation_keys"] = list(self.observation_keys) if self.observation_keys else None
        return out

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> DatasetInfo:
        """Inverse of `to_dict` (a run's config.json "dataset"); unknown keys are ignored."""
        fields = {k: v for k, v in saved.items() if k in cls.__dataclass_fields__}
        fields["action_low"] = np.asarray(saved["action_low"], np.float32)
        fields["action_high"] = np.asarray(saved["action_high"], np.float32)
        keys = saved.get("observation_keys")
        fields["observation_keys"] = tuple(keys) if keys else None
        return cls(**fields)


@dataclass
class Transitions:
    """A dataset of transitions, in episode order. Arrays are float32 (episode_ids int64).

    Shapes: observations/next_observations (N, obs_dim), actions (N, act_dim), rewards,
    terminals, timeouts, episode_ids (N,). `terminals[i]` is 1 where the env terminated (no
    bootstrap); `timeouts[i]` is 1 where the episode was cut by a time limit (still bootstraps).
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    episode_ids: np.ndarray
    info: DatasetInfo
    arrays: tuple[str, ...] = field(
        default=(
            "observations",
            "actions",
            "rewards",
            "next_observations",
            "terminals",
            "timeouts",
        ),
        repr=False,
    )

    def __len__(self) -> int:
        return int(self.rewards.shape[0])

    def episode_returns(self) -> np.ndarray:
        """Sum of rewards of each episode (episodes as in `episode_ids`)."""
        _, inverse = np.unique(self.episode_ids, return_inverse=True)
        return np.bincount(inverse, weights=self.rewards.astype(np.float64))

    def with_rewards(self, rewards: np.ndarray) -> Transitions:
        return replace(self, rewards=rewards.astype(np.float32))


# --------------------------------------------------------------------------- observations


def _ordered_keys(keys: Any) -> list[str]:
    keys = list(keys)
    first = [k for k in OBSERVATION_KEY_ORDER if k in keys]
    return first + sorted(k for k in keys if k not in OBSERVATION_KEY_ORDER)


def flatten_observation(observation: Any) -> np.ndarray:
    """Flatten a (possibly nested, possibly batched) dict observation into one float32 array.

    Order: observation, achieved_goal, desired_goal, then the other keys sorted; the last axis is
    the feature axis, so a batch (B, ...) of dicts flattens to (B, features).
    """
    if isinstance(observation, dict):
        parts = [flatten_observation(observation[k]) for k in _ordered_keys(observation.keys())]
        return np.concatenate(parts, axis=-1)
    array = np.asarray(observation, dtype=np.float32)
    return array[..., None] if array.ndim == 0 else array


def observation_keys(observation: Any, prefix: str = "") -> tuple[str, ...] | None:
    """Flattening order of a dict observation as dotted key paths, None for arrays."""
    if not isinstance(observation, dict):
        return None
    keys: list[str] = []
    for k in _ordered_keys(observation.keys()):
        sub = observation_keys(observation[k], prefix + k + ".")
        keys.extend(sub if sub else [prefix + k])
    return tuple(keys)


@dataclass
class ObservationNormalizer:
    """State normalisation (x - mean) / std with statistics from the dataset, applied the same way
    in training and evaluation. std gets +eps so constant features do not blow up."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def from_data(cls, observations: np.ndarray, eps: float = 1e-3) -> ObservationNormalizer:
        return cls(
            observations.mean(0).astype(np.float32), (observations.std(0) + eps).astype(np.float32)
        )

    @classmethod
    def identity(cls, dim: int) -> ObservationNormalizer:
        return cls(np.zeros(dim, np.float32), np.ones(dim, np.float32))

    def __call__(self, observations: np.ndarray) -> np.ndarray:
        return ((observations - self.mean) / self.std).astype(np.float32)

    def state_dict(self) -> dict[str, list[float]]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_state_dict(cls, state: dict[str, list[float]]) -> ObservationNormalizer:
        return cls(np.asarray(state["mean"], np.float32), np.asarray(state["std"], np.float32))


# --------------------------------------------------------------------------- rewards and scores


def transform_rewards(transitions: Transitions, kind: str) -> np.ndarray:
    """Reward transforms used in the field, returned as a new float32 array.

    none; zscore (alias normalize): (r - mean) / std; locomotion (IQL):
    r * 1000 / (max_return - min_return) over episodes; cql_antmaze: (r - 0.5) * 4;
    corl_antmaze (CORL's CQL): 10 r - 5; antmaze (IQL): r - 1.
    """
    r = transitions.rewards.astype(np.float64)
    if kind == "none":
        out = r
    elif kind in ("zscore", "normalize"):
        out = (r - r.mean()) / (r.std() + 1e-6)
    elif kind == "locomotion":
        returns = transitions.episode_returns()
        spread = returns.max() - returns.min()
        if spread <= 0:
            raise DatasetError(
                "reward transform 'locomotion' needs episodes with different returns; "
                "this dataset has one return"
            )
        out = r * 1000.0 / spread
    elif kind == "cql_antmaze":
        out = (r - 0.5) * 4.0
    elif kind == "corl_antmaze":
        out = r * 10.0 - 5.0
    elif kind == "antmaze":
        out = r - 1.0
    else:
        raise DatasetError(
            f"unknown reward transform {kind!r}; choose one of {', '.join(REWARD_TRANSFORMS)}"
        )
    return out.astype(np.float32)


def resolve_ref_scores(
    info: DatasetInfo, ref_min: float | None = None, ref_max: float | None = None
) -> tuple[float, float]:
    """Reference returns: explicit values, else the dataset's metadata, else the D4RL table."""
    lo = ref_min if ref_min is not None else info.ref_min_score
    hi = ref_max if ref_max is not None else info.ref_max_score
    if lo is None or hi is None:
        family = d4rl_family(info.dataset_id)
        if family is not None:
            table_lo, table_hi = D4RL_REF_SCORES[family]
            lo = table_lo if lo is None else lo
            hi = table_hi if hi is None else hi
    if lo is None or hi is None:
        raise DatasetError(
            f"dataset {info.dataset_id!r} has no reference scores for normalisation; pass "
            "--ref-min-score and --ref-max-score (random and expert mean returns)"
        )
    if not hi > lo:
        raise DatasetError(f"reference scores must satisfy min < max, got min={lo}, max={hi}")
    return float(lo), float(hi)


def normalized_score(returns: Any, ref_min: float, ref_max: float) -> np.ndarray:
    """D4RL normalized score: 100 (R - R_min) / (R_max - R_min)."""
    return 100.0 * (np.asarray(returns, dtype=np.float64) - ref_min) / (ref_max - ref_min)


def d4rl_family(dataset_id: str) -> str | None:
    """The D4RL task family of a D4RL id or file name (hopper, maze2d-umaze, antmaze, ...)."""
    name = dataset_id.lower()
    if not (name.startswith("d4rl/") or "/" not in name or name.endswith((".hdf5", ".h5"))):
        return None
    name = Path(name).name if name.endswith((".hdf5", ".h5")) else name.removeprefix("d4rl/")
    name = name.replace("/", "-")
    for family in sorted(D4RL_REF_SCORES, key=len, reverse=True):
        if name.startswith(family):
            return family
    if name.startswith("pointmaze-"):
        return {"umaze": "maze2d-umaze", "medium": "maze2d-medium", "large": "maze2d-large"}.get(
            name.split("-")[1]
        )
    return None


def task_name(dataset_id: str) -> str:
    """Short task name used for hyperparameter tables: mujoco/hopper/medium-v0 -> hopper-medium,
    D4RL/antmaze/umaze-diverse-v1 -> antmaze-umaze-diverse, hopper-medium-v2.hdf5 -> hopper-medium."""
    name = Path(dataset_id).name if dataset_id.endswith((".hdf5", ".h5")) else dataset_id
    name = re.sub(r"\.(hdf5|h5)$", "", name)
    parts = name.strip("/").split("/")
    if dataset_id.startswith(("/", ".", "~")) and not dataset_id.endswith((".hdf5", ".h5")):
        # a Minari dataset directory .../<namespace>/<name>/<dataset-vN>[/data]
        parts = [p for p in parts if p not in ("", ".", "..", "~")]
        parts = parts[-4:-1] if parts and parts[-1] == "data" else parts[-3:]
    if len(parts) >= 3:
        parts = parts[1:]  # drop the namespace (mujoco, D4RL, local)
    name = "-".join(parts)
    return re.sub(r"-v\d+$", "", name).lower()


# --------------------------------------------------------------------------- loading


def load_dataset(
    spec: str | os.PathLike,
    *,
    download: bool = False,
    env_id: str | None = None,
) -> Transitions:
    """Load a dataset given a Minari id, a Minari dataset directory or a D4RL-format HDF5 file.

    Minari ids are looked up in the local store ($MINARI_DATASETS_PATH, default
    ~/.minari/datasets); `download=True` fetches a missing one (needs internet).
    `env_id` names the evaluation env where the data does not (D4RL HDF5 files).
    """
    spec_str = os.fspath(spec)
    path = Path(spec_str).expanduser()
    if path.is_file():
        if path.suffix not in (".hdf5", ".h5"):
            raise DatasetError(f"{path}: not an HDF5 file (expected a .hdf5 or .h5 D4RL file)")
        transitions = _load_hdf5(path, env_id)
    elif path.is_dir():
        data_dir = path / "data" if (path / "data").is_dir() else path
        if not (data_dir / "metadata.json").is_file():
            raise DatasetError(
                f"{path}: not a Minari dataset directory (no metadata.json in it or in its data/)"
            )
        transitions = _load_minari(_open_minari_dir(data_dir), spec_str, "minari-dir", env_id)
    elif (
        spec_str.endswith((".hdf5", ".h5"))
        or os.sep in spec_str
        and spec_str.startswith((".", "/", "~"))
    ):
        raise DatasetError(f"{spec_str}: no such file or directory")
    else:
        transitions = _load_minari(_open_minari_id(spec_str, download), spec_str, "minari", env_id)
    check_finite(transitions)
    return transitions


def _open_minari_id(dataset_id: str, download: bool) -> Any:
    import minari
    from minari.storage.datasets_root_dir import get_dataset_path

    if not _MINARI_ID.match(dataset_id):
        raise DatasetError(
            f"unknown dataset {dataset_id!r}: expected a Minari id like mujoco/hopper/medium-v0, "
            "a Minari dataset directory, or a D4RL .hdf5 file"
        )
    local = Path(get_dataset_path(dataset_id))
    if not (local / "data").is_dir():
        if not download:
            hint = (
                f"build it with `dql data build {task_name(dataset_id)}`"
                if dataset_id.startswith("local/")
                else "download it with --download (needs internet), or build a local equivalent "
                "with `dql data build <env>-<quality>`"
            )
            raise DatasetError(f"dataset {dataset_id!r} is not in the local store {local}; {hint}")
        try:
            return minari.load_dataset(dataset_id, download=True)
        except ImportError as exc:
            raise DatasetError(
                f"downloading needs huggingface_hub ({exc}); `pip install huggingface_hub`"
            ) from None
        except Exception as exc:  # network, hub or unknown-id failures all surface here
            raise DatasetError(
                f"could not download {dataset_id!r}: {type(exc).__name__}: {str(exc)[:200]}"
            ) from None
    try:
        return minari.load_dataset(dataset_id)
    except Exception as exc:
        raise DatasetError(f"dataset {dataset_id!r} in {local} cannot be read: {exc}") from None


def _open_minari_dir(data_dir: Path) -> Any:
    from minari.dataset.minari_dataset import MinariDataset

    try:
        return MinariDataset(data_dir)
    except Exception as exc:
        raise DatasetError(f"{data_dir}: cannot be read as a Minari dataset: {exc}") from None


def _load_minari(dataset: Any, spec: str, source: str, env_id: str | None) -> Transitions:
    observations, next_observations, actions, rewards = [], [], [], []
    terminals, timeouts, episode_ids = [], [], []
    keys = None
    try:
        for episode_index, episode in enumerate(dataset.iterate_episodes()):
            if keys is None:
                keys = observation_keys(episode.observations)
            obs = flatten_observation(episode.observations)  # (T+1, obs_dim)
            steps = len(episode.rewards)
            if obs.shape[0] != steps + 1:
                raise DatasetError(
                    f"{spec}: episode {episode.id} has {obs.shape[0]} observations for "
                    f"{steps} actions (Minari stores T+1)"
                )
            observations.append(obs[:-1])
            next_observations.append(obs[1:])
            actions.append(np.asarray(episode.actions, np.float32).reshape(steps, -1))
            rewards.append(np.asarray(episode.rewards, np.float32))
            terminals.append(np.asarray(episode.terminations, np.float32))
            timeouts.append(np.asarray(episode.truncations, np.float32))
            episode_ids.append(np.full(steps, episode_index, np.int64))
    except DatasetError:
        raise
    except (OSError, KeyError, ValueError) as exc:
        raise DatasetError(f"{spec}: corrupt or unreadable dataset files: {exc}") from None
    if not rewards:
        raise DatasetError(f"{spec}: the dataset has no episodes")

    metadata = dataset.storage.metadata
    action_space = dataset.action_space
    env_spec = metadata.get("env_spec")
    eval_env_spec = metadata.get("eval_env_spec")
    if env_id is None and env_spec:
        env_id = json.loads(env_spec).get("id")
    return _assemble(
        spec,
        source,
        np.concatenate(observations),
        np.concatenate(actions),
        np.concatenate(rewards),
        np.concatenate(next_observations),
        np.concatenate(terminals),
        np.concatenate(timeouts),
        np.concatenate(episode_ids),
        action_low=np.asarray(action_space.low, np.float32).reshape(-1),
        action_high=np.asarray(action_space.high, np.float32).reshape(-1),
        env_id=env_id,
        env_spec_json=env_spec,
        eval_env_spec_json=eval_env_spec,
        ref_min=metadata.get("ref_min_score"),
        ref_max=metadata.get("ref_max_score"),
        keys=keys,
    )


def _load_hdf5(path: Path, env_id: str | None) -> Transitions:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in HDF5_REQUIRED_KEYS if k not in f]
            if missing:
                raise DatasetError(f"{path}: missing key(s) {', '.join(missing)} in the HDF5 file")
            data = {k: np.asarray(f[k]) for k in HDF5_REQUIRED_KEYS}
            next_obs = np.asarray(f["next_observations"]) if "next_observations" in f else None
    except DatasetError:
        raise
    except OSError as exc:
        raise DatasetError(f"{path}: corrupt or unreadable HDF5 file: {exc}") from None

    lengths = {k: len(v) if v.ndim else 0 for k, v in data.items()}
    n = lengths["rewards"]
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{k} {v}" for k, v in lengths.items())
        raise DatasetError(f"{path}: arrays differ in length ({detail})")
    if n < 2:  # qlearning_dataset needs a following row for the next observation
        raise DatasetError(f"{path}: the HDF5 file holds {n} step(s); too few to train on")
    obs = data["observations"].astype(np.float32).reshape(n, -1)
    actions = data["actions"].astype(np.float32).reshape(n, -1)
    rewards = data["rewards"].astype(np.float32).reshape(-1)
    terminals = data["terminals"].astype(np.float32).reshape(-1)
    timeouts = data["timeouts"].astype(np.float32).reshape(-1)
    # Episode i ends at a terminal or timeout step; ids count episodes in file order.
    ends = np.maximum(terminals, timeouts) > 0
    episode_ids = np.concatenate([[0], np.cumsum(ends[:-1])]).astype(np.int64)
    if next_obs is not None:
        next_obs = next_obs.astype(np.float32).reshape(n, -1)
        keep = np.ones(n, bool)
    else:
        # qlearning_dataset: next obs is the following row; drop timeouts and the last row.
        next_obs = np.concatenate([obs[1:], obs[-1:]])
        keep = timeouts == 0
        keep[-1] = False
        if not keep.any():
            raise DatasetError(f"{path}: no transitions left after dropping timeout steps")
    family = d4rl_family(path.name)
    if env_id is None and family in D4RL_ENV_IDS:
        env_id = D4RL_ENV_IDS[family]
    low = np.full(actions.shape[1], -1.0, np.float32)
    return _assemble(
        str(path),
        "hdf5",
        obs[keep],
        actions[keep],
        rewards[keep],
        next_obs[keep],
        terminals[keep],
        timeouts[keep],
        episode_ids[keep],
        action_low=low,
        action_high=-low,
        env_id=env_id,
    )


def _assemble(
    spec: str,
    source: str,
    observations: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    next_observations: np.ndarray,
    terminals: np.ndarray,
    timeouts: np.ndarray,
    episode_ids: np.ndarray,
    *,
    action_low: np.ndarray,
    action_high: np.ndarray,
    env_id: str | None = None,
    env_spec_json: str | None = None,
    eval_env_spec_json: str | None = None,
    ref_min: float | None = None,
    ref_max: float | None = None,
    keys: tuple[str, ...] | None = None,
) -> Transitions:
    digest = hashlib.blake2b(digest_size=16)
    arrays = (observations, actions, rewards, next_observations, terminals, timeouts, episode_ids)
    for array in arrays:
        digest.update(str(array.shape).encode())  # same bytes in another shape is other data
        digest.update(np.ascontiguousarray(array).tobytes())
    info = DatasetInfo(
        dataset_id=spec,
        source=source,
        observation_dim=int(observations.shape[1]),
        action_dim=int(actions.shape[1]),
        action_low=action_low,
        action_high=action_high,
        content_hash=digest.hexdigest(),
        env_id=env_id,
        env_spec_json=env_spec_json,
        eval_env_spec_json=eval_env_spec_json,
        ref_min_score=None if ref_min is None else float(ref_min),
        ref_max_score=None if ref_max is None else float(ref_max),
        observation_keys=keys,
    )
    transitions = Transitions(
        observations=observations,
        actions=actions,
        rewards=rewards,
        next_observations=next_observations,
        terminals=terminals,
        timeouts=timeouts,
        episode_ids=episode_ids,
        info=info,
    )
    returns = transitions.episode_returns()
    info.mean_episode_return = float(returns.mean()) if len(returns) else None
    return transitions


def check_finite(transitions: Transitions) -> None:
    """Refuse NaN/inf in any field, naming the field and how many values are bad."""
    for name in transitions.arrays:
        array = getattr(transitions, name)
        bad = int(array.size - np.isfinite(array).sum())
        if bad:
            raise DatasetError(
                f"{transitions.info.dataset_id}: field {name!r} has {bad} NaN/inf value(s); "
                "clean the dataset before training"
            )
