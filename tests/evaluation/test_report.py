"""Tests for busgen_monai.evaluation.plots and .report: real PNGs and complete, linked reports."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from busgen_monai.evaluation.metrics import auroc, binary_report
from busgen_monai.evaluation.plots import plot_pr, plot_roc, plot_score_distribution, plot_tsne, tsne_embedding
from busgen_monai.evaluation.report import format_value, to_jsonable, write_report
from busgen_monai.evaluation.stats import bootstrap_ci, delong_test

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_png(path: Path, min_side: int = 200) -> None:
    assert path.is_file() and path.suffix == ".png"
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        w, h = im.size
        arr = np.asarray(im.convert("L"))
    assert w >= min_side and h >= min_side
    assert arr.std() > 5  # something was drawn, not a blank canvas


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 60)
    a = 1 / (1 + np.exp(-(rng.normal(size=120) + 1.5 * y)))
    b = 1 / (1 + np.exp(-(rng.normal(size=120) + 0.7 * y)))
    return y, a, b


def test_plots_are_valid_pngs(tmp_path, data):
    y, a, b = data
    readers = np.array([[0.80, 0.70], [0.85, 0.60], [0.75, 0.78]])  # (sensitivity, specificity)
    roc = plot_roc(
        tmp_path / "roc.png",
        {"model A": (y, a), "model B": (y, b)},
        ci={"model A": (0.8, 0.9)},
        operating_points={"radiologists": readers, "hybrid": (0.9, 0.72)},
    )
    pr = plot_pr(tmp_path / "sub" / "pr.png", {"model A": (y, a)}, operating_points={"reader": (0.8, 0.7)})
    hist = plot_score_distribution(tmp_path / "scores.png", y, a, class_names=("benign", "malignant"))
    hist_raw = plot_score_distribution(tmp_path / "scores_logit.png", y, np.log(a / (1 - a)))
    for p in (roc, pr, hist, hist_raw):
        _assert_png(p)
    with Image.open(hist) as im_cal, Image.open(hist_raw) as im_raw:
        assert im_cal.size[0] > im_raw.size[0]  # probabilities get the extra reliability panel
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave nothing behind
    with pytest.raises(ValueError, match=".png"):
        plot_roc(tmp_path / "roc.pdf", {"a": (y, a)})


def test_tsne_plot_and_embedding(tmp_path):
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1], 30)
    feats = rng.normal(size=(60, 8)) + 6.0 * labels[:, None]
    emb = tsne_embedding(feats, seed=0, perplexity=10)
    assert emb.shape == (60, 2) and np.all(np.isfinite(emb))
    path = plot_tsne(tmp_path / "tsne.png", labels, embedding=emb, label_names={0: "benign", 1: "malignant"})
    _assert_png(path)
    path2 = plot_tsne(tmp_path / "tsne2.png", labels[::3], features=feats[::3], perplexity=30, show_scores=False)
    _assert_png(path2)
    with pytest.raises(ValueError, match="features or"):
        plot_tsne(tmp_path / "x.png", labels)


def test_write_report_contains_numbers_and_links(tmp_path, data):
    y, a, b = data
    auc_a, auc_b, z, p, cov = delong_test(y, a, b)
    boot = bootstrap_ci(auroc, y, a, n_boot=200, seed=0)
    results = {
        "dataset": "toy",
        "model_a": binary_report(y, a, threshold=0.5, target_specificity=0.9),
        "auroc_ci_model_a": boot,  # a dataclass: converted with as_dict()
        "delong": {"auc_a": auc_a, "auc_b": auc_b, "z": z, "p_value": p, "covariance": cov},
        "edge": {"undefined_ppv": math.nan, "threshold_nothing_positive": math.inf, "n": np.int64(3)},
    }
    plot_dir = tmp_path / "elsewhere"
    plots = {
        "ROC": plot_roc(plot_dir / "roc.png", {"A": (y, a), "B": (y, b)}),
        "Scores": plot_score_distribution(tmp_path / "out" / "figs" / "scores.png", y, a),
    }
    json_path, md_path, html_path = write_report(tmp_path / "out", results, plots, title="Toy evaluation")
    out = tmp_path / "out"
    assert {json_path.name, md_path.name, html_path.name} == {"report.json", "report.md", "report.html"}
    assert all(p.parent == out for p in (json_path, md_path, html_path))

    doc = json.loads(json_path.read_text())  # strict JSON (no NaN tokens)
    assert "NaN" not in json_path.read_text() and "Infinity" not in json_path.read_text()
    assert doc["title"] == "Toy evaluation"
    assert doc["results"]["model_a"]["auroc"] == pytest.approx(results["model_a"]["auroc"])
    assert doc["results"]["delong"]["p_value"] == pytest.approx(p)
    np.testing.assert_allclose(doc["results"]["delong"]["covariance"], cov)
    ci = doc["results"]["auroc_ci_model_a"]
    assert (ci["estimate"], ci["lower"], ci["upper"]) == pytest.approx((boot.estimate, boot.lower, boot.upper))
    assert ci["n_boot"] == 200 and ci["n_skipped"] == 0
    assert doc["results"]["edge"] == {"undefined_ppv": None, "threshold_nothing_positive": None, "n": 3}

    md = md_path.read_text()
    html = html_path.read_text()
    for text in (md, html):
        assert "Toy evaluation" in text
        assert format_value(results["model_a"]["auroc"]) in text
        assert format_value(boot.as_dict()) in text  # "0.xxx (95% CI 0.xxx to 0.xxx)"
        assert "95% CI" in text
        assert format_value(p) in text
        assert "n/a" in text and "inf" in text
    # every image link is relative and resolves inside the report folder
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    srcs = re.findall(r'<img src="([^"]+)"', html)
    assert len(links) == 2 and sorted(links) == sorted(srcs) == sorted(doc["plots"].values())
    for rel in links:
        assert not Path(rel).is_absolute() and ".." not in rel
        _assert_png(out / rel)
    assert doc["plots"]["ROC"] == "plots/roc.png"  # copied in from outside out_dir
    assert doc["plots"]["Scores"] == "figs/scores.png"  # already inside: linked in place
    assert not list(out.rglob("*.tmp"))


def test_report_inline_images_and_errors(tmp_path, data):
    y, a, _ = data
    roc = plot_roc(tmp_path / "roc.png", {"A": (y, a)})
    _, _, html_path = write_report(tmp_path / "r", {"auroc": auroc(y, a)}, {"ROC": roc}, inline_images=True)
    assert "data:image/png;base64," in html_path.read_text()
    with pytest.raises(FileNotFoundError, match="missing.png"):
        write_report(tmp_path / "r2", {"x": 1.0}, {"ROC": tmp_path / "missing.png"})
    with pytest.raises(TypeError, match="object"):
        to_jsonable({"x": object()})


def test_format_value():
    assert format_value(0.912345) == "0.9123"
    assert format_value(1.2e-5) == "1.2e-05"
    assert format_value(np.int64(7)) == "7"
    assert format_value(math.nan) == "n/a" and format_value(None) == "n/a"
    assert format_value({"estimate": 0.9, "lower": 0.85, "upper": 0.95, "confidence": 0.95}) == "0.9 (95% CI 0.85 to 0.95)"
