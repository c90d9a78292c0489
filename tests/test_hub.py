"""Sharing a packaged adapted bundle through a bundle hub (a local folder: no network in tests):
package -> push -> pull in a fresh folder (monai.bundle.download + download_large_files) -> verify -> sample, and
peft loads the adapter from the pulled bundle. Tampering and version reuse are refused."""

import json
import zipfile

import pytest
import yaml

from busgen_monai.bundle_tools import package_bundle, verify_bundle
from busgen_monai.cli import main
from busgen_monai.hub import HubError, hub_index, pull_bundle, push_bundle


@pytest.fixture(scope="module")
def packaged(tiny_adapted):
    tmp, saved = tiny_adapted
    _, zpath = package_bundle(tmp / "zoo", "adapter", adapter=saved["adapter"], base_checkpoint=tmp / "base.pt",
                              box_prior=tmp / "models" / "box_prior.json", devices=["GE-LOGIQ-E9"], name="dcis_hub")
    return tmp, zpath


def test_package_push_pull_verify_sample_and_peft_loads_the_adapter(packaged, tmp_path):
    tmp, zpath = packaged
    hub = tmp_path / "hub"
    entry = push_bundle(zpath, hub)
    assert entry == hub_index(hub)["dcis_hub"]["0.1.0"]
    assert "models/adapter.pt" in entry["models"] and "models/peft_adapter/adapter_config.json" in entry["models"]
    with zipfile.ZipFile(hub / "dcis_hub" / "0.1.0" / "dcis_hub.zip") as z:  # the zip is slim: models come by URL
        assert not [n for n in z.namelist() if "/models/" in n]
        lf = yaml.safe_load(z.read("dcis_hub/large_files.yml"))["large_files"]
    assert all(e["url"].startswith("file://") and len(str(e["hash_val"])) == 64 for e in lf)
    assert push_bundle(zpath, hub) == entry  # the same content again: nothing changes

    pulled = pull_bundle("dcis_hub", hub.as_uri(), tmp_path / "fresh")
    assert (pulled / "models" / "adapter.pt").is_file() and (pulled / "configs" / "inference.json").is_file()
    report = verify_bundle(pulled, base_checkpoint=tmp / "base.pt")  # loads weights_only=True, samples 2 images
    assert report["sampled"] == 2 and report["zoo_verify_net_in_out"] == "ok"

    # peft loads the adapter of the pulled bundle (its own format: adapter_config.json + safetensors)
    from peft import LoraConfig
    from safetensors.torch import load_file

    peft_dir = pulled / "models" / "peft_adapter"
    config = LoraConfig.from_pretrained(str(peft_dir))
    weights = load_file(str(peft_dir / "adapter_model.safetensors"))
    assert config.r == 2 and weights and all("lora_" in k for k in weights)
    project = json.loads((peft_dir / "busgen_adapter.json").read_text())
    assert project["extra"]["codec"]["pathologies"][-1] == "dcis"


def test_cli_package_push_and_pull(packaged, tmp_path, capsys):
    tmp, _ = packaged
    hub = tmp_path / "hub"
    rc = main(["package", str(tmp_path / "zoo"), "--form", "merged", "--model", str(tmp / "models" / "model.pt"),
               "--box-prior", str(tmp / "models" / "box_prior.json"), "--devices", "GE-LOGIQ-E9", "--name", "mg",
               "--push", str(hub)])
    assert rc == 0 and "pushed:" in capsys.readouterr().out
    assert main(["pull", "mg", "--hub", str(hub), "--dest", str(tmp_path / "got"), "--quiet"]) == 0
    assert main(["verify", str(tmp_path / "got" / "mg")]) == 0


def test_hub_refuses_tampering_version_reuse_and_unknown_names(packaged, tmp_path):
    tmp, zpath = packaged
    hub = tmp_path / "hub"
    push_bundle(zpath, hub)
    # other model files under a version that is already published
    other_root, other_zip = package_bundle(tmp_path / "zoo2", "merged", merged_model=tmp / "models" / "model.pt",
                                           box_prior=tmp / "models" / "box_prior.json", devices=["GE-LOGIQ-E9"],
                                           name="dcis_hub")
    with pytest.raises(HubError, match="versions are immutable"):
        push_bundle(other_zip, hub)
    with pytest.raises(HubError, match="no bundle 'nope'"):
        pull_bundle("nope", hub, tmp_path / "x")
    with pytest.raises(HubError, match="no version '9.9.9'"):
        pull_bundle("dcis_hub", hub, tmp_path / "x", version="9.9.9")
    # a model file modified on the hub: the hash check of download_large_files refuses it
    hosted = hub / "dcis_hub" / "0.1.0" / "models" / "adapter.pt"
    data = bytearray(hosted.read_bytes())
    data[len(data) // 2] ^= 0xFF
    hosted.write_bytes(bytes(data))
    with pytest.raises(Exception, match="(?i)hash|sha256|md5"):
        pull_bundle("dcis_hub", hub, tmp_path / "y")
    # the slim zip modified on the hub: refused against the index's sha256
    slim = hub / "dcis_hub" / "0.1.0" / "dcis_hub.zip"
    slim.write_bytes(slim.read_bytes() + b"x")
    with pytest.raises(HubError, match="differs from its index entry"):
        pull_bundle("dcis_hub", hub, tmp_path / "z")


def test_package_refuses_a_bundle_that_cannot_sample(packaged, tmp_path):
    tmp, _ = packaged
    with pytest.raises(ValueError, match="--devices"):
        package_bundle(tmp_path / "zoo", "merged", merged_model=tmp / "models" / "model.pt",
                       box_prior=tmp / "models" / "box_prior.json", devices=None, name="x")
