"""Analysis of a study's answers against values worked out by hand for answer patterns chosen to make them simple.

The answers are entered through the app's own API (Flask's test client), as the reader page sends them.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from busgen_readerstudy.analyse import analyse_study
from busgen_readerstudy.app import create_app
from busgen_readerstudy.build import build_study, load_study
from busgen_readerstudy.command import main

N = 6  # images per side


@pytest.fixture(scope="module")
def answered(tmp_path_factory) -> Path:
    """Two readers: 'exact' calls every image right (confidence 5, pathology as labelled); 'gen' calls every image
    generated (confidence 3, no pathology); both rate BI-RADS '4a' on real images."""
    from busgen_monai.data.phantom import write_dataset

    root = tmp_path_factory.mktemp("rs_analyse")
    real = write_dataset(root / "real", n=24, seed=1, size=(64, 64))
    gen = write_dataset(root / "gen", n=24, seed=2, size=(64, 64))
    build_study(real, gen, root / "study", n_per_side=N, seed=0, readers=["exact", "gen"], real_splits=None)
    study = load_study(root / "study")
    items = {it["id"]: it for it in study["items"]}
    app = create_app(root / "study")
    for reader in study["readers"]:
        client = app.test_client()
        assert client.post("/api/login", json={"code": reader["code"]}).status_code == 200
        for image_id in reader["order"]:
            it = items[image_id]
            if reader["name"] == "exact":
                body = {"image_id": image_id, "call": it["truth"], "confidence": 5, "pathology": it["pathology"]}
            else:
                body = {"image_id": image_id, "call": "generated", "confidence": 3}
            if it["truth"] == "real":
                body["birads"] = "4a"
            resp = client.post("/api/answer", json=body)
            assert resp.status_code == 200, resp.get_json()
    return root


def test_accuracy_sensitivity_and_tests_by_hand(answered):
    res = analyse_study(answered / "study", answered / "report", n_boot=200)
    exact, gen = res["per_reader"]["exact"], res["per_reader"]["gen"]
    n = 2 * N
    # all correct: k = n; exact interval [(alpha/2)^(1/n), 1]; p = 2 * 0.5^n; bootstrap degenerate at 1
    assert (exact["accuracy"]["k"], exact["accuracy"]["n"]) == (n, n)
    assert exact["accuracy"]["lower"] == pytest.approx(0.025 ** (1 / n))
    assert exact["accuracy"]["upper"] == 1.0
    assert exact["accuracy"]["p_value"] == pytest.approx(2 * 0.5**n)
    assert exact["accuracy_bootstrap"]["lower"] == exact["accuracy_bootstrap"]["upper"] == 1.0
    assert exact["rating_auroc"]["estimate"] == pytest.approx(1.0)
    # all called generated: sensitivity 1, specificity 0, accuracy exactly 0.5 (p = 1), AUROC 0.5
    assert gen["sensitivity_generated"]["estimate"] == 1.0 and gen["specificity_real"]["estimate"] == 0.0
    assert gen["accuracy"]["estimate"] == 0.5 and gen["accuracy"]["p_value"] == pytest.approx(1.0)
    assert gen["rating_auroc"]["estimate"] == pytest.approx(0.5)
    # pooled: 3n/2 correct of 2n answers; cluster bootstrap over the 2N images
    pooled = res["pooled"]
    assert (pooled["accuracy"]["k"], pooled["accuracy"]["n"]) == (3 * N, 4 * N)
    assert pooled["accuracy_bootstrap"]["resampled"] == "groups" and pooled["accuracy_bootstrap"]["n_units"] == n
    assert res["mean_reader_accuracy"] == pytest.approx(0.75)


def test_agreement_by_hand(answered):
    res = analyse_study(answered / "study", answered / "report_agreement", n_boot=100)
    # Fleiss, 2 readers: generated images rows (0, 2) -> P_i = 1; real images rows (1, 1) -> P_i = 0.
    # P_bar = 1/2; p_generated = 3/4, p_real = 1/4 -> P_e = 10/16; kappa = (1/2 - 5/8) / (3/8) = -1/3
    fl = res["inter_reader"]["real_vs_generated"]
    assert fl["n_images"] == 2 * N and fl["n_readers"] == 2
    assert fl["kappa"] == pytest.approx(-1 / 3)
    assert res["inter_reader"]["pathology"] is None  # only one reader rated pathology
    exact = res["label_agreement"]["exact"]
    assert exact["pathology"]["both"]["n"] == 2 * N and exact["pathology"]["both"]["kappa"] == pytest.approx(1.0)
    assert exact["pathology"]["generated"]["agreement"] == 1.0
    assert res["label_agreement"]["gen"]["pathology"]["both"]["n"] == 0
    # BI-RADS '4a' on every real image against the phantom's labels: raw agreement = share of '4a' labels
    study = load_study(answered / "study")
    labels = [it["birads"] for it in study["items"] if it["truth"] == "real"]
    birads = exact["birads"]["real"]
    assert birads["n"] == N and birads["agreement"] == pytest.approx(labels.count("4a") / N)
    # the images most often called generated: every generated image (2 of 2 readers), then the real ones (1 of 2)
    top = res["most_called_generated"]
    assert [e["truth"] for e in top[:N]] == ["generated"] * N and all(e["called_generated"] == 2 for e in top[:N])
    assert all(e["called_generated"] == 1 and e["truth"] == "real" for e in top[N:2 * N])


def test_report_files_and_cli(answered, tmp_path, capsys):
    assert main(["analyse", str(answered / "study"), "--out", str(tmp_path / "r"), "--n-boot", "100"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["answers"] == 4 * N and line["pooled_accuracy"] == pytest.approx(0.75)
    out = tmp_path / "r"
    html = (out / "report.html").read_text()
    for name in ("accuracy.png", "confidence.png", "roc.png", "most_generated.png", "exact", "gen", "pooled",
                 "Fleiss", "Cohen"):
        assert name in html
    for png in ("accuracy.png", "confidence.png", "roc.png", "most_generated.png"):
        with Image.open(out / png) as im:
            assert im.size[0] > 300
    rows = list(csv.DictReader((out / "answers.csv").open()))
    assert len(rows) == 4 * N and {r["reader"] for r in rows} == {"exact", "gen"}
    assert all(r["correct"] == str(int(r["call"] == r["truth"])) for r in rows)
