"""How fast answers are committed when several readers answer at once (the real server process, over HTTP).

    python plugins/busgen-readerstudy/tools/bench_answers.py --readers 4 --per-side 100 --out runs/readerstudy/bench

Builds a study from two phantom data sets (the app does not care where the images come from), serves it with
``python -m busgen_readerstudy serve`` (waitress, SQLite WAL, synchronous=FULL), and lets one thread per reader
post an answer for every image of its reading order as fast as the server takes them. Prints and writes
(``--out``/bench.json) the latency per answer (median, 95th percentile, max), the answers per second, and checks
that the database holds exactly one answer per reader and image.
"""

from __future__ import annotations

import argparse
import json
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--readers", type=int, default=4)
    p.add_argument("--per-side", type=int, default=100)
    p.add_argument("--out", default="runs/readerstudy/bench")
    args = p.parse_args(argv)
    from busgen_monai.data.phantom import write_dataset

    from busgen_readerstudy.build import build_study
    from busgen_monai.utils.io import atomic_write_json

    out = Path(args.out)
    n = 2 * args.per_side
    real = write_dataset(out / "real", n=n + 20, seed=1, size=(64, 64))
    gen = write_dataset(out / "gen", n=n + 20, seed=2, size=(64, 64))
    study_dir = out / "study"
    for f in study_dir.glob("answers.sqlite*"):
        f.unlink()
    build_study(real, gen, study_dir, n_per_side=args.per_side, seed=0, readers=args.readers, real_splits=None,
                force=True)
    study = json.loads((study_dir / "study.json").read_text())
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "busgen_readerstudy", "serve", str(study_dir), "--port",
                               str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def reader_loop(reader: dict) -> None:
        for k, image_id in enumerate(reader["order"]):
            body = json.dumps({"image_id": image_id, "call": "real" if k % 2 else "generated",
                               "confidence": 1 + k % 5}).encode()
            req = urllib.request.Request(base + "/api/answer", data=body, method="POST",
                                         headers={"Content-Type": "application/json", "X-Reader-Code": reader["code"]})
            t0 = time.perf_counter()
            try:
                urllib.request.urlopen(req, timeout=30).read()
            except urllib.error.HTTPError as err:
                with lock:
                    errors.append(f"{err.code} {err.read()[:200]!r}")
                continue
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)

    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(base + "/api/state", timeout=1)
            except urllib.error.HTTPError:
                break
            except OSError:
                time.sleep(0.1)
        threads = [threading.Thread(target=reader_loop, args=(r,)) for r in study["readers"]]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    finally:
        server.terminate()
        server.wait(10)
    con = sqlite3.connect(study_dir / "answers.sqlite")
    stored = con.execute("SELECT COUNT(*), COUNT(DISTINCT reader || image_id) FROM answers").fetchone()
    con.close()
    lat = sorted(latencies)
    result = {
        "readers": args.readers, "images": n, "answers_sent": args.readers * n, "answers_ok": len(lat),
        "errors": errors[:5], "n_errors": len(errors), "stored": stored[0], "stored_distinct": stored[1],
        "wall_s": round(wall, 2), "answers_per_s": round(len(lat) / wall, 1),
        "latency_ms": {"median": round(1000 * statistics.median(lat), 1),
                       "p95": round(1000 * lat[int(0.95 * (len(lat) - 1))], 1), "max": round(1000 * lat[-1], 1)},
    }
    atomic_write_json(out / "bench.json", result)
    print(json.dumps(result))
    return 0 if stored[0] == stored[1] == args.readers * n and not errors else 1


if __name__ == "__main__":
    raise SystemExit(main())
