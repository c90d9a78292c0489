"""Analysis of a reader study: can readers tell generated images from real ones, and do they read the requested
labels in the generated images?

Definitions (generated = positive):

* accuracy ("distinguishability", as BUSGen reports it): the share of correct real/generated calls; 0.5 means
  the readers cannot tell the sides apart (the study is balanced). Exact Clopper-Pearson 95 % interval, exact
  two-sided binomial test against 0.5, and a bootstrap interval over images (cluster bootstrap by image for the
  pooled value, so one image read by several readers counts once per replicate draw).
* sensitivity for "generated": generated images called generated; specificity: real images called real.
* rating AUROC: the call and its confidence as one 10-point score (generated/5 highest ... real/5 lowest), with
  a DeLong interval; ROC curves with each reader's operating point.
* label agreement: Cohen's kappa of each reader's pathology (unweighted) and BI-RADS (unweighted and linearly
  weighted on the ordinal scale) against the labels the images carry (requested labels for generated images,
  reference labels for real ones), per side and both sides.
* inter-reader agreement: Fleiss' kappa of the real/generated calls (and of pathology) over the images every
  reader answered.
* the images most often called generated (a grid, with truth), to show what gives generated images away.
"""

from __future__ import annotations

import argparse
import html
import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from busgen_monai.utils.io import atomic_save_figure, atomic_write_json, atomic_write_text

from .build import StudyError, load_study
from .stats import cohen_kappa, fleiss_kappa, fleiss_table, proportion
from .store import AnswerStore

__all__ = ["analyse_study", "joined_answers", "main"]

logger = logging.getLogger(__name__)


def joined_answers(study: dict, answers: Sequence[dict]) -> list[dict]:
    """Answers with the image's truth and labels; answers for images not in the study raise."""
    items = {it["id"]: it for it in study["items"]}
    rows = []
    for a in answers:
        it = items.get(a["image_id"])
        if it is None:
            raise StudyError(f"answer for image {a['image_id']!r} that is not in study.json; wrong database for this study?")
        rows.append({**a, "truth": it["truth"], "correct": int(a["call"] == it["truth"]),
                     "requested_pathology": it.get("pathology"), "requested_birads": it.get("birads")})
    return rows


def _accuracy(y: np.ndarray, s: np.ndarray) -> float:
    return float(np.mean(y == s))


def _bootstrap(rows: list[dict], n_boot: int, seed: int, groups: bool) -> dict | None:
    from busgen_monai.evaluation.stats import bootstrap_ci

    y = np.array([r["truth"] == "generated" for r in rows], dtype=np.int64)
    s = np.array([r["call"] == "generated" for r in rows], dtype=np.float64)
    if len(rows) < 4 or y.min() == y.max():
        return None
    g = np.array([r["image_id"] for r in rows]) if groups else None
    try:
        return bootstrap_ci(_accuracy, y, s, groups=g, n_boot=n_boot, seed=seed).as_dict()
    except ValueError as err:
        logger.warning("bootstrap skipped: %s", err)
        return None


def _rating_score(r: dict) -> int:
    return (5 + int(r["confidence"])) if r["call"] == "generated" else (6 - int(r["confidence"]))


def _summary(rows: list[dict], n_boot: int, seed: int, pooled: bool) -> dict[str, Any]:
    from busgen_monai.evaluation.stats import delong_ci

    gen = [r for r in rows if r["truth"] == "generated"]
    real = [r for r in rows if r["truth"] == "real"]
    out: dict[str, Any] = {"n_answers": len(rows)}
    acc = proportion(sum(r["correct"] for r in rows), len(rows))
    out["accuracy"] = acc.as_dict() if acc else None
    sens = proportion(sum(r["call"] == "generated" for r in gen), len(gen))
    spec = proportion(sum(r["call"] == "real" for r in real), len(real))
    out["sensitivity_generated"] = sens.as_dict() if sens else None
    out["specificity_real"] = spec.as_dict() if spec else None
    out["accuracy_bootstrap"] = _bootstrap(rows, n_boot, seed, groups=pooled)
    if gen and real:
        y = np.array([r["truth"] == "generated" for r in rows], dtype=np.int64)
        auc, lo, hi = delong_ci(y, np.array([_rating_score(r) for r in rows], dtype=np.float64))
        out["rating_auroc"] = {"estimate": auc, "lower": lo, "upper": hi}
    else:
        out["rating_auroc"] = None
    out["mean_confidence"] = float(np.mean([r["confidence"] for r in rows])) if rows else None
    return out


def _birads_scale(rows: list[dict], categories: Sequence[str]) -> tuple[list[dict], list[str]]:
    """When the images' labels use plain BI-RADS 4 (BUS-BRA does), readers' 4a/4b/4c count as 4."""
    if any(str(r.get("requested_birads")) in ("4a", "4b", "4c") for r in rows):
        return rows, list(categories)
    rows = [{**r, "birads": "4" if r.get("birads") in ("4a", "4b", "4c") else r.get("birads")} for r in rows]
    return rows, [c for c in categories if c not in ("4a", "4b", "4c")]


def _kappas(rows: list[dict], key: str, requested: str, categories: Sequence[str], weighted: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if key == "birads":
        rows, categories = _birads_scale(rows, categories)
    for side in ("generated", "real", "both"):
        pairs = [(r[key], r[requested]) for r in rows if r.get(key) and r.get(requested)
                 and (side == "both" or r["truth"] == side)]
        pairs = [(a, b) for a, b in pairs if a in categories and b in categories]
        entry: dict[str, Any] = {"n": len(pairs)}
        if pairs:
            a, b = zip(*pairs)
            entry["kappa"] = cohen_kappa(a, b, categories)
            entry["agreement"] = float(np.mean([x == y for x, y in pairs]))
            if weighted:
                entry["kappa_linear"] = cohen_kappa(a, b, categories, weights="linear")
        out[side] = entry
    return out


def _fleiss(rows: list[dict], key: str, categories: Sequence[str]) -> dict[str, Any] | None:
    by_image: dict[str, dict[str, str]] = defaultdict(dict)
    for r in rows:
        if r.get(key):
            by_image[r["image_id"]][r["reader"]] = r[key]
    readers = sorted({r["reader"] for r in rows if r.get(key)})
    if len(readers) < 2:
        return None
    full = [img for img, votes in by_image.items() if len(votes) == len(readers)]
    if not full:
        return None
    table = fleiss_table([[by_image[img][rd] for rd in readers] for img in sorted(full)], categories)
    return {"kappa": fleiss_kappa(table), "n_images": len(full), "n_readers": len(readers)}


def _forest_plot(per_reader: dict, pooled: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(per_reader) + ["pooled"]
    entries = [per_reader[n]["accuracy"] for n in per_reader] + [pooled["accuracy"]]
    fig, ax = plt.subplots(figsize=(5.5, 0.45 * len(names) + 1.4))
    for i, (n, e) in enumerate(zip(names, entries)):
        if e is None:
            continue
        ax.errorbar(e["estimate"], i, xerr=[[e["estimate"] - e["lower"]], [e["upper"] - e["estimate"]]], fmt="o",
                    color="black" if n == "pooled" else "tab:blue", capsize=3)
    ax.axvline(0.5, color="grey", ls="--", lw=1)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy telling real from generated (95 % Clopper-Pearson)")
    ax.set_title("Visual Turing test: 0.5 = indistinguishable")
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


def _confidence_plot(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    scores = np.arange(1, 11)
    width = 0.4
    for off, truth, colour in ((-width / 2, "real", "tab:blue"), (width / 2, "generated", "tab:orange")):
        counts = [sum(1 for r in rows if r["truth"] == truth and _rating_score(r) == s) for s in scores]
        ax.bar(scores + off, counts, width, label=f"truth: {truth}", color=colour)
    ax.set_xticks(scores, ["R5", "R4", "R3", "R2", "R1", "G1", "G2", "G3", "G4", "G5"])
    ax.set_xlabel("answer (R = called real, G = called generated; digit = confidence)")
    ax.set_ylabel("answers")
    ax.legend(frameon=False)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


def _grid(study_dir: Path, ranked: list[dict], path: Path, n: int = 16) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    ranked = ranked[:n]
    if not ranked:
        return None
    cols = min(8, len(ranked))
    rows_n = int(np.ceil(len(ranked) / cols))
    fig, axes = plt.subplots(rows_n, cols, figsize=(1.6 * cols, 1.85 * rows_n), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, r in zip(axes.ravel(), ranked):
        with Image.open(study_dir / "images" / f"{r['image_id']}.png") as im:
            ax.imshow(np.asarray(im.convert("L")), cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{r['truth']} {r['called_generated']}/{r['n']}", fontsize=8,
                     color="tab:orange" if r["truth"] == "generated" else "tab:blue")
    fig.suptitle("Most often called generated (truth, readers calling it generated / readers)", fontsize=9)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


def _fmt_prop(e: dict | None) -> str:
    if not e:
        return "-"
    return f"{e['estimate']:.3f} [{e['lower']:.3f}, {e['upper']:.3f}]"


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "-"
    return f"{x:.{digits}f}" if isinstance(x, float) else html.escape(str(x))


def _html(results: dict, figures: dict[str, str], note: str = "") -> str:
    rows = []
    for name, s in list(results["per_reader"].items()) + [("pooled", results["pooled"])]:
        acc = s["accuracy"]
        boot = s["accuracy_bootstrap"]
        rows.append(
            "<tr>" + "".join(f"<td>{c}</td>" for c in (
                html.escape(name), s["n_answers"], _fmt_prop(acc),
                f"[{boot['lower']:.3f}, {boot['upper']:.3f}]" if boot else "-",
                _fmt(acc["p_value"]) if acc else "-", _fmt_prop(s["sensitivity_generated"]),
                _fmt_prop(s["specificity_real"]), _fmt_prop(s["rating_auroc"]) if s["rating_auroc"] else "-",
            )) + "</tr>")
    krows = []
    for name, k in list(results["label_agreement"].items()):
        for label in ("pathology", "birads"):
            for side in ("generated", "real", "both"):
                e = k[label][side]
                if not e["n"]:
                    continue
                krows.append(f"<tr><td>{html.escape(name)}</td><td>{label}</td><td>{side}</td><td>{e['n']}</td>"
                             f"<td>{_fmt(e.get('agreement'))}</td><td>{_fmt(e.get('kappa'))}</td>"
                             f"<td>{_fmt(e.get('kappa_linear'))}</td></tr>")
    fl = results["inter_reader"]
    fl_text = "; ".join(
        f"{key}: kappa {_fmt(v['kappa'])} over {v['n_images']} images x {v['n_readers']} readers" if v else f"{key}: -"
        for key, v in fl.items())
    figs = "".join(f'<figure class="{"wide" if p.startswith("most") else ""}"><img src="{html.escape(p)}" alt="{html.escape(k)}"><figcaption>{html.escape(k)}</figcaption></figure>'
                   for k, p in figures.items() if p)
    s = results["study"]
    warn = f'<p class="warn">{html.escape(note)}</p>' if note else ""
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Reader study report</title>
<style>body{{font:14px/1.4 system-ui,sans-serif;max-width:1100px;margin:16px auto;padding:0 12px}}
table{{border-collapse:collapse;margin:8px 0}}td,th{{border-bottom:1px solid #ccc;padding:3px 8px;text-align:left}}
figure{{display:inline-block;margin:6px;vertical-align:top}}img{{max-width:520px}}figure.wide img{{max-width:1060px}}figcaption{{color:#555;font-size:12px}}
.note{{color:#555;font-size:12px}}.warn{{background:#fff3cd;padding:6px 10px;border:1px solid #e0c36d}}</style></head><body>
<h1>Reader study: real or generated?</h1>
{warn}
<p>{s['n_images']} images ({s['n_per_side']} real, {s['n_per_side']} generated, {s['size'] or 'native'} px),
{len(results['per_reader'])} readers, {results['pooled']['n_answers']} answers.
Accuracy 0.5 = readers cannot tell generated from real images (BUSGen reported 0.42-0.59 for 6 radiologists).</p>
<h2>Real vs generated</h2>
<table><tr><th>reader</th><th>answers</th><th>accuracy [95 % exact CI]</th><th>bootstrap CI</th><th>p (vs 0.5)</th>
<th>sensitivity (generated)</th><th>specificity (real)</th><th>rating AUROC [DeLong]</th></tr>{''.join(rows)}</table>
<p class="note">Exact = Clopper-Pearson; p = exact two-sided binomial test against 0.5. Pooled bootstrap resamples images
(cluster bootstrap), the exact pooled interval treats answers as independent. Mean of per-reader accuracies:
{_fmt(results['mean_reader_accuracy'])}.</p>
<h2>Inter-reader agreement (Fleiss' kappa)</h2><p>{fl_text}</p>
<h2>Label agreement with the images' labels (Cohen's kappa)</h2>
<table><tr><th>reader</th><th>label</th><th>images</th><th>n</th><th>raw agreement</th><th>kappa</th><th>kappa (linear)</th></tr>
{''.join(krows)}</table>
<p class="note">Generated images: the labels requested from the generator; real images: the data set's labels.
Rows without ratings are left out. Where the images' labels use plain BI-RADS 4, readers' 4a/4b/4c count as 4.</p>
<h2>Figures</h2>{figs}
</body></html>
"""


def analyse_study(study_dir: str | Path, out: str | Path, *, db_path: str | Path | None = None,
                  n_boot: int = 1000, seed: int = 0, note: str = "") -> dict:
    """Analyse the answers of the study in ``study_dir``; writes ``out/{results.json, report.html, answers.csv,
    accuracy.png, confidence.png, roc.png, most_generated.png}`` and returns the results. ``note`` is shown at
    the top of the report (e.g. "pilot with trainees")."""
    from busgen_monai.evaluation.plots import plot_roc

    study_dir, out = Path(study_dir), Path(out)
    study = load_study(study_dir)
    db = Path(db_path) if db_path else study_dir / "answers.sqlite"
    if not db.is_file():
        raise StudyError(f"{db} does not exist: no answers yet (serve the study first) or pass --db")
    rows = joined_answers(study, AnswerStore(db).all())
    if not rows:
        raise StudyError(f"{db} holds no answers yet; nothing to analyse")
    out.mkdir(parents=True, exist_ok=True)
    readers = [r["name"] for r in study["readers"] if any(a["reader"] == r["name"] for a in rows)]
    per_reader = {name: _summary([a for a in rows if a["reader"] == name], n_boot, seed, pooled=False) for name in readers}
    pooled = _summary(rows, n_boot, seed, pooled=True)
    path_cats = list(study.get("pathologies") or [])
    birads_cats = list(study.get("birads_values") or [])
    agreement = {}
    for name in readers + ["pooled"]:
        sub = rows if name == "pooled" else [a for a in rows if a["reader"] == name]
        agreement[name] = {"pathology": _kappas(sub, "pathology", "requested_pathology", path_cats, False),
                           "birads": _kappas(sub, "birads", "requested_birads", birads_cats, True)}
    inter = {"real_vs_generated": _fleiss(rows, "call", ["real", "generated"]),
             "pathology": _fleiss(rows, "pathology", path_cats) if path_cats else None}
    per_image: dict[str, dict] = {}
    for r in rows:
        e = per_image.setdefault(r["image_id"], {"image_id": r["image_id"], "truth": r["truth"], "n": 0,
                                                 "called_generated": 0})
        e["n"] += 1
        e["called_generated"] += int(r["call"] == "generated")
    ranked = sorted(per_image.values(), key=lambda e: (-e["called_generated"] / e["n"], -e["n"], e["image_id"]))
    accs = [v["accuracy"]["estimate"] for v in per_reader.values() if v["accuracy"]]
    results = {
        "study": {"n_images": len(study["items"]), "n_per_side": study["n_per_side"], "size": study.get("size"),
                  "seed": study.get("seed")},
        "per_reader": per_reader,
        "pooled": pooled,
        "mean_reader_accuracy": float(np.mean(accs)) if accs else None,
        "label_agreement": agreement,
        "inter_reader": inter,
        "most_called_generated": ranked[:16],
    }
    figures: dict[str, str] = {}
    figures["Accuracy per reader"] = _forest_plot(per_reader, pooled, out / "accuracy.png").name
    figures["Answers by truth"] = _confidence_plot(rows, out / "confidence.png").name
    curves = {}
    points = {}
    for name in readers:
        sub = [a for a in rows if a["reader"] == name]
        y = np.array([a["truth"] == "generated" for a in sub], dtype=np.int64)
        if 0 < y.sum() < len(y):
            curves[name] = (y, np.array([_rating_score(a) for a in sub], dtype=np.float64))
            s, sp = per_reader[name]["sensitivity_generated"], per_reader[name]["specificity_real"]
            points[name] = (s["estimate"], sp["estimate"])
    if curves:
        plot_roc(out / "roc.png", curves, operating_points={"readers": np.array(list(points.values()))},
                 title="Readers' ratings: generated vs real")
        figures["ROC of the ratings (generated = positive)"] = "roc.png"
    grid = _grid(study_dir, ranked, out / "most_generated.png")
    if grid:
        figures["Most often called generated"] = grid.name
    import csv
    import io

    fields = ["reader", "image_id", "position", "truth", "call", "correct", "confidence", "pathology",
              "requested_pathology", "birads", "requested_birads", "elapsed_ms", "answered_at"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out / "answers.csv", buf.getvalue())
    atomic_write_json(out / "results.json", results)
    results["note"] = note
    atomic_write_text(out / "report.html", _html(results, figures, note))
    return results


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", help="study folder")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--db", default=None, help="answers database (default STUDY/answers.sqlite)")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--note", default="", help="a line shown at the top of the report")


def run_from_args(args: argparse.Namespace) -> int:
    res = analyse_study(args.study, args.out, db_path=args.db, n_boot=args.n_boot, seed=args.seed, note=args.note)
    acc = res["pooled"]["accuracy"]
    print(json.dumps({"answers": res["pooled"]["n_answers"], "pooled_accuracy": acc["estimate"],
                      "ci": [acc["lower"], acc["upper"]], "p_vs_0.5": acc["p_value"],
                      "report": str(Path(args.out) / "report.html")}))
    return 0
