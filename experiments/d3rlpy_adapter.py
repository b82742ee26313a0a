"""The one mapping from this suite's algorithms to d3rlpy 2.8.1's, shared by the cross-check
(experiments/crosscheck_d3rlpy.py), the parity runs (experiments/parity_d3rlpy.py) and the
bench's reference timings (experiments/bench.py): d3rlpy's algorithm set to the numbers of one
of our configs, and our transitions as d3rlpy's MDPDataset. Needs d3rlpy (`pip install
--no-deps d3rlpy==2.8.1` plus the `bench` extra; docs/environment-notes.md)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from dql.data import Transitions

D3RLPY_NAMES = {"td3bc": "TD3PlusBC", "iql": "IQL", "cql": "CQL", "bcq": "BCQ", "bc": "BC"}


def d3rlpy_available() -> str | None:
    """None when d3rlpy imports, else why not."""
    try:
        import d3rlpy  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install of its deps
        return (
            f"d3rlpy not importable ({type(exc).__name__}: {exc}); install it with "
            "`pip install --no-deps d3rlpy==2.8.1` and its deps (docs/environment-notes.md)"
        )
    return None


def d3rlpy_algorithm(
    name: str,
    config: Any,
    steps: int,
    action_high: np.ndarray,
    *,
    device: str = "cpu",
    for_acting: bool = False,
    preprocessing: bool = True,
) -> Any:
    """d3rlpy's implementation of `name` set to the numbers of our `config` (None for an
    algorithm d3rlpy does not have). `for_acting`: BCQ samples as many actions as ours does
    to act; `preprocessing=False` leaves out the observation and reward scalers (the bench
    times update steps on data both sides take already normalised)."""
    if name not in D3RLPY_NAMES:  # before reading config: Diffuser's has no `hidden`
        return None
    import d3rlpy

    algos, factory = d3rlpy.algos, d3rlpy.models.encoders.VectorEncoderFactory
    encoder = factory(hidden_units=list(config.hidden))
    common: dict[str, Any] = dict(batch_size=config.batch_size)
    if preprocessing and config.normalize_observations:
        common["observation_scaler"] = d3rlpy.preprocessing.StandardObservationScaler()
    if not np.allclose(action_high, 1.0):  # d3rlpy's policies act in [-1, 1]: map the box
        common["action_scaler"] = d3rlpy.preprocessing.MinMaxActionScaler(
            minimum=-action_high, maximum=action_high
        )
    if name != "bc":
        common.update(gamma=config.discount, tau=config.tau)
        common.update(actor_encoder_factory=encoder, critic_encoder_factory=encoder)
    if preprocessing and name in ("iql", "cql") and config.reward_transform == "locomotion":
        common["reward_scaler"] = d3rlpy.preprocessing.ReturnBasedRewardScaler(multiplier=1000.0)
    if name == "td3bc":
        algo = algos.TD3PlusBCConfig(
            alpha=config.alpha,
            target_smoothing_sigma=config.policy_noise,
            target_smoothing_clip=config.noise_clip,
            update_actor_interval=config.policy_delay,
            actor_learning_rate=config.actor_lr,
            critic_learning_rate=config.critic_lr,
            **common,
        )
    elif name == "iql":
        cosine = d3rlpy.optimizers.AdamFactory(
            lr_scheduler_factory=d3rlpy.optimizers.CosineAnnealingLRFactory(T_max=steps)
        )
        algo = algos.IQLConfig(
            expectile=config.expectile,
            weight_temp=config.beta,
            max_weight=100.0,
            actor_learning_rate=config.actor_lr,
            critic_learning_rate=config.critic_lr,
            actor_optim_factory=cosine,
            value_encoder_factory=encoder,
            **common,
        )
    elif name == "cql":
        common["actor_encoder_factory"] = factory(hidden_units=list(config.actor_hidden))
        lagrange = dict(alpha_threshold=config.target_action_gap, initial_alpha=math.e)
        algo = algos.CQLConfig(
            conservative_weight=config.cql_alpha,
            n_action_samples=config.num_sampled_actions,
            actor_learning_rate=config.actor_lr,
            critic_learning_rate=config.critic_lr,
            temp_learning_rate=config.entropy_lr,
            # a fixed conservative weight, as ours, unless our table tunes it (--lagrange)
            alpha_learning_rate=config.critic_lr if config.lagrange else 0.0,
            **(lagrange if config.lagrange else {}),
            max_q_backup=config.max_target_backup,
            **common,
        )
    elif name == "bcq":
        algo = algos.BCQConfig(
            lam=config.lmbda,
            action_flexibility=config.phi,
            n_action_samples=(
                config.eval_sampled_actions if for_acting else config.num_sampled_actions
            ),
            actor_learning_rate=config.lr,
            critic_learning_rate=config.lr,
            imitator_learning_rate=config.lr,
            imitator_encoder_factory=factory(hidden_units=list(config.vae_hidden)),
            **common,
        )
    elif name == "bc":
        policy = "stochastic" if config.gaussian else "deterministic"
        algo = algos.BCConfig(
            learning_rate=config.lr, policy_type=policy, encoder_factory=encoder, **common
        )
    return algo.create(device="cuda:0" if device.startswith("cuda") else "cpu:0")


def d3rlpy_dataset(transitions: Transitions, rewards: np.ndarray | None = None) -> Any:
    """d3rlpy's MDPDataset of our transitions: observations[i] is the state actions[i] was taken
    in (not d3rlpy's get_minari, which misaligns them); every episode ends in a terminal or a
    timeout."""
    import d3rlpy

    ends = np.append(transitions.episode_ids[1:] != transitions.episode_ids[:-1], True)
    timeouts = np.where(ends & (transitions.terminals == 0), 1.0, transitions.timeouts)
    return d3rlpy.dataset.MDPDataset(
        observations=transitions.observations,
        actions=transitions.actions,
        rewards=transitions.rewards if rewards is None else rewards,
        terminals=transitions.terminals,
        timeouts=timeouts.astype(np.float32),
        action_space=d3rlpy.constants.ActionSpace.CONTINUOUS,
    )
