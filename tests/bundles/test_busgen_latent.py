"""The latent family's bundles on the phantom: busgen_autoencoder trains (and reports its reconstruction),
busgen_latent trains a DiT on its latents through MONAI's LatentDiffusionInferer and resumes, the exported model
loads through load_generator, and busgen_sample draws BI-RADS-balanced images from it with the configs/latent.json
overlay. The two multi-GPU overlays train on two CPU ranks (torchrun, gloo; slow)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.bundles._monai_cli import monai_bundle_run, test_env

ROOT = Path(__file__).resolve().parents[2]
AE_BUNDLE = ROOT / "bundles" / "busgen_autoencoder"
LDM_BUNDLE = ROOT / "bundles" / "busgen_latent"
SAMPLE_BUNDLE = ROOT / "bundles" / "busgen_sample"
FAST = {"num_workers": 0, "progress_bar": False}


@pytest.fixture(scope="module")
def datalist(tmp_path_factory) -> Path:
    from busgen_monai.data.phantom import write_dataset

    return write_dataset(tmp_path_factory.mktemp("phantom"), n=24, seed=2, size=(48, 48))


def _env() -> dict:
    return test_env()


def _configs(bundle: Path, *names: str) -> list[str]:
    return [str(bundle / "configs" / f"{n}.json") for n in names]


def _bundle_run(bundle: Path, files: list[str], overrides: dict, timeout: int = 240) -> subprocess.CompletedProcess:
    return monai_bundle_run(bundle, files, overrides, timeout)


def test_configs_parse_with_every_preset(datalist):
    from monai.bundle import ConfigParser

    from busgen_monai.networks import LatentAutoencoderKL, count_parameters

    sizes = {}
    for name in ("cpu_tiny", "cpu", "paper"):
        p = ConfigParser()
        p.read_config(_configs(AE_BUNDLE, "train", f"preset_{name}"))
        p["datalist"] = str(datalist)
        p["bundle_root"] = str(AE_BUNDLE)
        net = p.get_parsed_content("network_def")
        assert isinstance(net, LatentAutoencoderKL)
        sizes[name] = (p.get_parsed_content("image_size"), net.latent_shape(p.get_parsed_content("image_size")),
                       count_parameters(net))
    assert sizes["cpu_tiny"][:2] == (32, (4, 8, 8))
    assert sizes["cpu"][:2] == (64, (4, 16, 16))
    assert sizes["paper"][:2] == (256, (4, 32, 32))  # x8, 4 latent channels: the latent-diffusion standard
    bad = ConfigParser()
    bad.read_config(_configs(AE_BUNDLE, "train"))
    bad["preset_name"] = "huge"
    with pytest.raises(RuntimeError) as err:  # MONAI wraps the config expression's error
        bad.get_parsed_content("preset")
    assert "unknown preset 'huge'" in str(err.value.__cause__) and "cpu_tiny" in str(err.value.__cause__)
    for b in (AE_BUNDLE, LDM_BUNDLE):
        readme = (b / "docs" / "README.md").read_text()
        assert "python -m monai.bundle run" in readme and "torchrun" in readme
        multi = json.loads((b / "configs" / "multi_gpu_train.json").read_text())
        # every multi-GPU overlay ends with the one shared end of a torchrun run (barrier, destroy, ranks > 0 exit)
        assert multi["finalize"][-1] == {"_target_": "busgen_monai.engines.end_process_group"}


def test_autoencoder_latent_and_sample_bundles_on_the_phantom(datalist, tmp_path):
    from busgen_monai.inferers import LatentDiffusionModel, generator_settings, load_generator
    from busgen_monai.networks import ConditionalDiT

    ae_out = tmp_path / "ae"
    _bundle_run(AE_BUNDLE, _configs(AE_BUNDLE, "train", "preset_cpu_tiny"),
                {**FAST, "datalist": str(datalist), "output_dir": str(ae_out), "max_epochs": 2})
    rec = json.loads((ae_out / "reconstruction.json").read_text())
    assert rec["num_images"] > 0 and 0 < rec["mae"] < 1.0 and rec["latent_shape"] == [4, 8, 8]
    assert (ae_out / "reconstruction.png").is_file()
    ae_ck = torch.load(next((ae_out / "models").glob("checkpoint_final_iteration=*.pt")), weights_only=True)
    assert ae_ck["network_kwargs"]["latent_channels"] == 4 and ae_ck["settings"]["image_size"] == 32

    ldm_out = tmp_path / "ldm"
    common = {**FAST, "datalist": str(datalist), "output_dir": str(ldm_out),
              "autoencoder_checkpoint": str(ae_out / "models")}
    _bundle_run(LDM_BUNDLE, _configs(LDM_BUNDLE, "train", "preset_cpu_tiny"), {**common, "max_epochs": 1})
    first = sorted((ldm_out / "models").glob("checkpoint_final_iteration=*.pt"))
    assert len(first) == 1
    ck = torch.load(first[0], weights_only=True)
    its = ck["trainer"]["iteration"]
    assert ck["network_class"] == {"name": "ConditionalDiT"}
    assert ck["autoencoder"]["network_kwargs"] == ae_ck["network_kwargs"]
    # centre_latents (default): the per-channel standardisation is folded into the 1x1 convs around the latent
    # space only; everything else is the trained first stage, and the pooled latent std is then 1
    changed = {k for k in ae_ck["network"] if not torch.equal(ck["autoencoder"]["network"][k], ae_ck["network"][k])}
    assert changed and all(k.startswith(("quant_conv_mu", "quant_conv_log_sigma", "post_quant_conv")) for k in changed)
    assert ck["autoencoder"]["scale_factor"] == pytest.approx(1.0, rel=1e-3)
    assert ck["settings"]["scale_factor"] == pytest.approx(ck["autoencoder"]["scale_factor"])
    assert ck["network_kwargs"]["input_size"] == 8 and ck["network_kwargs"]["in_channels"] == 4
    # resume: the second run continues from the saved iteration with the same autoencoder and latent scale
    proc = _bundle_run(LDM_BUNDLE, _configs(LDM_BUNDLE, "train", "preset_cpu_tiny"), {**common, "max_epochs": 2})
    assert "Restored all variables" in proc.stdout + proc.stderr
    ck2 = torch.load(ldm_out / "models" / f"checkpoint_final_iteration={2 * its}.pt", weights_only=True)
    # (the fixed sin-cos position embedding has no gradient, hence no optimizer state)
    assert {int(v["step"]) for v in ck2["optimizer"]["state"].values()} == {2 * its}
    model = ldm_out / "model.pt"
    net, codec = load_generator(model)
    assert isinstance(net, LatentDiffusionModel) and isinstance(net.diffusion_model, ConditionalDiT)
    assert generator_settings(model)["image_size"] == 32 and "4a" in codec.birads_values

    # the sample bundle, pointed at the latent model by its overlay
    gen = tmp_path / "gen"
    _bundle_run(SAMPLE_BUNDLE, _configs(SAMPLE_BUNDLE, "inference", "latent"),
                {"checkpoint": str(model), "datalist": str(datalist), "output_dir": str(gen), "num_images": 6,
                 "num_inference_steps": 3, "chunk_size": 3, "birads": ["2", "4a", "5"], "progress": False})
    items = json.loads((gen / "datalist.json").read_text())["training"]
    assert [it["birads"] for it in items] == ["2", "4a", "5"] * 2
    assert all(it["pathology"] == "benign" for it in items if it["birads"] == "2")
    assert {it["provenance"]["family"] for it in items} == {"latent"}
    img = np.asarray(Image.open(gen / items[0]["image"]))
    assert img.shape == (32, 32)
    # ... and the pixel sample bundle config alone still refuses nothing: the checkpoint names its family
    gen2 = tmp_path / "gen2"
    _bundle_run(SAMPLE_BUNDLE, _configs(SAMPLE_BUNDLE, "inference"),
                {"checkpoint": str(model), "datalist": str(datalist), "output_dir": str(gen2), "num_images": 2,
                 "num_inference_steps": 2, "progress": False})
    assert len(json.loads((gen2 / "datalist.json").read_text())["training"]) == 2


def _torchrun(bundle: Path, files: list[str], overrides: dict, tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not found next to the Python interpreter")
    kwargs = {"config_file": files, "bundle_root": str(bundle), **overrides}
    script = "import json, sys; from monai.bundle import run; run(**json.loads(sys.argv[1]))"
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", "--no-python", sys.executable, "-c", script,
           json.dumps(kwargs)]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_multi_gpu_overlays_on_two_cpu_processes(datalist, tmp_path):
    """About a minute: both overlays train the cpu_tiny preset for one epoch on two gloo ranks."""
    ae_out = tmp_path / "ae"
    _torchrun(AE_BUNDLE, _configs(AE_BUNDLE, "train", "preset_cpu_tiny", "multi_gpu_train"),
              {**FAST, "datalist": str(datalist), "output_dir": str(ae_out), "max_epochs": 1}, tmp_path)
    ae_ck = list((ae_out / "models").glob("checkpoint_final_iteration=*.pt"))
    assert len(ae_ck) == 1 and (ae_out / "reconstruction.json").is_file()  # rank 0 saves and reports
    ldm_out = tmp_path / "ldm"
    _torchrun(LDM_BUNDLE, _configs(LDM_BUNDLE, "train", "preset_cpu_tiny", "multi_gpu_train"),
              {**FAST, "datalist": str(datalist), "output_dir": str(ldm_out), "max_epochs": 1,
               "autoencoder_checkpoint": str(ae_out / "models")}, tmp_path)
    ck = list((ldm_out / "models").glob("checkpoint_final_iteration=*.pt"))
    assert len(ck) == 1
    state = torch.load(ck[0], weights_only=True)
    assert state["network_class"] == {"name": "ConditionalDiT"} and not any(
        k.startswith("module.") for k in state["network"])  # DDP wrapper stripped
    assert (ldm_out / "model.pt").is_file()
