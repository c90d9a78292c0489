"""Benchmark: fuzz the ingester with seeded mutants of real DICOM files carrying distinctive identifiers.

The bases are the real files of ../shared/data/dicom (or ``BUSGEN_SHARED_DATA``) and pydicom's ultrasound and
palette samples, re-identified with :func:`busgen_monai.synthetic.dicom_fuzz.reidentify`. ``--mutants`` mutants
(header flips, element lengths too large / too small, VR damage, inserted/deleted header bytes, pixel flips,
truncation, mixes) go through one ``busgen ingest`` run, and the script reports:

- mutants tried, ingested, rejected (by reason);
- crashes: ``internal_error`` rejects (a bug), plus a non-zero exit of the run itself;
- hangs: ``timeout`` rejects (``--file-timeout`` seconds per file);
- decoder crashes contained: ``worker_crash`` rejects (the run went on);
- lost: input files in neither the datalist nor the rejects;
- PHI hits: identifier values found in any output byte (datalist, rejects, report, manifest, state, stdout);
- peak memory (max RSS of this process, MiB; the decoding workers are forked from a server process and
  are not counted) and wall time.

Usage::

    python benchmarks/bench_fuzz.py [--mutants 3000] [--seed 0] [--workers 2] [--json results.json]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import resource
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

from pydicom.data import get_testdata_file

from busgen_monai.synthetic.dicom_fuzz import audit_outputs, reidentify, write_mutants
from busgen_monai.data.ingest import file_id_of, ingest_main

SHARED = Path(os.environ.get("BUSGEN_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SAMPLES = ["examples_rgb_color.dcm", "ExplVR_BigEnd.dcm", "examples_ybr_color.dcm", "examples_jpeg2k.dcm",
           "examples_palette.dcm"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mutants", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--file-timeout", type=float, default=60.0)
    ap.add_argument("--stride", type=int, default=4, help="keep every N-th frame (decoding still reads all)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory(prefix="bench_fuzz_") as tmp:
        tmp = Path(tmp)
        (tmp / "bases").mkdir()
        sources = sorted((SHARED / "dicom").glob("*.dcm")) + [Path(get_testdata_file(n)) for n in SAMPLES]
        values, bases = [], []
        for i, src in enumerate(sources):
            dst = tmp / "bases" / f"{i:02d}.dcm"
            values += reidentify(src, dst, i)
            bases.append(dst.read_bytes())
        kinds = write_mutants(bases, tmp / "src", args.mutants, seed=args.seed)
        buf = io.StringIO()
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            rc = ingest_main([str(tmp / "src"), str(tmp / "out"), "--salt", "bench", "--no-progress",
                              "--workers", str(args.workers), "--file-timeout", str(args.file_timeout),
                              "--stride", str(args.stride)])
        wall = time.perf_counter() - t0
        out = tmp / "out"
        reasons: Counter = Counter()
        rejected, ingested = set(), set()
        if (out / "rejects.csv").is_file():
            with open(out / "rejects.csv", newline="") as fh:
                for r in csv.DictReader(fh):
                    reasons[r["reason"]] += 1
                    rejected.add(r["file_id"])
        if (out / "datalist.json").is_file():
            data = json.loads((out / "datalist.json").read_text())
            ingested = {it["provenance"]["file_id"] for s in ("training", "validation", "test")
                        for it in data.get(s, [])}
        wanted = {file_id_of(name, "bench") for name in kinds}
        hits = audit_outputs(out, values, buf.getvalue())
    results = {
        "mutants": args.mutants, "bases": len(bases), "seed": args.seed, "workers": args.workers,
        "exit_code": rc, "ingested": len(ingested & wanted), "rejected": len(rejected & wanted),
        "crashes": reasons.get("internal_error", 0) + (rc not in (0,)), "hangs": reasons.get("timeout", 0),
        "worker_crash_contained": reasons.get("worker_crash", 0), "lost": len(wanted - ingested - rejected),
        "phi_hits": len(hits), "phi_examples": [f"{f}: {v[:3]}..." for f, v in hits[:5]],
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "wall_s": round(wall, 1), "reasons": dict(reasons.most_common()),
    }
    for k, v in results.items():
        print(f"{k}: {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
