"""``busgen train-protector CHECKPOINT DATALIST``: train the CPSample protecting classifier for a generator.

Runs the ``cpsample`` bundle's ``train_protector`` config in this process (``monai.bundle.run``), i.e. exactly::

    busgen run cpsample train_protector --generator_checkpoint CHECKPOINT --datalist DATALIST [--key value ...]

The protector is written next to the generator (``<checkpoint folder>/protector.pt``) unless ``--out`` is given.
Extra ``--key value`` pairs after ``--`` are passed to the config (e.g. ``-- --channels [16,32,32]``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="busgen train-protector",
        description="Train the CPSample protecting classifier (random labels, noised images, all timesteps) for a "
                    "generator, from the generator's training datalist; writes protector.pt next to the generator.")
    p.add_argument("checkpoint", help="the generator checkpoint it protects (file or models/ folder)")
    p.add_argument("datalist", help="the generator's training datalist (split 'training')")
    p.add_argument("--out", default=None, help="protector file (default: <checkpoint folder>/protector.pt)")
    p.add_argument("--preset", default="paper", help="generator preset: sets the image size and schedule")
    p.add_argument("--image-size", type=int, default=None, help="override the preset's image size")
    p.add_argument("--max-iterations", type=int, default=None, help="upper bound on optimiser steps")
    p.add_argument("--target-accuracy", type=float, default=None, help="stop when memorised to this accuracy")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--label-seed", type=int, default=None, help="seed of the random labels")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.epilog = "Arguments after `--` are --key value pairs passed to the bundle config."
    argv = list(argv if argv is not None else sys.argv[1:])
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    args = p.parse_args(argv)

    from busgen_monai.bundle_run import parse_overrides, run_bundle

    overrides = {"generator_checkpoint": args.checkpoint, "datalist": args.datalist, "preset_name": args.preset}
    for key, value in (("protector_path", args.out), ("image_size", args.image_size),
                       ("max_iterations", args.max_iterations), ("target_accuracy", args.target_accuracy),
                       ("batch_size", args.batch_size), ("lr", args.lr), ("label_seed", args.label_seed),
                       ("seed", args.seed)):
        if value is not None:
            overrides[key] = value
    if args.no_progress:
        overrides["progress_bar"] = False
    overrides.update(parse_overrides(extra))
    run_bundle("cpsample", "train_protector", **overrides)
    return 0
