"""Loss curves and speed of a pretraining run, read from its console logs.

The pretrain bundle logs one line per iteration (``Epoch: e/E, Iter: i/N -- train_loss: x``, MONAI's
``StatsHandler``) and one per validation (``iteration k: val_loss = y``). This script reads one or more such logs
(the parts of a resumed run, in order), and writes a PNG with the training loss (raw and smoothed) and the validation
loss against the global iteration, plus a JSON with the numbers: median seconds per iteration (from the time stamps;
gaps over a minute - restarts, validation, sample grids - are left out), training loss per epoch, validation losses.

    python benchmarks/training_curve.py runs/busbra_cpu/train_part1.log runs/busbra_cpu/train.log \\
        --out runs/busbra_cpu/curve.png
"""

from __future__ import annotations

import argparse
import json
import re
from datetime import datetime
from pathlib import Path

import numpy as np

ITER = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+) - INFO - Epoch: (\d+)/(\d+), Iter: (\d+)/(\d+) -- train_loss: "
                  r"([0-9.eE+-]+)")
VAL = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+) - .*iteration (\d+): val_loss = ([0-9.eE+-]+)")


def read_logs(paths):
    """Rows ``(time, global_iteration, epoch, loss)`` and ``(iteration, val_loss)``; a later log's rows replace an
    earlier one's at the same iteration (a resumed run repeats the iterations after its last checkpoint)."""
    train: dict[int, tuple] = {}
    val: dict[int, float] = {}
    for path in paths:
        for line in Path(path).read_text(errors="replace").splitlines():
            m = ITER.match(line)
            if m:
                t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
                epoch, n_iter = int(m.group(2)), int(m.group(5))
                it = (epoch - 1) * n_iter + int(m.group(4))
                train[it] = (t, epoch, float(m.group(6)))
                continue
            m = VAL.match(line)
            if m and int(m.group(2)) > 0:
                val[int(m.group(2))] = float(m.group(3))
    return train, val


def summarise(train, val, window: int = 50) -> dict:
    its = np.array(sorted(train))
    loss = np.array([train[i][2] for i in its])
    times = [train[i][0] for i in its]
    dt = np.array([(b - a).total_seconds() for a, b in zip(times[:-1], times[1:])])
    consecutive = np.diff(its) == 1
    steps = dt[consecutive & (dt > 0) & (dt < 60)]
    epochs = {}
    for i in its:
        epochs.setdefault(train[i][1], []).append(train[i][2])
    smooth = np.convolve(loss, np.ones(window) / window, mode="valid") if len(loss) >= window else loss
    return {
        "iterations": int(its.max()) if len(its) else 0,
        "s_per_iteration_median": round(float(np.median(steps)), 3) if len(steps) else None,
        "train_loss_per_epoch": {int(e): round(float(np.mean(v)), 5) for e, v in sorted(epochs.items())},
        "val_loss": {int(k): round(v, 5) for k, v in sorted(val.items())},
        "train_loss_smoothed_last": round(float(smooth[-1]), 5) if len(smooth) else None,
    }, its, loss, smooth


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("logs", nargs="+", help="console logs of the run, in order")
    p.add_argument("--out", required=True, help="PNG to write (a JSON with the same name is written too)")
    p.add_argument("--window", type=int, default=50, help="moving-average window (iterations)")
    args = p.parse_args(argv)
    train, val = read_logs(args.logs)
    if not train:
        raise SystemExit(f"no training-loss lines in {args.logs}")
    summary, its, loss, smooth = summarise(train, val, args.window)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.plot(its, loss, color="0.8", lw=0.5, label="training loss (min-SNR weighted)")
    ax.plot(its[len(its) - len(smooth):], smooth, color="C0", lw=1.5, label=f"moving average ({args.window})")
    if val:
        k = sorted(val)
        ax.plot(k, [val[i] for i in k], "o-", color="C3", label="validation epsilon-MSE (fixed batch)")
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    ax.set_title(f"{summary['iterations']} iterations, median {summary['s_per_iteration_median']} s/iteration",
                 fontsize=9)
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "train_loss_per_epoch"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
