"""LatentAutoencoderKL: encode/decode shapes, init_args, a reconstruction bound after a short overfit; the loss."""

from __future__ import annotations

import json

import pytest
import torch

from busgen_monai.networks import AUTOENCODER_NETWORKS, AutoencoderLoss, LatentAutoencoderKL, kl_divergence

TINY = dict(channels=(8, 16), num_res_blocks=1, attention_levels=(False, False), latent_channels=2,
            norm_num_groups=4, with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _blobs(n: int = 4, size: int = 16) -> torch.Tensor:
    """Grey images in [-1, 1]: a bright disc on a darker background, at different places."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    out = []
    for i in range(n):
        cy, cx = 4 + 2 * i, 12 - 2 * i
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 <= 9).float()
        out.append(disc * 1.4 - 0.7 + 0.1 * torch.sin(xx / 3.0))
    return torch.stack(out)[:, None]


def test_encode_decode_shapes_and_init_args():
    torch.manual_seed(0)
    ae = LatentAutoencoderKL(**TINY)
    assert ae.downsample == 2
    assert ae.latent_shape(16) == (2, 8, 8)
    assert ae.latent_shape((32, 24)) == (2, 16, 12)
    with pytest.raises(ValueError, match="multiple"):
        ae.latent_shape(15)
    x = torch.randn(3, 1, 16, 16)
    z = ae.encode_stage_2_inputs(x)
    assert z.shape == (3, 2, 8, 8)
    assert ae.decode_stage_2_outputs(z).shape == x.shape
    recon, mu, sigma = ae(x)
    assert recon.shape == x.shape and mu.shape == sigma.shape == z.shape
    args = json.loads(json.dumps(ae.init_args))
    again = AUTOENCODER_NETWORKS["LatentAutoencoderKL"](**args)
    again.load_state_dict(ae.state_dict())
    assert LatentAutoencoderKL(**{**TINY, "channels": (8, 16, 16), "num_res_blocks": 1,
                                  "attention_levels": (False, False, False)}).downsample == 4


def test_short_overfit_reconstructs_within_a_bound():
    torch.manual_seed(0)
    ae = LatentAutoencoderKL(**TINY)
    loss_fn = AutoencoderLoss(l1_weight=1.0, kl_weight=1e-6)
    opt = torch.optim.Adam(ae.parameters(), lr=3e-3)
    x = _blobs()
    with torch.no_grad():
        start = float((ae.reconstruct(x) - x).abs().mean())
    for _ in range(120):
        loss = loss_fn(ae(x), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    ae.eval()
    with torch.no_grad():
        err = float((ae.decode_stage_2_outputs(ae.encode_stage_2_inputs(x)) - x).abs().mean())
    assert set(loss_fn.last_terms) == {"l1", "kl"}
    assert err < 0.1 < start, (start, err)  # images span [-0.8, 0.8]: mean error below 10 % of the range


def test_loss_terms_ssim_and_adversarial():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    mu, sigma = torch.zeros(2, 2, 8, 8), torch.ones(2, 2, 8, 8)
    assert float(kl_divergence(mu, sigma)) == pytest.approx(0.0, abs=1e-6)
    assert float(kl_divergence(mu + 1, sigma)) == pytest.approx(0.5 * 128, rel=1e-5)
    plain = AutoencoderLoss()
    assert float(plain((x, mu, sigma), x)) == pytest.approx(0.0, abs=1e-6)
    full = AutoencoderLoss(ssim_weight=0.5, adversarial_weight=0.1, discriminator_channels=8, discriminator_layers=2)
    recon = (x + 0.3 * torch.randn_like(x)).requires_grad_(True)
    d_before = [p.detach().clone() for p in full.discriminator.parameters()]
    loss = full((recon, mu, sigma), x)
    loss.backward()  # the discriminator step happened before the generator term: no in-place conflict
    assert {"l1", "kl", "ssim_loss", "g_adv", "d_loss"} <= set(full.last_terms)
    assert recon.grad is not None and recon.grad.abs().sum() > 0
    assert any(not torch.equal(a, b) for a, b in zip(d_before, full.discriminator.parameters()))
    with pytest.raises(ValueError, match="kl_weight"):
        AutoencoderLoss(kl_weight=-1)


def test_standardise_latents_is_exact_and_centres_every_channel(tmp_path):
    """Folding per-channel (mean, std) into the 1x1 convs: decode(encode(x)) is unchanged, the latents of the same
    images come out with zero mean / unit std per channel, sigma scales with them, and the weights reload as a plain
    MONAI state dict."""
    torch.manual_seed(0)
    ae = LatentAutoencoderKL(**TINY).eval()
    with torch.no_grad():  # give the latent convs offsets like a trained first stage's
        ae.quant_conv_mu.conv.bias.copy_(torch.tensor([1.5, -2.0]))
    x = torch.cat([_blobs(), -_blobs()])
    with torch.no_grad():
        mu, sigma = ae.encode(x)
        before = ae.decode(mu)
        mean, std = mu.mean((0, 2, 3)), mu.std((0, 2, 3))
        assert mean.abs().min() > 0.5  # really off-centre before
        ae.standardise_latents_(mean, std)
        mu2, sigma2 = ae.encode(x)
        after = ae.decode(mu2)
    assert torch.allclose(after, before, atol=1e-5)
    assert torch.allclose(mu2.mean((0, 2, 3)), torch.zeros(2), atol=1e-5)
    assert torch.allclose(mu2.std((0, 2, 3)), torch.ones(2), atol=1e-5)
    assert torch.allclose(sigma2, sigma / std[None, :, None, None], rtol=1e-4)
    torch.save(ae.state_dict(), tmp_path / "ae.pt")
    again = LatentAutoencoderKL(**TINY).eval()
    again.load_state_dict(torch.load(tmp_path / "ae.pt", weights_only=True))
    with torch.no_grad():
        assert torch.allclose(again.encode(x)[0], mu2, atol=1e-6)
    with pytest.raises(ValueError, match="one per latent channel"):
        ae.standardise_latents_([0.0], [1.0])
    with pytest.raises(ValueError, match="> 0"):
        ae.standardise_latents_([0.0, 0.0], [1.0, 0.0])
