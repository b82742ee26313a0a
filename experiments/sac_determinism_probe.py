"""Does an SB3 SAC run repeat bit for bit on this CPU? Prints the md5 of the trained weights.

    MKL_CBWR=COMPATIBLE ATEN_CPU_CAPABILITY=default OMP_NUM_THREADS=1 \\
        python experiments/sac_determinism_probe.py [--steps 1500]

The question behind it (docs/datasets.md, "A build is bit-identical only on the same kind of
CPU"): medium-replay is a SAC run's replay buffer, so it is one build everywhere only if the
training is. Run it with the same environment variables on two kinds of machine and compare the
hashes; measured 2026-12-04 on an AVX-512 EPYC with VP2INTERSECT, 1,500 steps: b17a56d2... with
the two variables above, 9718e1ca... without.
"""

from __future__ import annotations

import argparse
import hashlib
import os

import gymnasium as gym
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    args = parser.parse_args()
    from stable_baselines3 import SAC

    torch.set_num_threads(1)
    model = SAC("MlpPolicy", gym.make("Hopper-v5"), seed=0, device="cpu", learning_starts=100)
    model.learn(args.steps)
    weights = b"".join(p.detach().numpy().tobytes() for p in model.policy.parameters())
    settings = {k: os.environ.get(k, "-") for k in ("MKL_CBWR", "ATEN_CPU_CAPABILITY")}
    print(
        f"{hashlib.md5(weights).hexdigest()}  steps {args.steps}  torch kernels "
        f"{torch.backends.cpu.get_cpu_capability()}  {settings}"
    )


if __name__ == "__main__":
    main()
