"""The k-sparse VAE: top-k mask, KL, ELBO and the architecture."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from simobs.embedding.model import KSparseVAE, VAEArchitecture, loss_terms, gaussian_kl, top_k_mask


def test_top_k_mask_keeps_exactly_k_largest_per_row() -> None:
    torch.manual_seed(0)
    scores = torch.randn(50, 40).abs()
    mask = top_k_mask(scores, 7)
    assert mask.shape == scores.shape
    assert torch.all(mask.sum(dim=1) == 7)
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    # every kept score is at least as large as every dropped one, row by row
    kept_min = torch.where(mask.bool(), scores, torch.inf).min(dim=1).values
    dropped_max = torch.where(mask.bool(), -torch.inf, scores).max(dim=1).values
    assert torch.all(kept_min >= dropped_max)


@pytest.mark.parametrize("k", [0, 41])
def test_top_k_mask_rejects_k_out_of_range(k: int) -> None:
    with pytest.raises(ValueError, match="k="):
        top_k_mask(torch.ones(2, 40), k)


def test_gradients_reach_only_the_active_units() -> None:
    torch.manual_seed(1)
    arch = VAEArchitecture(bands=3, image_size=16, width=8, depth=2, max_width=16, latent_dim=32, k=5)
    model = KSparseVAE(arch).train()
    x = torch.randn(6, 3, 16, 16)
    out = model(x, sample=True)
    out.mu.retain_grad()
    out.logvar.retain_grad()
    loss = loss_terms(x, out.x_hat, out.kl, beta=0.1)["loss"].sum()
    loss.backward()
    active = out.mask.bool()
    assert torch.all(active.sum(dim=1) == 5)
    assert torch.all(out.z[~active] == 0)
    for grad in (out.mu.grad, out.logvar.grad):
        assert grad is not None
        assert torch.all(grad[~active] == 0)
        assert torch.count_nonzero(grad[active]) == active.sum()


def test_kl_matches_closed_form_of_diagonal_gaussian() -> None:
    torch.manual_seed(2)
    mu = torch.randn(9, 12) * 2
    logvar = torch.randn(9, 12)
    reference = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0))
    torch.testing.assert_close(gaussian_kl(mu, logvar), reference.sum(dim=1))
    mask = top_k_mask(mu.abs(), 4)
    torch.testing.assert_close(gaussian_kl(mu, logvar, mask), (reference * mask).sum(dim=1))
    # hand value: mu=1, sigma=1 -> 0.5 nats per unit
    assert gaussian_kl(torch.ones(1, 3), torch.zeros(1, 3)).item() == pytest.approx(1.5)


def test_typicality_loss_is_minus_the_gaussian_log_likelihood_plus_kl() -> None:
    torch.manual_seed(3)
    x = torch.randn(4, 3, 8, 8)
    x_hat = x + 0.1 * torch.randn_like(x)
    kl = torch.rand(4) * 10
    beta = 0.2
    terms = loss_terms(x, x_hat, kl, beta)
    log_lik = Normal(x_hat, beta).log_prob(x).flatten(1).sum(dim=1)
    torch.testing.assert_close(terms["typicality_loss"], kl - log_lik, rtol=1e-5, atol=1e-3)
    sse = (x - x_hat).square().flatten(1).sum(dim=1)
    torch.testing.assert_close(terms["loss"], sse / (2 * beta**2) + kl)
    torch.testing.assert_close(terms["mse"], sse / x[0].numel())


def test_architecture_checks_and_round_trip() -> None:
    with pytest.raises(ValueError, match="divisible"):
        VAEArchitecture(image_size=60, depth=4)
    with pytest.raises(ValueError, match="k=600"):
        VAEArchitecture(latent_dim=512, k=600)
    with pytest.raises(ValueError, match="unknown keys"):
        VAEArchitecture.from_dict({"widht": 3})
    arch = VAEArchitecture(width=4, depth=4, latent_dim=64, k=8)
    assert VAEArchitecture.from_dict(arch.to_dict()) == arch
    model = KSparseVAE(arch).eval()
    out = model(torch.zeros(2, 3, 64, 64))
    assert out.x_hat.shape == (2, 3, 64, 64)
    assert out.embedding.shape == (2, 64)
    assert torch.all((out.embedding != 0).sum(dim=1) <= 8)


def test_eval_forward_is_deterministic_and_uses_the_mean() -> None:
    arch = VAEArchitecture(bands=2, image_size=16, width=8, depth=2, max_width=16, latent_dim=16, k=3)
    model = KSparseVAE(arch).eval()
    x = torch.randn(3, 2, 16, 16)
    a, b = model(x), model(x)
    torch.testing.assert_close(a.x_hat, b.x_hat)
    torch.testing.assert_close(a.z, a.mu * a.mask)
    assert math.isfinite(float(a.kl.detach().sum()))
