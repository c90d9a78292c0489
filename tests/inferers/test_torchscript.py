"""TorchScript export of the generator: the traced module reproduces the network on inputs it was not traced with,
samples the same images through DPM-Solver++, carries its codec and settings, and loads without pickle."""

import torch

from busgen_monai.cli import main
from busgen_monai.inferers import default_generator, load_generator
from busgen_monai.inferers.torchscript import export_torchscript, load_torchscript


def test_shipped_generator_exports_and_matches(tmp_path):
    torch.set_num_threads(1)
    path = export_torchscript(default_generator(), tmp_path / "model.ts")
    module, extra = load_torchscript(path)
    assert extra["settings"]["image_size"] == 64 and "GE-LOGIQ-7" in str(extra["codec"])
    net, codec = load_generator(default_generator())
    net = net.float().eval()
    # a batch unlike the tracing one: 4 items, one box or none, other timesteps
    import numpy as np

    items = [{"pathology": p, "device": d, "boxes": b} for p, d, b in [
        ("benign", "GE-LOGIQ-5", []), ("malignant", "TOSHIBA-Aplio-300", [[0.4, 0.4, 0.7, 0.6]]),
        ("malignant", "GE-LOGIQ-7", []), ("benign", "U-Systems", [[0.1, 0.2, 0.3, 0.35]])]]
    cond = torch.as_tensor(np.stack([codec.encode_item(it) for it in items])).float()[:, None]
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 1, 64, 64, generator=g)
    t = torch.tensor([3, 77, 260, 480])
    with torch.no_grad():
        torch.testing.assert_close(module(x, t, cond), net(x, timesteps=t, context=cond), rtol=0, atol=1e-5)
    # a few DPM-Solver++ steps with each network give the same image
    from busgen_monai.schedulers import DPMSolverMultistepScheduler

    def sample(fn):
        sched = DPMSolverMultistepScheduler(num_train_timesteps=extra["settings"]["num_train_timesteps"],
                                            beta_start=extra["settings"]["beta_start"],
                                            beta_end=extra["settings"]["beta_end"], clip_sample=True)
        sched.set_timesteps(5)
        img = x.clone()
        with torch.no_grad():
            for step in sched.timesteps:
                img, _ = sched.step(fn(img, step.repeat(4)), step, img)
        return img

    torch.testing.assert_close(sample(lambda a, s: module(a, s, cond)),
                               sample(lambda a, s: net(a, timesteps=s, context=cond)), rtol=0, atol=1e-4)


def test_cli_export_writes_torchscript(tmp_path, capsys):
    assert main(["export", str(default_generator()), str(tmp_path / "m.pt"), "--torchscript",
                 str(tmp_path / "m.ts")]) == 0
    assert "equal outputs checked" in capsys.readouterr().out
    module, extra = load_torchscript(tmp_path / "m.ts")
    assert extra["network_kwargs"]["image_channels"] == 1
