"""busgen_monai.bundle_tools + `busgen package/verify`: tampered weights and broken metadata are refused."""

import json
import zipfile

import pytest
import torch

from busgen_monai.bundle_tools import BundleVerificationError, check_large_files, package_bundle, verify_bundle
from busgen_monai.cli import main
from busgen_monai.networks import ConditionCodec
from busgen_monai.presets import build_network


@pytest.fixture(scope="module")
def adapted(tiny_adapted):
    return tiny_adapted


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
    with pytest.raises(BundleVerificationError, match="models/model.pt: its sha256 is .* but large_files.yml says"):
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
    meta["network_data_format"]["outputs"]["pred"]["num_channels"] = 3  # the network predicts one grey channel
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


class _Payload:
    """Pickles to a call that would create a marker file if it ever ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_payload_in_every_loadable_file_type_is_refused(adapted, tmp_path):
    from busgen_cpsample.protector import load_protector

    from busgen_monai.adaptation.adapt import read_adapter
    from busgen_monai.adaptation.lora import load_adapter
    from busgen_monai.inferers.loading import read_checkpoint
    from busgen_monai.safe_load import UnsafeFileError

    tmp, saved = adapted
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    torch.save({"network": {}, "codec": {}, "lora": {}, "config": {}, "format": "x", "payload": _Payload(marker)}, evil)
    loaders = [
        lambda: read_adapter(evil),
        lambda: load_adapter(build_network("tiny", ConditionCodec()), evil),
        lambda: load_protector(evil),
        lambda: read_checkpoint(evil),
        lambda: package_bundle(tmp_path / "zoo", "merged", merged_model=evil, name="evil",
                               box_prior=tmp / "models" / "box_prior.json", devices=["GE-LOGIQ-E9"]),
    ]
    for load in loaders:
        with pytest.raises(ValueError, match="weights-only|pickled objects"):
            load()
        assert not marker.exists()
    with pytest.raises(UnsafeFileError, match="refused to load"):
        read_adapter(evil)
    # the project's own formats load weights-only
    assert "lora" in read_adapter(saved["adapter"])


def test_config_payload_not_executed_by_verify(adapted, tmp_path):
    tmp, saved = adapted
    root, _ = _pkg(tmp, saved, name="payload")
    marker = tmp_path / "PWNED"
    cfg_path = root / "configs" / "inference.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["network_def"] = f"$__import__('pathlib').Path({str(marker)!r}).touch() or None"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(BundleVerificationError, match="__import__"):
        verify_bundle(root, sample=False)
    assert not marker.exists()


def test_unlisted_model_file_and_hash_types(adapted):
    import hashlib

    tmp, saved = adapted
    root, _ = _pkg(tmp, saved, name="unlisted")
    (root / "models" / "extra.pt").write_bytes(b"not listed")
    with pytest.raises(BundleVerificationError, match="models/extra.pt: in models/ but not listed"):
        verify_bundle(root, sample=False)
    (root / "models" / "extra.pt").unlink()
    lf = root / "large_files.yml"
    md5 = hashlib.md5((root / "models" / "model.pt").read_bytes()).hexdigest()
    prior = hashlib.sha256((root / "models" / "box_prior.json").read_bytes()).hexdigest()
    spec = hashlib.sha256((root / "models" / "model.json").read_bytes()).hexdigest()
    prior_entry = f"  - path: models/box_prior.json\n    hash_val: {prior}\n  - path: models/model.json\n    hash_val: {spec}\n"
    lf.write_text(f"large_files:\n  - path: models/model.pt\n    hash_val: {md5}\n    hash_type: md5\n{prior_entry}")
    assert check_large_files(root) == ["models/model.pt", "models/box_prior.json", "models/model.json"]
    lf.write_text(f"large_files:\n{prior_entry}")
    with pytest.raises(BundleVerificationError, match="models/model.pt: in models/ but not listed"):
        verify_bundle(root, sample=False)
    lf.write_text(f"large_files:\n  - path: models/model.pt\n    hash_val: {'f' * 32}\n    hash_type: md5\n"
                  f"{prior_entry}")
    with pytest.raises(BundleVerificationError) as err:
        verify_bundle(root, sample=False)
    assert f"its md5 is {md5} but large_files.yml says {'f' * 32}" in str(err.value)


def test_merged_bundle_keeps_the_zoo_weight_layout(adapted):
    """models/model.pt of a merged bundle is a bare state dict that loads into the bundle's network_def after a
    weights_only load (as MONAI's bundle tools do); the network arguments, codec and settings are plain JSON in
    models/model.json; the pair loads through load_generator, and without the JSON the error names it."""
    from monai.bundle import ConfigParser

    from busgen_monai.inferers import load_generator

    tmp, saved = adapted
    root, _ = _pkg(tmp, saved, name="zoo_layout")
    weights = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in weights.values())
    spec = json.loads((root / "models" / "model.json").read_text())
    assert {"network_kwargs", "codec", "settings"} <= set(spec)
    net = build_network(spec["settings"], ConditionCodec.from_dict(spec["codec"]), **spec["network_kwargs"])
    net.load_state_dict(weights)  # strict: every key and shape fits
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser.update({"bundle_root": str(root)})
    loaded, codec = parser.get_parsed_content("generator")
    assert all(torch.equal(loaded.state_dict()[k], v.float()) for k, v in weights.items())
    assert "model.json" in (root / "large_files.yml").read_text()
    verify_bundle(root, sample=False)
    (root / "models" / "model.json").unlink()
    with pytest.raises(ValueError, match="model.json next to it, which is missing"):
        load_generator(root / "models" / "model.pt")


def test_zoo_layout_with_safetensors_weights(tmp_path):
    """`busgen export --layout zoo OUT.safetensors`: safetensors weights + JSON, loaded through the same path with the
    same weights as the shipped file; a .safetensors file without its JSON is refused naming it."""
    from safetensors.torch import load_file

    from busgen_monai.inferers import default_generator, load_generator

    out = tmp_path / "gen.safetensors"
    assert main(["export", str(default_generator()), str(out), "--layout", "zoo"]) == 0
    assert (tmp_path / "gen.json").is_file() and set(load_file(str(out))) == set(load_generator(out)[0].state_dict())
    ref, _ = load_generator(default_generator())
    got, codec = load_generator(out)
    assert all(torch.equal(ref.state_dict()[k], v) for k, v in got.state_dict().items())
    assert codec.pathologies == ["benign", "malignant"]
    (tmp_path / "gen.json").unlink()
    with pytest.raises(ValueError, match="gen.json next to it, which is missing"):
        load_generator(out)
