"""Does an SB3 SAC run repeat bit for bit on this CPU? Prints the md5 of the trained weights.

    MKL_CBWR=COMPATIBLE ATEN_CPU_CAPABILITY=default OMP_NUM_THREADS=1 \\
        python experiments/sac_determinism_probe.py [--steps 1500]

The question behind it (docs/datasets.md, "A build is bit-identical only on the same kind of
CPU"): medium-replay is a SAC run's replay buffer, so it is one build everywhere only if the
training is. Run it with the same environment variables on two kinds of machine and compare the
hashes. It trains the builder's own SB3 SAC run (`train_sac`, Hopper-v5, seed 0) and hashes the
checkpoint it writes at the last step; measured 2026-12-04 on an AVX-512 EPYC with VP2INTERSECT,
1,500 steps: 8309c0c2... with the two variables above (also under MKL_ENABLE_INSTRUCTIONS=SSE4_2),
37a965dd... without; 3,000 steps: 9ba45b90... with, e6e605b0... without. The same four on the
earlier AVX-512 kind (no VP2INTERSECT), 2026-12-06; not yet run on an AVX2 machine.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from dql.builders.locomotion import train_sac  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    args = parser.parse_args()
    from stable_baselines3 import SAC

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:  # the builder's own SAC run, checkpointed at the end
        run = train_sac(
            "Hopper-v5", Path(tmp), args.steps, checkpoint_every=args.steps, progress=False
        )
        model = SAC.load(run / "latest.zip", device="cpu")
    weights = b"".join(p.detach().numpy().tobytes() for p in model.policy.parameters())
    settings = {k: os.environ.get(k, "-") for k in ("MKL_CBWR", "ATEN_CPU_CAPABILITY")}
    print(
        f"{hashlib.md5(weights).hexdigest()}  steps {args.steps}  torch kernels "
        f"{torch.backends.cpu.get_cpu_capability()}  {settings}"
    )


if __name__ == "__main__":
    main()
