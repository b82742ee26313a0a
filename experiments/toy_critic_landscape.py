"""The toy bandit's critic alone, trained as the public toy trains it (regressed on r, batch 100,
lr 3e-4, hidden 128): where its maximum sits and how it slopes at the best mode over training.

    python experiments/toy_critic_landscape.py > results/toy_bandit/critic_landscape.jsonl

Shows why a short toy run puts Diffusion-QL's samples at the box corner (1, -1): an
undertrained critic extrapolates past the best mode (0.8, -0.8) and peaks at the corner, so the
Q term pushes samples there, where the sampler's clip zeroes the gradient that would bring them
back; after ~30k steps the critic is flat around the mode and the corner no longer wins.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch

from dql.diffusion_ql import twin_critic
from dql.nets import make_optimizer

TOY = Path(__file__).resolve().parent / "toy_bandit.py"
REPORT_AT = (300, 1000, 3000, 10_000, 30_000, 100_000)


def main() -> int:
    spec = importlib.util.spec_from_file_location("toy_bandit", TOY)
    toy = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = toy
    spec.loader.exec_module(toy)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data, generator = toy.make_dataset(), torch.Generator().manual_seed(0)
    critic = twin_critic(toy.STATE_DIM, toy.ACTION_DIM, (128,) * 3)
    optimizer = make_optimizer(critic.parameters(), 3e-4)
    grid = torch.linspace(-1, 1, 41)
    points = torch.cartesian_prod(grid, grid)
    for step in range(1, REPORT_AT[-1] + 1):
        batch = data.batch(100, generator)
        loss = (critic(batch["observations"], batch["actions"]) - batch["rewards"]).square()
        optimizer.zero_grad()
        loss.mean(-1).sum().backward()
        optimizer.step()
        if step not in REPORT_AT:
            continue
        mode = torch.tensor([[0.8, -0.8]], requires_grad=True)
        slope = torch.autograd.grad(critic(torch.zeros(1, 2), mode)[0].sum(), mode)[0][0]
        with torch.no_grad():
            q = critic.min(torch.zeros(len(points), 2), points)
            corner = critic.min(torch.zeros(1, 2), torch.tensor([[1.0, -1.0]]))
            at_mode = critic.min(torch.zeros(1, 2), mode.detach())
        row = {
            "step": step,
            "argmax_q": [round(float(x), 3) for x in points[q.argmax()]],
            "q_best_mode": round(float(at_mode), 3),
            "q_corner": round(float(corner), 3),
            "dq1_da_at_best_mode": [round(float(x), 3) for x in slope],
        }
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
