"""Screenshots of the reader page, the coordinator page and the report, taken with headless Chromium.

    python plugins/busgen-readerstudy/tools/screenshots.py STUDY --out docs/images

STUDY must be a fresh study (no answers yet; build one with ``busgen reader-study build``). The first reader
answers three images with the keyboard (as a person would), then the script fills in the rest of the study
with SCRIPTED answers (a fixed pseudo-random pattern, not a reading) so that the report has something to show:
the report screenshot shows the layout, its numbers are not results of any reader.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from PIL import Image

from busgen_readerstudy.analyse import analyse_study
from busgen_readerstudy.browser import Chromium


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _small_png(path: Path, colours: int = 64) -> None:
    """Re-save a screenshot as an adaptive-palette PNG (a few hundred kB -> tens of kB)."""
    with Image.open(path) as im:
        pal = im.convert("RGB").quantize(colors=colours, method=Image.Quantize.MEDIANCUT)
    pal.save(path, optimize=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("study")
    p.add_argument("--out", default="docs/images")
    args = p.parse_args(argv)
    study_dir, out = Path(args.study), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    codes = dict(list(csv.reader(io.StringIO((study_dir / "reader_codes.csv").read_text())))[1:])
    study = json.loads((study_dir / "study.json").read_text())
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "busgen_readerstudy", "serve", str(study_dir), "--port", str(port)])
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(base + "/api/state", timeout=1)
            except urllib.error.HTTPError:
                break
            except OSError:
                time.sleep(0.1)
        with Chromium(width=1120, height=720) as browser:
            page = browser.new_page()
            page.goto(base + "/")
            page.wait_for("!document.getElementById('login-view').hidden")
            page.click("#login-code")
            page.type(codes["reader01"])
            page.key("Enter")
            page.wait_for("document.body.dataset.ready")
            for k in range(3):
                shown = page.eval("document.body.dataset.ready")
                for key in ("g" if k % 2 else "r", str(3 + k)):
                    page.key(key)
                page.key("Enter")
                page.wait_for(f"document.body.dataset.ready !== '{shown}'")
            page.key("+")
            page.key("ArrowDown")
            page.key("ArrowDown")
            page.key("g")
            page.key("4")
            page.eval("document.getElementById('pathology').value = 'benign'; true")
            time.sleep(0.3)
            _small_png(page.screenshot(out / "reader_study_reader.png"))

            # scripted answers for everything else (layout only; not a reading)
            rng = random.Random(0)
            for reader in study["readers"]:
                tab = browser.new_page()
                tab.goto(base + "/")
                tab.eval(f"fetch('/api/login', {{method: 'POST', headers: {{'Content-Type': 'application/json'}},"
                         f" body: JSON.stringify({{code: {json.dumps(codes[reader['name']])}}})}}).then(r => r.status)")
                for image_id in reader["order"]:
                    body = {"image_id": image_id, "call": rng.choice(["real", "generated"]),
                            "confidence": rng.randint(1, 5), "pathology": rng.choice(["benign", "malignant", None]),
                            "birads": rng.choice(["3", "4a", "4b", None])}
                    tab.eval(f"fetch('/api/answer', {{method: 'POST', headers: {{'Content-Type': 'application/json'}},"
                             f" body: JSON.stringify({json.dumps(body)})}}).then(r => r.status)")
                if reader["name"] == "reader01":
                    break  # readers 02 and 03 stay part-way: the coordinator page shows progress
            for reader in study["readers"][1:]:
                tab = browser.new_page()
                tab.goto(base + "/")
                tab.eval(f"fetch('/api/login', {{method: 'POST', headers: {{'Content-Type': 'application/json'}},"
                         f" body: JSON.stringify({{code: {json.dumps(codes[reader['name']])}}})}}).then(r => r.status)")
                share = 0.6 if reader["name"] == "reader02" else 0.35
                for image_id in reader["order"][: int(share * len(reader["order"]))]:
                    body = {"image_id": image_id, "call": rng.choice(["real", "generated"]),
                            "confidence": rng.randint(1, 5)}
                    tab.eval(f"fetch('/api/answer', {{method: 'POST', headers: {{'Content-Type': 'application/json'}},"
                             f" body: JSON.stringify({json.dumps(body)})}}).then(r => r.status)")
            admin = browser.new_page()
            admin.goto(base + "/admin")
            admin.wait_for("!document.getElementById('admin-login').hidden")
            admin.click("#admin-code")
            admin.type(codes["ADMIN"])
            admin.key("Enter")
            admin.wait_for("document.body.dataset.loaded")
            browser.send("Emulation.setDeviceMetricsOverride", {"width": 760, "height": 300, "deviceScaleFactor": 1,
                                                                 "mobile": False}, admin.session)
            _small_png(admin.screenshot(out / "reader_study_admin.png"))

            report = analyse_study(study_dir, study_dir.parent / "report_scripted", n_boot=1000,
                                   note="Scripted answers (a fixed pseudo-random pattern) to show the layout: "
                                        "these numbers are not the result of any reading.")
            del report
            rep = browser.new_page()
            rep.goto((study_dir.parent / "report_scripted" / "report.html").resolve().as_uri())
            rep.wait_for("[...document.images].every(i => i.complete)")
            _small_png(rep.screenshot(out / "reader_study_report.png", full_page=True), colours=96)
    finally:
        server.terminate()
        server.wait(10)
    for name in ("reader", "admin", "report"):
        path = out / f"reader_study_{name}.png"
        print(path, path.stat().st_size // 1024, "kB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
