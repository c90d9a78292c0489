"""AP / AP_small / FROC / bootstrap of busgen_detect.metrics against independent hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from busgen_detect.metrics import (
    ap_from_matches,
    average_precision,
    bootstrap_detection,
    detection_summary,
    froc_sensitivities,
    match_detections,
    match_image,
    paired_bootstrap,
    small_area_threshold,
)

GT_A = [0.10, 0.10, 0.30, 0.30]
GT_B = [0.60, 0.60, 0.80, 0.90]


def iou(a, b):
    """Plain-Python IoU (independent of monai.data.box_utils)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    ua = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / ua


def reference_ap(preds, truths, thr=0.5):
    """Independent AP: greedy matching in pure Python, then precision/recall at every detection and the
    interpolated precision p_interp(r) = max_{r' >= r} p(r') summed over recall increments (double loop)."""
    dets = []
    for i, p in enumerate(preds):
        for b, s in zip(p["boxes"], p["scores"]):
            dets.append((s, i, b))
    n_gt = sum(len(t["boxes"]) for t in truths)
    if n_gt == 0:
        return float("nan")
    # per-image greedy matching in score order
    flags = {}
    for i, p in enumerate(preds):
        taken = set()
        order = sorted(range(len(p["scores"])), key=lambda k: -p["scores"][k])
        for k in order:
            best, best_iou = None, thr
            for g, gb in enumerate(truths[i]["boxes"]):
                o = iou(p["boxes"][k], gb)
                if g not in taken and o >= best_iou:
                    best, best_iou = g, o
            flags[(i, k)] = best is not None
            if best is not None:
                taken.add(best)
    ranked = []
    for i, p in enumerate(preds):
        for k, s in enumerate(p["scores"]):
            ranked.append((-s, i, k))
    ranked.sort()
    tp = fp = 0
    prec, rec = [], []
    for _, i, k in ranked:
        if flags[(i, k)]:
            tp += 1
        else:
            fp += 1
        prec.append(tp / (tp + fp))
        rec.append(tp / n_gt)
    ap, prev_r = 0.0, 0.0
    for j in range(len(rec)):
        p_interp = max(prec[j:])
        ap += (rec[j] - prev_r) * p_interp
        prev_r = rec[j]
    return ap


def shifted(box, dx):
    return [box[0] + dx, box[1], box[2] + dx, box[3]]


CASES = {
    # name: (predictions, truths, hand value)
    "perfect": ([{"boxes": [GT_A], "scores": [0.9]}, {"boxes": [GT_B], "scores": [0.8]}],
                [{"boxes": [GT_A]}, {"boxes": [GT_B]}], 1.0),
    # a shift of 0.05 on a 0.2-wide box: IoU = 0.15*0.2 / (2*0.04 - 0.03) = 0.6 -> still a hit
    "shifted_hit": ([{"boxes": [shifted(GT_A, 0.05)], "scores": [0.9]}], [{"boxes": [GT_A]}], 1.0),
    # a shift of 0.1: IoU = 0.1*0.2 / (0.08 - 0.02) = 1/3 -> a miss and a false positive
    "shifted_miss": ([{"boxes": [shifted(GT_A, 0.10)], "scores": [0.9]}], [{"boxes": [GT_A]}], 0.0),
    # one of two lesions found (top score): recall 0.5 at precision 1
    "missed": ([{"boxes": [GT_A], "scores": [0.9]}, {"boxes": [], "scores": []}],
               [{"boxes": [GT_A]}, {"boxes": [GT_B]}], 0.5),
    # duplicate of a found lesion ranked above the second lesion: TP, FP, TP -> 0.5*1 + 0.5*(2/3)
    "duplicate": ([{"boxes": [GT_A, shifted(GT_A, 0.01)], "scores": [0.9, 0.8]}, {"boxes": [GT_B], "scores": [0.7]}],
                  [{"boxes": [GT_A]}, {"boxes": [GT_B]}], 0.5 + 0.5 * 2 / 3),
    # a false positive on a lesion-free image scoring above everything: FP, TP, TP -> precision 1/2 then 2/3;
    # the interpolated precision at recall 0.5 is max(1/2, 2/3), so AP = 2/3
    "empty_image_fp": ([{"boxes": [GT_A], "scores": [0.8]}, {"boxes": [GT_B], "scores": [0.7]},
                        {"boxes": [[0.4, 0.4, 0.5, 0.5]], "scores": [0.95]}],
                       [{"boxes": [GT_A]}, {"boxes": [GT_B]}, {"boxes": []}], 2 / 3),
    # a low-scoring false positive on a lesion-free image does not change AP
    "empty_image_low": ([{"boxes": [GT_A], "scores": [0.8]}, {"boxes": [[0.4, 0.4, 0.5, 0.5]], "scores": [0.1]}],
                        [{"boxes": [GT_A]}, {"boxes": []}], 1.0),
    # no detections at all
    "no_detections": ([{"boxes": [], "scores": []}], [{"boxes": [GT_A]}], 0.0),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_ap_equals_hand_and_reference(name):
    preds, truths, hand = CASES[name]
    got = ap_from_matches(match_detections(preds, truths, 0.5))
    assert got == pytest.approx(hand, abs=1e-9)
    assert got == pytest.approx(reference_ap(preds, truths), abs=1e-9)


def test_ap_random_sets_match_reference():
    rng = np.random.default_rng(0)
    for _ in range(25):
        preds, truths = [], []
        for _ in range(int(rng.integers(1, 6))):
            gts = []
            for _ in range(int(rng.integers(0, 3))):
                x, y = rng.uniform(0, 0.7, 2)
                w, h = rng.uniform(0.05, 0.3, 2)
                gts.append([x, y, x + w, y + h])
            dets = [[b[0] + d, b[1] + d, b[2] + d, b[3] + d] for b in gts for d in rng.normal(0, 0.03, 2)]
            dets += [list(np.r_[p, p + rng.uniform(0.05, 0.2, 2)]) for p in rng.uniform(0, 0.7, (int(rng.integers(0, 3)), 2))]
            preds.append({"boxes": dets, "scores": list(rng.uniform(0, 1, len(dets)))})
            truths.append({"boxes": gts})
        ref = reference_ap(preds, truths)
        got = ap_from_matches(match_detections(preds, truths))
        if math.isnan(ref):
            assert math.isnan(got)
        else:
            assert got == pytest.approx(ref, abs=1e-9)


def test_ap_without_ground_truth_is_nan():
    assert math.isnan(average_precision([0.9], [0], 0))
    m = match_detections([{"boxes": [GT_A], "scores": [0.9]}], [{"boxes": []}])
    assert math.isnan(ap_from_matches(m))


def test_duplicate_is_false_positive_and_matching_order():
    tp, ignore, n = match_image([GT_A, GT_A], [0.3, 0.9], [GT_A])
    assert tp.tolist() == [0, 1] and ignore.tolist() == [0, 0] and n == 1


def test_ap_small_area_rule():
    small = [0.1, 0.1, 0.2, 0.2]  # area 0.01
    large = [0.4, 0.4, 0.9, 0.9]  # area 0.25
    preds = [{"boxes": [large, small, [0.5, 0.0, 0.9, 0.35]], "scores": [0.9, 0.8, 0.95]}]
    truths = [{"boxes": [small, large]}]
    # all lesions: FP(0.95), TP(0.9), TP(0.8) -> interpolated precision 2/3 at both recall steps
    assert ap_from_matches(match_detections(preds, truths)) == pytest.approx(2 / 3)
    # small only: the large lesion and its detection are ignored, the large FP (area 0.14) is ignored -> 1
    m = match_detections(preds, truths, max_area=0.068)
    assert int(m.n_gt.sum()) == 1 and m.ignore.tolist() == [1, 0, 1]
    assert ap_from_matches(m) == pytest.approx(1.0)
    # a small false positive above the small TP counts
    preds2 = [{"boxes": [small, [0.7, 0.0, 0.75, 0.05]], "scores": [0.5, 0.9]}]
    assert ap_from_matches(match_detections(preds2, truths, max_area=0.068)) == pytest.approx(0.5)


def test_small_area_threshold_is_30th_percentile():
    truths = [{"boxes": [[0, 0, s, s]]} for s in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)]
    areas = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]) ** 2
    assert small_area_threshold(truths) == pytest.approx(np.quantile(areas, 0.3))


def test_froc_hand_case():
    # 4 images, 4 lesions; detections by score: TP, FP, FP, TP, FP, FP, FP, FP, TP
    fp_box = [0.0, 0.8, 0.05, 0.85]
    preds = [
        {"boxes": [GT_A, fp_box], "scores": [0.99, 0.9]},
        {"boxes": [fp_box, GT_A], "scores": [0.8, 0.7]},
        {"boxes": [fp_box] * 4, "scores": [0.6, 0.5, 0.4, 0.3]},
        {"boxes": [GT_A], "scores": [0.2]},
    ]
    truths = [{"boxes": [GT_A]}, {"boxes": [GT_A]}, {"boxes": [GT_B]}, {"boxes": [GT_A]}]
    s = froc_sensitivities(match_detections(preds, truths), (0.5, 1.0, 2.0))
    # FP/image after each detection: 0, .25, .5, .5, .75, 1, 1.25, 1.5, 1.5; sensitivity 1/4 .. 3/4
    assert s["0.5"] == pytest.approx(0.5)
    assert s["1"] == pytest.approx(0.5)
    assert s["2"] == pytest.approx(0.75)
    assert s["mean"] == pytest.approx((0.5 + 0.5 + 0.75) / 3)


def _random_set(seed, n=30, quality=0.05):
    rng = np.random.default_rng(seed)
    preds, truths, groups = [], [], []
    for i in range(n):
        x, y = rng.uniform(0, 0.6, 2)
        g = [x, y, x + 0.25, y + 0.25]
        dx, dy = rng.normal(0, quality, 2)
        det = np.clip(np.array(g) + [dx, dy, dx, dy], 0, 1)
        preds.append({"boxes": [list(det), [0.8, 0.8, 0.9, 0.9]],
                      "scores": [float(rng.uniform(0.3, 1)), float(rng.uniform(0, 0.6))]})
        truths.append({"boxes": [g]})
        groups.append(f"P{i // 2}")
    return preds, truths, groups


def test_patient_bootstrap_ci_and_paired_p():
    preds, truths, groups = _random_set(0)
    m = match_detections(preds, truths)
    ci = bootstrap_detection(lambda w: ap_from_matches(m, w), len(truths), groups, n_boot=300)
    assert ci["lower"] <= ci["estimate"] <= ci["upper"] and ci["n_units"] == 15 and ci["n_valid"] == 300
    assert ci["upper"] - ci["lower"] > 0
    # weights of all ones reproduce the plain estimate; doubling every image leaves AP unchanged
    assert ap_from_matches(m, np.full(len(truths), 2.0)) == pytest.approx(ci["estimate"])
    same = paired_bootstrap(lambda w: ap_from_matches(m, w), lambda w: ap_from_matches(m, w), len(truths), groups,
                            n_boot=200)
    assert same["difference"] == 0 and same["p_value"] == 1.0
    worse_preds, _, _ = _random_set(0, quality=0.2)
    mw = match_detections(worse_preds, truths)
    diff = paired_bootstrap(lambda w: ap_from_matches(m, w), lambda w: ap_from_matches(mw, w), len(truths), groups,
                            n_boot=500)
    assert diff["difference"] > 0.3 and diff["p_value"] < 0.05 and diff["lower"] > 0


def test_detection_summary_counts_lesion_free_false_positives():
    preds, truths, groups = _random_set(1, n=10)
    preds.append({"boxes": [[0.1, 0.1, 0.2, 0.2]], "scores": [0.7]})
    truths.append({"boxes": []})
    groups.append("normal-1")
    out = detection_summary(preds, truths, groups, n_boot=50)
    assert out["lesion_free"] == {"images": 1, "score_threshold": 0.5, "images_with_fp": 1, "fp_per_image": 1.0}
    assert out["counts"]["images"] == 11 and out["counts"]["boxes"] == 10
    assert set(out) >= {"ap50", "ap_small", "ap_small_q30", "froc_sens@0.5fp", "froc_sens@4fp"}


def test_report_files_and_paired_comparison(tmp_path):
    from busgen_detect.report import read_predictions, write_detection_report

    def records(quality):
        preds, truths, groups = _random_set(2, n=20, quality=quality)
        return [{"image_id": f"img{i}", "patient_id": g, "image_path": "", "boxes": np.asarray(p["boxes"]),
                 "scores": np.asarray(p["scores"]), "truth": np.asarray(t["boxes"])}
                for i, (p, t, g) in enumerate(zip(preds, truths, groups))]

    good = write_detection_report(records(0.02), tmp_path / "good", model_name="good", n_bootstrap=100)
    assert {p.name for p in (tmp_path / "good").iterdir()} >= {"report.json", "report.md", "report.html", "pr.png",
                                                               "froc.png", "predictions.json", "predictions.csv"}
    back = read_predictions(good["predictions"])
    assert len(back) == 20 and back[3]["image_id"] == "img3" and back[3]["truth"].shape == (1, 4)
    bad = write_detection_report(records(0.2), tmp_path / "bad", n_bootstrap=300, compare_predictions=tmp_path / "good",
                                 compare_name="good")
    comp = bad["results"]["comparison"]
    assert comp["against"] == "good" and comp["images"] == 20
    assert comp["ap50"]["difference"] < 0 and 0 < comp["ap50"]["p_value"] <= 1
    assert comp["ap50"]["difference"] == pytest.approx(bad["results"]["detection"]["ap50"]["estimate"]
                                                       - good["results"]["detection"]["ap50"]["estimate"])
    with pytest.raises(FileNotFoundError, match="compare_predictions"):
        read_predictions(tmp_path / "nowhere.json")
