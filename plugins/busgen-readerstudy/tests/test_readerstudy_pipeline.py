"""Slow: the study built from BUS-BRA and images of the shipped diffusion generator through the ``busgen`` command,
answered through the app and analysed; and the build's crop window against the library's own (torch) function."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from busgen_readerstudy.app import create_app
from busgen_readerstudy.build import load_study, square_window

pytestmark = pytest.mark.slow
BUSGEN = [str(Path(sys.executable).parent / "busgen")]  # the console script installed next to this interpreter


def test_square_window_equals_the_pretrain_validation_window():
    from busgen_monai.data.transforms import box_preserving_window

    rng = np.random.default_rng(0)
    for _ in range(2000):
        h, w = (int(v) for v in rng.integers(20, 600, 2))
        boxes = []
        for _ in range(int(rng.integers(0, 3))):
            x1, y1 = rng.uniform(0, 0.9, 2)
            boxes.append([x1, y1, rng.uniform(x1 + 0.01, 1.0), rng.uniform(y1 + 0.01, 1.0)])
        assert square_window(h, w, boxes) == box_preserving_window(h, w, boxes, scale=1.0, position=(0.5, 0.5),
                                                                   min_scale=1.0), (h, w, boxes)


def test_bus_bra_against_the_shipped_generator_end_to_end(tmp_path, bus_bra_root):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    subprocess.run(BUSGEN + ["datalist", "build", "bus-bra", str(bus_bra_root), str(tmp_path / "real.json")],
                   check=True, env=env, capture_output=True)
    subprocess.run(BUSGEN + ["sample", str(tmp_path / "gen"), "--n", "4", "--seed", "0", "--quiet"],
                   check=True, env=env, capture_output=True)
    subprocess.run(BUSGEN + ["reader-study", "build", "--real", str(tmp_path / "real.json"), "--generated",
                             str(tmp_path / "gen" / "datalist.json"), "--out", str(tmp_path / "study"), "--n", "4",
                             "--readers", "r1,r2", "--seed", "3"], check=True, env=env, capture_output=True)
    study = load_study(tmp_path / "study")
    gen_items = json.loads((tmp_path / "gen" / "datalist.json").read_text())["training"]
    for it in study["items"]:
        with Image.open(tmp_path / "study" / "images" / f"{it['id']}.png") as im:
            shown = np.asarray(im)
        assert shown.shape == (64, 64)
        if it["truth"] == "generated":
            src = gen_items[it["source"]["index"]]
            assert it["pathology"] == src["pathology"]
            with Image.open(tmp_path / "gen" / src["image"]) as im:
                assert np.array_equal(shown, np.asarray(im.convert("L")))
    app = create_app(tmp_path / "study")
    items = {it["id"]: it for it in study["items"]}
    for k, reader in enumerate(study["readers"]):
        client = app.test_client()
        client.post("/api/login", json={"code": reader["code"]})
        for j, image_id in enumerate(reader["order"]):
            call = items[image_id]["truth"] if (j + k) % 2 else "real"
            assert client.post("/api/answer", json={"image_id": image_id, "call": call,
                                                    "confidence": 1 + j % 5}).status_code == 200
    out = subprocess.run(BUSGEN + ["reader-study", "analyse", str(tmp_path / "study"), "--out",
                                   str(tmp_path / "report")], check=True, env=env, capture_output=True, text=True)
    line = json.loads(out.stdout.strip().splitlines()[-1])
    assert line["answers"] == 16
    assert (tmp_path / "report" / "report.html").is_file()
