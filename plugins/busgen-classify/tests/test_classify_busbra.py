"""busgen-classify on real data: a short CPU training on BUS-BRA (patient-wise split) beats chance clearly."""

from __future__ import annotations

import time

import pytest


@pytest.mark.realdata
@pytest.mark.parametrize("limit,epochs", [
    pytest.param(640, 6, id="subset-640"),  # 6 x 20 = 120 iterations (about 20 s on an idle 2-core CPU)
    pytest.param(None, 8, id="full", marks=pytest.mark.slow),  # 8 x 40 = 320 iterations
])
def test_bus_bra_short_training_auc(bus_bra_root, tmp_path, limit, epochs):
    from busgen_monai.data.loaders import load_bus_bra
    from busgen_monai.data.schema import save_datalist
    from busgen_classify.workflow import evaluate, train

    data = load_bus_bra(bus_bra_root, relative_to=tmp_path)  # patient-wise 70/15/15 split, seed 0
    data.pop("load_report", None)
    data.pop("unknown_devices", None)
    path = save_datalist(data, tmp_path / "bus_bra.json")
    train_patients = {it["patient_id"] for it in data["training"]}
    assert not train_patients & {it["patient_id"] for it in data["test"]}

    t0 = time.time()
    # 64 px, 0.3 M-parameter ResNet, lesion-box crop; a class-stratified subset of the training split (or all)
    res = train(["preset_cpu_tiny"], datalists=[str(path)], output_dir=str(tmp_path / "run"), max_epochs=epochs,
                train_limit=limit)
    seconds = time.time() - t0
    rep = evaluate(["preset_cpu_tiny"], datalists=[str(path)], output_dir=str(tmp_path / "run"), gradcam_n=8,
                   tsne=False)
    auc = rep["results"]["auroc"]
    print(f"BUS-BRA test AUROC {auc['estimate']:.3f} (95% CI {auc['lower']:.3f}-{auc['upper']:.3f}, bootstrap over "
          f"{auc['n_units']} patients), {res['summary']['iterations']} iterations in {seconds:.0f} s")
    assert res["summary"]["iterations"] <= 320
    assert auc["estimate"] > 0.65 and auc["lower"] > 0.5
