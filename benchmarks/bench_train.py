"""Training-step speed and peak memory of the BUSGen pretraining presets on CPU.

One *step* is what ``SupervisedTrainer`` does per iteration with the pretrain bundle's components: draw noise,
timesteps and condition dropout (``ConditionalDiffusionPrepareBatch``), ``DiffusionInferer`` forward of
``ConditionalDiffusionUNet``, MSE to the noise, backward, gradient clipping at 1.0 and an AdamW step. Data loading is
not included (random images and fixed conditions). Every (preset, batch size) runs in its own child process so that
the peak resident memory (``ru_maxrss``) belongs to that configuration alone.

Usage::

    python benchmarks/bench_train.py                                  # tiny and toy, batch 1 and the preset's batch
    python benchmarks/bench_train.py --presets tiny toy paper --batch-sizes 1 4 --steps 3
    python benchmarks/bench_train.py --threads 1 --json results.json

glibc's allocator returns large freed blocks to the system after every step (``mmap``/``munmap`` of the
activation buffers), which costs page faults on the next step. Running with::

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 python benchmarks/bench_train.py

keeps them in the heap (no mmap, no trimming): steps are usually faster and the peak RSS the same or slightly
higher; memory is not given back to the system until the process ends. The table header says whether these
variables were set (child processes inherit them).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

MALLOC_VARS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")


def _realistic_batch(preset: str) -> int:
    from busgen_monai.presets import get_preset

    batch = int(get_preset(preset)["batch_size"])
    return batch if batch > 1 else 4  # paper/toy train with batch 1 (BUSGen); 4 shows the scaling


def run_one(preset: str, batch_size: int, steps: int, warmup: int, threads: int | None) -> dict:
    """Time ``steps`` training steps after ``warmup`` steps in this process; returns the measurements."""
    import torch
    from monai.inferers import DiffusionInferer

    from busgen_monai import presets
    from busgen_monai.engines import ConditionalDiffusionPrepareBatch
    from busgen_monai.networks import ConditionCodec, count_parameters

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    p = presets.get_preset(preset)
    codec = ConditionCodec()
    net = presets.build_network(p, codec)
    net.train()
    scheduler = presets.build_scheduler(p)
    inferer = DiffusionInferer(scheduler)
    prepare = ConditionalDiffusionPrepareBatch(p["num_train_timesteps"], drop_prob=0.1)
    opt = torch.optim.AdamW(net.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
    size = p["image_size"]
    cond = codec.pack_names(["benign", "malignant"] * batch_size, ["GE-LOGIQ-E9"] * (2 * batch_size),
                            boxes=[[[0.3, 0.3, 0.6, 0.55]]] * (2 * batch_size))[:batch_size, 0]
    batch = {"image": torch.rand(batch_size, int(p["image_channels"]), size, size) * 2 - 1, "cond": cond}

    def step() -> float:
        images, target, _, kwargs = prepare(batch, torch.device("cpu"))
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(inferer(images, net, **kwargs), target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), p["grad_clip"])
        opt.step()
        return float(loss)

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        "preset": preset,
        "image_size": size,
        "params_m": round(count_parameters(net) / 1e6, 2),
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
        "steps": steps,
        "s_per_step": round(sum(times) / len(times), 3),
        "s_per_step_min": round(min(times), 3),
        "s_per_image": round(sum(times) / len(times) / batch_size, 3),
        "peak_rss_gib": round(rss_kb / 1024**2, 2),
    }


def _child(preset: str, batch_size: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", preset, str(batch_size),
           "--steps", str(args.steps), "--warmup", str(args.warmup)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0:
        return {"preset": preset, "batch_size": batch_size, "error": (proc.stderr or proc.stdout)[-400:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _table(rows: list[dict]) -> str:
    cols = ["preset", "image_size", "params_m", "batch_size", "threads", "s_per_step", "s_per_step_min",
            "s_per_image", "peak_rss_gib"]
    heads = ["preset", "px", "params (M)", "batch", "threads", "s/step", "min s/step", "s/image", "peak RSS (GiB)"]
    def cell(row: dict, col: str) -> str:
        if "error" in row and col not in ("preset", "batch_size"):
            return "FAILED" if col == "s_per_step" else ""
        return str(row.get(col, ""))

    lines = [heads] + [[cell(r, c) for c in cols] for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(cols))]
    fmt = lambda line: "  ".join(v.rjust(w) for v, w in zip(line, widths))  # noqa: E731
    out = [fmt(lines[0]), "  ".join("-" * w for w in widths)] + [fmt(line) for line in lines[1:]]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "toy"], choices=["tiny", "cpu", "cpu96", "cpu128", "toy", "paper"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=None,
                        help="default: 1 and the preset's realistic batch (tiny 8, toy/paper 4)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per configuration")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--worker", nargs=2, metavar=("PRESET", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(run_one(args.worker[0], int(args.worker[1]), args.steps, args.warmup, args.threads)))
        return 0
    malloc = {k: os.environ[k] for k in MALLOC_VARS if k in os.environ}
    print(f"busgen pretrain training step on CPU ({os.cpu_count()} cores); malloc tuning: {malloc or 'off'}",
          flush=True)
    rows = []
    for preset in args.presets:
        sizes = args.batch_sizes or sorted({1, _realistic_batch(preset)})
        for bs in sizes:
            row = _child(preset, bs, args)
            rows.append(row)
            print(f"  {preset} batch {bs}: " + (f"{row['s_per_step']} s/step, {row['peak_rss_gib']} GiB"
                                               if "error" not in row else f"FAILED: {row['error']}"), flush=True)
    print()
    print(_table(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"malloc": malloc, "rows": rows}, fh, indent=1)
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
