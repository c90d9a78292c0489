"""busgen_monai.bundle_tools + `busgen package/verify`: tampered weights and broken metadata are refused."""

import json
import zipfile

import pytest
import torch

from busgen_monai.adaptation.adapt import AdapterSaver, prepare_adaptation
from busgen_monai.bundle_tools import BundleVerificationError, package_bundle, verify_bundle
from busgen_monai.cli import main
from busgen_monai.inferers import BoxPrior
from busgen_monai.networks import ConditionCodec
from busgen_monai.presets import build_network


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("bt")
    torch.manual_seed(0)
    codec = ConditionCodec()
    torch.save({"network": build_network("tiny", codec).state_dict(), "codec": codec.state_dict()}, tmp / "base.pt")
    net, codec = prepare_adaptation(tmp / "base.pt", "tiny", new_pathologies=["dcis"], rank=2)
    saved = AdapterSaver(net, codec, tmp / "models").save()
    BoxPrior().fit([{"pathology": "dcis", "boxes": [[.2, .2, .5, .5]]}, {"pathology": "dcis", "boxes": [[.3, .3, .6, .7]]},
                    {"pathology": "dcis", "boxes": [[.25, .3, .55, .6]]}]).save(tmp / "models" / "box_prior.json")
    return tmp, saved


def _pkg(tmp, saved, form="merged", name="b"):
    kw = dict(box_prior=tmp / "models" / "box_prior.json", devices=["GE-LOGIQ-E9"], name=name)
    if form == "merged":
        return package_bundle(tmp / "zoo", "merged", merged_model=saved["merged"], **kw)
    return package_bundle(tmp / "zoo", "adapter", adapter=saved["adapter"], base_checkpoint=tmp / "base.pt", **kw)


def test_cli_package_and_verify(adapted, capsys):
    tmp, saved = adapted
    rc = main(["package", str(tmp / "zoo"), "--form", "adapter", "--adapter", str(saved["adapter"]), "--base",
               str(tmp / "base.pt"), "--box-prior", str(tmp / "models" / "box_prior.json"), "--devices", "GE-LOGIQ-E9",
               "--name", "cli_ad"])
    assert rc == 0
    z = tmp / "zoo" / "cli_ad.zip"
    with zipfile.ZipFile(z) as zf:
        names = set(zf.namelist())
    for f in ("LICENSE", "configs/metadata.json", "configs/inference.json", "docs/README.md", "large_files.yml",
              "models/adapter.pt"):
        assert f"cli_ad/{f}" in names, f
    meta = json.loads((tmp / "zoo" / "cli_ad" / "configs" / "metadata.json").read_text())
    assert len(meta["base_model"]["sha256"]) == 64 and meta["conditions"]["pathologies"][-1] == "dcis"
    assert main(["verify", str(z), "--base", str(tmp / "base.pt"), "--no-sample"]) == 0
    assert main(["verify", str(z), "--no-sample"]) == 1
    assert "pass the base checkpoint" in capsys.readouterr().err


def test_tampered_weights_refused(adapted):
    tmp, saved = adapted
    root, _ = _pkg(tmp, saved, name="tamper")
    with open(root / "models" / "model.pt", "r+b") as f:
        f.seek(200)
        b = f.read(1)
        f.seek(200)
        f.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(BundleVerificationError, match="models/model.pt: sha256 .* does not match large_files.yml"):
        verify_bundle(root, sample=False)


def test_broken_metadata_refused(adapted):
    tmp, saved = adapted
    root, _ = _pkg(tmp, saved, name="broken")
    meta_path = root / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    del meta["network_data_format"]["outputs"]["pred"]["num_channels"]
    meta["version"] = "one"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(BundleVerificationError) as err:
        verify_bundle(root, sample=False)
    msg = str(err.value)
    assert "metadata.json" in msg and "key 'version'" in msg and "network_data_format/outputs/pred" in msg
    meta_path.write_text("{not json")
    with pytest.raises(BundleVerificationError, match="not readable JSON"):
        verify_bundle(root, sample=False)


def test_wrong_shape_in_metadata_refused(adapted):
    tmp, saved = adapted
    root, _ = _pkg(tmp, saved, name="shape")
    meta_path = root / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["network_data_format"]["outputs"]["pred"]["num_channels"] = 1
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(BundleVerificationError, match="outputs/pred: expected shape"):
        verify_bundle(root, sample=False)


def test_adapter_bundle_wrong_base_refused(adapted):
    tmp, saved = adapted
    _, z = _pkg(tmp, saved, form="adapter", name="wb")
    other = tmp / "other.pt"
    torch.manual_seed(3)
    codec = ConditionCodec()
    torch.save({"network": build_network("tiny", codec).state_dict(), "codec": codec.state_dict()}, other)
    with pytest.raises(BundleVerificationError, match="base_model/sha256"):
        verify_bundle(z, base_checkpoint=other, sample=False)
