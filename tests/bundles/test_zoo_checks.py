"""The model zoo's own checks, offline, on every bundle the project ships (core and plugins), as the zoo's CI runs
them: ``monai.bundle.verify_metadata`` against the zoo's published schema, and ``ConfigWorkflow.check_properties``
for the train workflow of the generator bundles. What cannot pass is listed in each bundle's docs/README.md."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from busgen_monai.bundle_run import all_bundles, resolve_configs
from busgen_monai.bundle_tools import ZOO_SCHEMA_PATH, ZOO_SCHEMA_URL

BUNDLES = all_bundles()


@pytest.mark.parametrize("name", sorted(BUNDLES))
def test_metadata_passes_the_zoo_schema(name):
    from monai.bundle import verify_metadata

    meta = BUNDLES[name] / "configs" / "metadata.json"
    assert json.loads(meta.read_text())["schema"] == ZOO_SCHEMA_URL, "the zoo's CI downloads the schema from there"
    verify_metadata(meta_file=str(meta), filepath=str(ZOO_SCHEMA_PATH))  # raises on the first violation


def test_the_zoo_schema_check_can_fail(tmp_path):
    from monai.bundle import verify_metadata

    meta = json.loads((BUNDLES["busgen_sample"] / "configs" / "metadata.json").read_text())
    del meta["network_data_format"]
    bad = tmp_path / "metadata.json"
    bad.write_text(json.dumps(meta))
    with pytest.raises(Exception, match="network_data_format"):
        verify_metadata(meta_file=str(bad), filepath=str(ZOO_SCHEMA_PATH))


@pytest.fixture(scope="module")
def phantom_datalist(tmp_path_factory):
    from busgen_monai.data.phantom import write_dataset

    return write_dataset(tmp_path_factory.mktemp("zoo") / "ph", n=8, size=(32, 32))


@pytest.mark.parametrize("name, overrides", [
    ("busgen_pretrain", {"preset_name": "tiny"}),
    ("busgen_adapt", {"base_checkpoint": "$str(busgen_monai.inferers.default_generator())"}),
])
def test_train_config_has_the_zoo_train_properties(name, overrides, phantom_datalist, tmp_path):
    from monai.bundle import ConfigWorkflow

    root = BUNDLES[name]
    files = [str(f) for f in resolve_configs(root, "train")]
    wf = ConfigWorkflow(config_file=files, meta_file=str(root / "configs" / "metadata.json"), workflow_type="train",
                        logging_file=False, bundle_root=str(root), datalist=str(phantom_datalist),
                        output_dir=str(tmp_path / "out"), num_workers=0, **overrides)
    wf.initialize()
    assert wf.check_properties() == []
    assert wf.max_epochs >= 1 and wf.train_inferer is not None and len(wf.train_dataset) > 0
    logging.getLogger(__name__).info("%s: %s", name, files)


def test_inference_config_has_the_zoo_inference_properties_but_dataset_and_evaluator(tmp_path):
    """The sampling config declares bundle_root, device, dataset_dir, network_def and inferer (the inferer is the one
    generation samples with). 'dataset' and 'evaluator' cannot be: generation plans its conditions inside
    run_generation and is not an evaluation loop (the bundle's docs/README.md says so). With those two supplied,
    MONAI's check finds nothing else missing."""
    from monai.bundle import ConfigWorkflow

    root = BUNDLES["busgen_sample"]
    files = [str(f) for f in resolve_configs(root, "inference")]
    bare = ConfigWorkflow(config_file=files, meta_file=str(root / "configs" / "metadata.json"), workflow_type="infer",
                          logging_file=False, bundle_root=str(root))
    with pytest.raises(KeyError, match="'dataset'"):
        bare.initialize()
        bare.check_properties()
    placeholders = tmp_path / "placeholders.json"
    placeholders.write_text(json.dumps({"dataset": [], "evaluator": None}))
    wf = ConfigWorkflow(config_file=files + [str(placeholders)], meta_file=str(root / "configs" / "metadata.json"),
                        workflow_type="infer", logging_file=False, bundle_root=str(root))
    wf.initialize()
    assert wf.check_properties() == []
    from busgen_monai.inferers import GuidedDiffusionInferer

    assert isinstance(wf.inferer, GuidedDiffusionInferer) and wf.network_def is not None
    docs = (root / "docs" / "README.md").read_text()
    assert "check_properties" in docs and "evaluator" in docs


def test_shipped_sample_bundle_passes_monai_verify_net_in_out():
    """The zoo's shape check on the shipped generator (network_def of the inference config, diffusion forward
    arguments from network_data_format)."""
    from busgen_monai.bundle_tools import zoo_net_in_out

    root = BUNDLES["busgen_sample"]
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    assert zoo_net_in_out(root, meta) == "ok"
    bad = json.loads(json.dumps(meta))
    bad["network_data_format"]["outputs"]["pred"]["num_channels"] = 3  # the generator predicts one grey channel
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "busgen_sample"
        shutil.copytree(root, copy)
        (copy / "configs" / "metadata.json").write_text(json.dumps(bad))
        from busgen_monai.bundle_tools import BundleVerificationError

        with pytest.raises(BundleVerificationError, match="verify_net_in_out"):
            zoo_net_in_out(copy, bad)


@pytest.fixture(scope="module")
def phantom_splits(tmp_path_factory):
    """A phantom large enough for every split (training, validation, test) the downstream bundles read."""
    from busgen_monai.data.phantom import write_dataset

    return write_dataset(tmp_path_factory.mktemp("zoo_splits") / "ph", n=48, size=(32, 32))


@pytest.mark.parametrize("name, configs, overrides", [
    ("bus_classifier", "train,preset_cpu_tiny", {"datalists": "$[@_dl]"}),
    ("bus_detector", "train,preset_cpu_tiny", {"datalists": "$[@_dl]"}),
    ("nyu_breast", "train,preset_cpu_tiny", {"datalists": "$[@_dl]", "group_by": "patient"}),
    ("device_cyclegan", "train", {"datalist": "@_dl", "target_device": "PhantomMed-L12"}),
])
def test_plugin_train_configs_have_the_zoo_train_properties(name, configs, overrides, phantom_splits, tmp_path):
    """The downstream and augmentation plugins' training bundles pass MONAI's train-workflow property check too
    (bundle_root, device, dataset_dir, trainer, network_def, max_epochs, train_dataset, train_inferer, ...)."""
    from monai.bundle import ConfigWorkflow

    root = BUNDLES[name]
    files = [str(f) for f in resolve_configs(root, configs)]
    wf = ConfigWorkflow(config_file=files, meta_file=str(root / "configs" / "metadata.json"), workflow_type="train",
                        logging_file=False, bundle_root=str(root), output_dir=str(tmp_path / "out"),
                        _dl=str(phantom_splits), **overrides)
    wf.initialize()
    assert wf.check_properties() == []
    assert wf.max_epochs >= 1 and wf.network_def is not None and len(wf.train_dataset) > 0


@pytest.mark.parametrize("name, passes", [("bus_classifier", True), ("device_cyclegan", True),
                                           ("bus_detector", False), ("nyu_breast", False)])
def test_plugin_bundles_under_monai_verify_net_in_out(name, passes):
    """MONAI's shape check on each plugin bundle's network_def with its metadata. The classifier and the CycleGAN
    pass; the detector (RetinaNet returns per-image box/score/label dicts) and the NYU model (a dict of breast-level
    probabilities and saliency maps) cannot: verify_net_in_out needs a single tensor output. Their docs say so."""
    from monai.bundle import verify_net_in_out

    root = BUNDLES[name]
    kwargs = dict(net_id="network_def", meta_file=str(root / "configs" / "metadata.json"),
                  config_file=str(root / "configs" / "train.json"), bundle_root=str(root))
    if passes:
        verify_net_in_out(**kwargs)
    else:
        with pytest.raises(AttributeError, match="has no attribute 'shape'"):
            verify_net_in_out(**kwargs)
        assert "verify_net_in_out" in (root / "docs" / "README.md").read_text()
