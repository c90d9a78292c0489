"""Sharded, resumable generation: deterministic per index, independent of the world size, resumable."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from busgen_monai.inferers.box_prior import BoxPrior
from busgen_monai.inferers.generate import generate_dataset, plan_conditions
from busgen_monai.inferers.guided import GuidedDiffusionInferer
from busgen_monai.networks import ConditionalDiffusionUNet, ConditionCodec
from busgen_monai.schedulers import DPMSolverMultistepScheduler

BETAS = {"schedule": "linear_beta", "beta_start": 1e-4, "beta_end": 0.028}


def _setup():
    torch.manual_seed(0)
    codec = ConditionCodec(("benign", "malignant"), max_boxes=2)
    net = ConditionalDiffusionUNet(image_channels=1, channels=(8, 8), num_res_blocks=1,
                                   attention_levels=(False, False), norm_num_groups=4, num_head_channels=8,
                                   **codec.network_kwargs())
    inferer = GuidedDiffusionInferer(DPMSolverMultistepScheduler(500, **BETAS), guidance_scale=1.8,
                                     num_inference_steps=3)
    items = [{"pathology": p, "boxes": [[0.2 + 0.01 * k, 0.3, 0.5, 0.6]]} for k in range(10) for p in ("benign", "malignant")]
    prior = BoxPrior().fit(items)
    plan = plan_conditions(13, ["benign", "malignant"], ["PhantomMed-L7", "PhantomMed-C5"], seed=4, box_prior=prior)
    return net, codec, inferer, plan


class DropMalignantC5:
    """A real DatalistFilter: rejects one cell of the grid."""

    def __call__(self, items, base_dir):
        bad = [dict(it, reject_reason="test rule", reject_score=1.0) for it in items
               if it["pathology"] == "malignant" and it["device"] == "PhantomMed-C5"]
        return [it for it in items if it not in [{k: v for k, v in b.items() if k not in ("reject_reason", "reject_score")} for b in bad]], bad


def _images(folder):
    return {p.name: np.asarray(Image.open(p)) for p in sorted((folder / "images").glob("*.png"))}


def test_plan_is_balanced_and_deterministic():
    _, _, _, plan = _setup()
    # pathology alternates (class-balanced); within each pathology the devices take turns (equal weights here)
    assert [p["pathology"] for p in plan[:4]] == ["benign", "malignant"] * 2
    assert [p["device"] for p in plan[:4]] == ["PhantomMed-L7", "PhantomMed-L7", "PhantomMed-C5", "PhantomMed-C5"]
    again = _setup()[3]
    assert plan == again
    assert all(0 <= v <= 1 for p in plan for b in p["boxes"] for v in b)


def test_world_size_resume_and_merge(tmp_path):
    net, codec, inferer, plan = _setup()
    one = tmp_path / "one"
    res = generate_dataset(net, codec, inferer, one, plan, image_size=(16, 16), image_channels=1, seed=4,
                           chunk_size=4, filters=[DropMalignantC5()], provenance={"model_sha256": "abc"},
                           progress=False)
    assert res.generated == 13 and res.kept + res.rejected == 13 and res.rejected == 3
    data = json.loads((one / "datalist.json").read_text())
    assert len(data["training"]) == 10
    assert data["training"][0]["provenance"]["model_sha256"] == "abc"
    assert data["training"][0]["boxes"] == plan[0]["boxes"]  # pseudo-labels are the conditioning boxes
    rejects = json.loads((one / "rejects.json").read_text())
    assert {r["reject_reason"] for r in rejects} == {"test rule"}
    assert (one / "sample_grid.png").is_file()

    # two ranks, each its own shard, then merge: the same items
    two = tmp_path / "two"
    for r in (1, 0):
        generate_dataset(net, codec, inferer, two, plan, image_size=(16, 16), image_channels=1, seed=4,
                         chunk_size=4, rank=r, world_size=2, progress=False, merge=(r == 0))
    a, b = _images(one), _images(two)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

    # kill-and-restart: remove some finished items (and leave a stray temp file), re-run: exactly N unique items
    for i in (1, 6, 12):
        (one / "items" / f"gen_{i:07d}.json").unlink()
    (one / "images" / ".gen_0000006.png.tmp").write_bytes(b"partial")
    again = generate_dataset(net, codec, inferer, one, plan, image_size=(16, 16), image_channels=1, seed=4,
                             chunk_size=4, filters=[DropMalignantC5()], provenance={"model_sha256": "abc"},
                             progress=False)
    assert again.skipped_chunks == 1 and again.generated == 9  # chunks 0, 1 (4 each), 3 (1) redone; chunk 2 skipped
    assert len(list((one / "items").glob("gen_*.json"))) == 13
    c = _images(one)
    assert all(np.array_equal(a[k], c[k]) for k in a)


def test_merge_refuses_missing_items(tmp_path):
    net, codec, inferer, plan = _setup()
    generate_dataset(net, codec, inferer, tmp_path, plan, image_size=(16, 16), image_channels=1, seed=4,
                     chunk_size=4, rank=0, world_size=2, progress=False, merge=False)
    with pytest.raises(RuntimeError, match="items are missing"):
        generate_dataset(net, codec, inferer, tmp_path, plan, image_size=(16, 16), image_channels=1, seed=4,
                         chunk_size=4, rank=0, world_size=2, progress=False, merge=True)
