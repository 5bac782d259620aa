"""Train (or resume) the generalist promptable model on the data engine plus the named sample tasks.

    python scripts/train_generalist.py --out runs/generalist --init ka2er_core/bundles/demo \
        --named runs/data/Dataset00* --steps 20000

Resumes from OUT/checkpoint (every --checkpoint-every steps; snapshots of the weights every
--snapshot-every steps in OUT/checkpoint/snapshots for the validation curve). Stop it at any time;
the same command resumes it. Writes the bundle to OUT when --steps are done.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ka2er_core.cli.common import progress_printer
from ka2er_core.training.generalist import GeneralistConfig, train_generalist


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--init", type=Path, help="bundle to fine-tune (default: a new tiny model)")
    parser.add_argument("--named", type=Path, nargs="*", default=[],
                        help="dataset folders whose named targets stay in the mix")
    parser.add_argument("--named-share", type=float, default=0.25)
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--base-spacing", type=float, default=0.75)
    parser.add_argument("--max-spacing", type=float, default=4.0)
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers making batches")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the training process")
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument("--snapshot-every", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--band-channels", type=int,
                        help="grow the --init model with this many band features (ModelConfig)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = GeneralistConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                              workers=args.workers, named_share=args.named_share,
                              checkpoint_every=args.checkpoint_every,
                              snapshot_every=args.snapshot_every)
    out = train_generalist(args.out, config, init=args.init, named_folders=args.named,
                           base_spacing=args.base_spacing, max_spacing=args.max_spacing,
                           band_channels=args.band_channels,
                           progress=progress_printer("generalist"))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
