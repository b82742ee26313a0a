"""One generic checkpoint of an agent (as d3rlpy's `Modules` does it): every module, optimiser,
LR scheduler and generator the agent holds as an attribute, plus the attributes it names in
`extra_state` (step counters, running statistics, tensors logged between updates).

    class TD3BC(Checkpointed):
        extra_state = ("updates", "last_actor_loss", "last_lambda")

The keys are the attribute names, so a checkpoint reads like the agent's constructor. A compiled
wrapper (`torch.compile(module)`) is skipped: it shares its parameters with the module it wraps,
which is saved under its own name. Loading is strict: a key missing from the checkpoint, or one
the agent does not have, is an error naming it (only a batched seed's noise stream,
`SEED_BATCH_KEYS`, is left to the code that batches seeds).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dql.errors import UserError

_STATEFUL = (nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler)
# What one seed's checkpoint of a batched run adds (dql.batched_seeds): its noise streams
# ("generator", "generators": batched Diffusion-QL checkpoints from before the SeedStack). A
# normal agent loads the rest; its training loop restores torch's own RNG.
SEED_BATCH_KEYS = ("seed_stack_rng", "seed_rng", "generator", "generators")


def _is_compiled(value: Any) -> bool:
    return hasattr(value, "_orig_mod") and isinstance(value, nn.Module)


def stateful_attributes(agent: Any) -> dict[str, Any]:
    """The agent's modules, optimisers, schedulers and generators, by attribute name."""
    return {
        name: value
        for name, value in vars(agent).items()
        if not name.startswith("_")
        and (isinstance(value, (*_STATEFUL, torch.Generator)) or _has_state(value))
        and not _is_compiled(value)
    }


def _has_state(value: Any) -> bool:
    """Helpers with their own state_dict pair (a normaliser), but not the agent's config."""
    return callable(getattr(value, "state_dict", None)) and callable(
        getattr(value, "load_state_dict", None)
    )


def _saved(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _saved(v) for k, v in value.items()}
    return value


def _restored(current: Any, saved: Any) -> Any:
    if isinstance(current, torch.Tensor) and isinstance(saved, torch.Tensor):
        if current.requires_grad:  # an optimised leaf (a learned temperature): keep its identity
            with torch.no_grad():
                current.copy_(saved)
            return current
        return saved.to(current.device)
    if isinstance(current, dict) and isinstance(saved, dict):
        return {k: _restored(current.get(k, saved[k]), v) for k, v in saved.items()}
    return type(current)(saved) if isinstance(current, (int, float)) else saved


class Checkpointed:
    """state_dict()/load_state_dict() over everything stateful the agent holds (see the module)."""

    extra_state: tuple[str, ...] = ()

    def state_dict(self) -> dict[str, Any]:
        state = {
            name: value.get_state() if isinstance(value, torch.Generator) else value.state_dict()
            for name, value in stateful_attributes(self).items()
        }
        state.update({name: _saved(getattr(self, name)) for name in self.extra_state})
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = {k: v for k, v in state.items() if k not in SEED_BATCH_KEYS}
        stateful = stateful_attributes(self)
        expected = {**stateful, **{n: getattr(self, n) for n in self.extra_state}}
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise UserError(
                f"checkpoint does not fit {type(self).__name__}: "
                + "; ".join(
                    part
                    for part in (
                        f"missing {', '.join(missing)}" if missing else "",
                        f"unexpected {', '.join(unexpected)}" if unexpected else "",
                    )
                    if part
                )
            )
        for name, value in stateful.items():
            if isinstance(value, torch.Generator):
                value.set_state(state[name].cpu())
            else:
                value.load_state_dict(state[name])
        for name in self.extra_state:
            setattr(self, name, _restored(getattr(self, name), state[name]))
