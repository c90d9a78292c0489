"""The reader-study app driven in a real headless Chromium (Debian's package) against the real server process.

Real side: BUS-BRA images; generated side: the project's phantom generator (fast; the slow test in
test_readerstudy_pipeline.py uses the shipped diffusion generator). The server runs as its own process exactly as
``busgen reader-study serve`` runs it (waitress), and is killed with SIGKILL mid-study to check that answers
survive and the reader resumes.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from busgen_readerstudy.browser import Chromium, find_chromium
from busgen_readerstudy.build import build_study

pytestmark = pytest.mark.skipif(find_chromium() is None,
                                reason="chromium not installed (CI installs Debian's package: .ci/setup.d/chromium.sh)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m busgen_readerstudy serve STUDY`` as a child process."""

    def __init__(self, study: Path, port: int):
        self.study, self.port = study, port
        self.base = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Server":
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "busgen_readerstudy", "serve", str(self.study),
                                      "--port", str(self.port), "--threads", "4"],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stdout.read().decode()[-2000:]}")
            try:
                urllib.request.urlopen(self.base + "/api/state", timeout=1)
            except urllib.error.HTTPError:
                return self  # 401: up and refusing a request without a reader code
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("server did not come up within 30 s")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="module")
def study(tmp_path_factory, bus_bra_root) -> Path:
    from busgen_monai.data.loaders import load_bus_bra
    from busgen_monai.data.phantom import write_dataset
    from busgen_monai.data.schema import save_datalist

    root = tmp_path_factory.mktemp("rs_browser")
    real = load_bus_bra(bus_bra_root, check_masks=False, relative_to=root)
    save_datalist(real, root / "real.json", validate=False)
    gen = write_dataset(root / "gen", n=12, seed=3, size=(64, 64))
    build_study(root / "real.json", gen, root / "study", n_per_side=4, seed=5, readers=["ana", "ben"],
                real_splits=["test"])
    return root / "study"


def _codes(study: Path) -> dict[str, str]:
    return dict(list(csv.reader(io.StringIO((study / "reader_codes.csv").read_text())))[1:])


def _login(page, base: str, code: str) -> str:
    page.goto(base + "/")
    page.wait_for("!document.getElementById('login-view').hidden")
    page.click("#login-code")
    page.type(code)
    page.key("Enter")
    return page.wait_for("document.body.dataset.ready")


def _answer(page, record: dict, k: int) -> str | None:
    """Answer the image on screen with the keyboard (and the optional fields by selecting), as a reader would;
    return the next image id (None when finished)."""
    image_id = page.eval("document.body.dataset.ready")
    call = "generated" if k % 3 else "real"
    conf = 1 + k % 5
    pathology = ("benign", "malignant", "")[k % 3]
    birads = ("", "3", "4a")[k % 3]
    page.key("g" if call == "generated" else "r")
    page.key(str(conf))
    page.eval(f"document.getElementById('pathology').value = {json.dumps(pathology)}; "
              f"document.getElementById('birads').value = {json.dumps(birads)}; true")
    assert page.eval("document.getElementById('submit').disabled") is False
    page.key("Enter")
    record[image_id] = {"call": call, "confidence": conf, "pathology": pathology or None, "birads": birads or None}
    nxt = page.wait_for(f"(document.body.dataset.ready !== {json.dumps(image_id)} && document.body.dataset.ready)"
                        " || (!document.getElementById('done-view').hidden && 'done')")
    return None if nxt == "done" else nxt


def _progress(page) -> str:
    return page.eval("document.getElementById('progress-text').textContent")


def _fetch(page, path: str, body: dict | None = None, headers: dict | None = None) -> dict:
    opts = {"method": "POST" if body is not None else "GET", "headers": {"Content-Type": "application/json",
                                                                         **(headers or {})}}
    if body is not None:
        opts["body"] = json.dumps(body)
    return page.eval(f"fetch({json.dumps(path)}, {json.dumps(opts)}).then(async r => "
                     "({status: r.status, body: await r.text()}))")


def test_two_readers_resume_after_kill_refusals_and_export(study):
    codes = _codes(study)
    n_images = len(json.loads((study / "study.json").read_text())["items"])
    server = Server(study, _free_port()).start()
    try:
        with Chromium() as browser:
            ana, ben = browser.new_page(), browser.new_page()  # separate browser contexts: separate cookies
            answers: dict[str, dict] = {"ana": {}, "ben": {}}
            first = _login(ana, server.base, codes["ana"])
            assert _progress(ana) == f"0 / {n_images}"
            ben_first = _login(ben, server.base, codes["ben"])
            assert ana.eval("document.getElementById('reader-name').textContent") == "ana"
            # both readers answer, interleaved
            for k in range(3):
                _answer(ana, answers["ana"], k)
                _answer(ben, answers["ben"], k + 7)
            assert first in answers["ana"] and ben_first in answers["ben"]
            assert _progress(ana) == f"3 / {n_images}"
            shown = ana.eval("document.body.dataset.ready")

            # reload: the reader resumes on the same unanswered image, still logged in
            ana.reload()
            assert ana.wait_for("document.body.dataset.ready") == shown
            assert _progress(ana) == f"3 / {n_images}"

            # refusals, sent from the reader's own page (her cookie), with clear messages
            replay = _fetch(ana, "/api/answer", {"image_id": first, "call": "real", "confidence": 3})
            assert replay["status"] == 409 and "already answered" in json.loads(replay["body"])["error"]
            for bad, word in (({"image_id": shown, "call": "real", "confidence": 6}, "confidence"),
                              ({"image_id": shown, "call": "maybe", "confidence": 3}, "call"),
                              ({"image_id": shown, "call": "real", "confidence": 3, "birads": "7"}, "BI-RADS"),
                              ({"image_id": shown, "call": "real", "confidence": 3, "pathology": "x"}, "pathology")):
                r = _fetch(ana, "/api/answer", bad)
                assert r["status"] == 400 and word in json.loads(r["body"])["error"], r
            r = _fetch(ana, "/api/answer", {"image_id": "000000000000", "call": "real", "confidence": 3})
            assert r["status"] == 403 and "not assigned" in json.loads(r["body"])["error"]
            assert _fetch(ana, "/image/000000000000")["status"] == 403
            unknown = _fetch(ben, "/api/answer", {"image_id": shown, "call": "real", "confidence": 3},
                             headers={"X-Reader-Code": "not-a-code"})
            assert unknown["status"] == 401 and "unknown reader" in json.loads(unknown["body"])["error"]
            assert _progress(ana) == f"3 / {n_images}"  # nothing refused was stored

            # the server is killed mid-study; a new process serves the same study: nothing is lost
            server.kill()
            server = Server(study, server.port).start()
            ana.reload()
            assert ana.wait_for("document.body.dataset.ready") == shown
            assert _progress(ana) == f"3 / {n_images}"

            # both finish, interleaved
            k = 3
            done = {"ana": False, "ben": False}
            while not all(done.values()):
                for name, page in (("ana", ana), ("ben", ben)):
                    if not done[name]:
                        done[name] = _answer(page, answers[name], k if name == "ana" else k + 7) is None
                k += 1
            for page, name in ((ana, "ana"), (ben, "ben")):
                assert page.eval("document.getElementById('done-text').textContent").startswith(f"All {n_images} images")
                assert len(answers[name]) == n_images

            # coordinator page: progress and exports match what the readers answered
            admin = browser.new_page()
            admin.goto(server.base + "/admin")
            admin.wait_for("!document.getElementById('admin-login').hidden")
            admin.click("#admin-code")
            admin.type(codes["ADMIN"])
            admin.key("Enter")
            admin.wait_for("document.body.dataset.loaded")
            rows = admin.eval("[...document.querySelectorAll('#progress-table tbody tr')]"
                              ".map(tr => [...tr.children].slice(0, 3).map(td => td.textContent))")
            assert rows == [["ana", str(n_images), str(n_images)], ["ben", str(n_images), str(n_images)]]
            assert "replay: 1" in admin.eval("document.getElementById('refused').textContent")
            exported = json.loads(_fetch(admin, "/api/admin/export.json")["body"])["answers"]
            got = {(a["reader"], a["image_id"]): {k2: a[k2] for k2 in ("call", "confidence", "pathology", "birads")}
                   for a in exported}
            want = {(r, i): v for r, rec in answers.items() for i, v in rec.items()}
            assert got == want
            truth = {it["id"]: it["truth"] for it in json.loads((study / "study.json").read_text())["items"]}
            assert all(a["truth"] == truth[a["image_id"]] and a["correct"] == int(a["call"] == a["truth"])
                       for a in exported)
            table = list(csv.DictReader(io.StringIO(_fetch(admin, "/api/admin/export.csv")["body"])))
            assert [(r["reader"], r["image_id"], r["call"], int(r["confidence"])) for r in table] == \
                [(a["reader"], a["image_id"], a["call"], a["confidence"]) for a in exported]
            assert _fetch(ana, "/api/admin/export.json")["status"] == 401  # a reader is not the coordinator

            # offline: every request went to the study server; no script errors
            for page in (ana, ben, admin):
                urls = page.requested_urls()
                assert urls and all(u.startswith(server.base + "/") for u in urls), urls
                assert page.console_errors() == []
    finally:
        server.stop()


def test_viewer_zoom_and_window_level_from_the_keyboard(study, tmp_path):
    """The default view shows the image's own pixels; window/level and zoom keys change what the reader sees."""
    import numpy as np
    from PIL import Image

    fresh = build_study(study.parent / "real.json", study.parent / "gen" / "datalist.json", tmp_path / "study",
                        n_per_side=2, seed=9, readers=1)
    code = _codes(Path(fresh["study"]))["reader01"]
    server = Server(Path(fresh["study"]), _free_port()).start()
    pixels = ("(() => { const c = document.getElementById('canvas');"
              " return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data"
              ".filter((_, i) => i % 4 === 0)); })()")
    try:
        with Chromium() as browser:
            page = browser.new_page()
            image_id = _login(page, server.base, code)
            with Image.open(tmp_path / "study" / "images" / f"{image_id}.png") as im:
                truth = np.asarray(im.convert("L"), dtype=np.int64)
            shown = np.array(page.eval(pixels), dtype=np.int64).reshape(truth.shape)
            assert np.array_equal(shown, truth)
            for _ in range(5):
                page.key("ArrowUp")  # level up: darker
            darker = np.array(page.eval(pixels), dtype=np.int64)
            assert page.eval("document.getElementById('wl-text').textContent") == "L 148 / W 255"
            assert darker.sum() < truth.sum() and np.all(darker <= truth.ravel())
            for _ in range(10):
                page.key("ArrowLeft")  # narrower window: more contrast
            narrow = np.array(page.eval(pixels), dtype=np.int64)
            assert narrow.std() > darker.std()
            width0 = page.eval("parseFloat(document.getElementById('canvas').style.width)")
            page.key("+")
            assert page.eval("document.getElementById('zoom-text').textContent") == "125%"
            assert page.eval("parseFloat(document.getElementById('canvas').style.width)") > width0
            page.key("0")
            assert np.array_equal(np.array(page.eval(pixels), dtype=np.int64).reshape(truth.shape), truth)
            assert page.eval("document.getElementById('zoom-text').textContent") == "100%"
            # a call without a confidence cannot be saved
            page.key("r")
            assert page.eval("document.getElementById('submit').disabled") is True
            page.key("Enter")
            assert _progress(page) == "0 / 4"
    finally:
        server.stop()
