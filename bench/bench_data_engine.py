"""Is the data engine at least as fast as a training step? Both timed in this process, one thread each.

    python bench/bench_data_engine.py [--batches 12] [--batch-size 4]

Times drawing batches from the generalist's sampler (scenes from every source, crops, collate)
and training steps of the shipped student on them (forward with simulated click rounds, backward,
AdamW), and prints the ratio engine time / step time per batch (< 1: one DataLoader worker keeps the
trainer fed). MNI sources pay a pseudo-subject (and SLIC supervoxels) every ``reuse`` scenes; the
run is long enough to include some.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ka2er_core.bundle import STUDENT_BUNDLE, load_bundle
from ka2er_core.data.engine import DataEngine
from ka2er_core.training.generalist import SceneCrops, SceneSampler
from ka2er_core.training.promptable import PromptableStep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--base-spacing", type=float, default=0.75)
    args = parser.parse_args()
    torch.set_num_threads(1)
    member = load_bundle(STUDENT_BUNDLE).default
    crops = SceneCrops(member.normalization, member.crop_size, args.base_spacing, member.max_spacing)
    sampler = SceneSampler(DataEngine(), crops, args.batch_size)
    rng = np.random.default_rng(0)
    sampler.draw(rng)  # the first pool of scenes: a one-off cost at a worker's start

    start = time.perf_counter()
    batches = [sampler.draw(rng)[1] for _ in range(args.batches)]
    engine_seconds = (time.perf_counter() - start) / args.batches

    step = PromptableStep(member.model.train())
    optimizer = torch.optim.AdamW(member.model.parameters(), lr=1e-5)
    start = time.perf_counter()
    for batch in batches:
        loss, _ = step(**batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    step_seconds = (time.perf_counter() - start) / args.batches
    print(f"per batch of {args.batch_size} crops ({args.batches} batches, 1 thread each):")
    print(f"  data engine    {engine_seconds:6.2f} s")
    print(f"  training step  {step_seconds:6.2f} s")
    print(f"  ratio engine / step: {engine_seconds / step_seconds:.2f}")


if __name__ == "__main__":
    main()
