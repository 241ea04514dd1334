"""The VAE likelihood: a variational auto-encoder scored by its ELBO, with seeded per-example noise."""

from __future__ import annotations

import hashlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .batch import Batch
from .errors import NFKError
from .likelihoods import Likelihood, ParamSelector


class _EncoderDecoder(nn.Module):
    def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder


class VAE(Likelihood):
    """A variational auto-encoder scored by its ELBO (``m = 0``).

    ``ELBO(x) = mean_s log p(x | z_s) - KL(q(z|x) ‖ N(0, I))`` with ``z_s = μ + σ ε_s``. The noise
    ``ε`` is drawn per example from a generator seeded by the example's content and ``seed``, so the
    same input always gets the same score, whatever batch it sits in.

    Parameters
    ----------
    encoder : nn.Module
        Returns ``(mu, logvar)``, or one tensor ``(B, 2d)`` split into the two halves.
    decoder : nn.Module
        Maps ``z`` to Bernoulli logits or Gaussian means, with as many values per example as ``x``.
    n_mc : int
        Monte-Carlo samples per example. ``n_mc=0`` scores the noise-free "mean-code" ELBO,
        ``log p(x | z = μ(x)) - KL``: measured on digits (notebook 04, rank 64, 3 seeds) its NFK
        probe scores 0.960 ± 0.003 against 0.645 ± 0.023 with one sample, whose fixed noise
        dominates each example's gradient (eight samples: 0.84 at 8× the cost).
    likelihood : {"bernoulli", "gaussian"}
        Decoder likelihood; Bernoulli expects ``x`` in [0, 1].
    sigma : float
        Standard deviation of the Gaussian decoder.
    seed : int
        Seed of the per-example noise.
    params
        As in :class:`Likelihood`; names are ``encoder.*`` and ``decoder.*``.
    """

    family = "vae"

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        n_mc: int = 1,
        likelihood: str = "bernoulli",
        *,
        sigma: float = 1.0,
        seed: int = 0,
        params: ParamSelector = None,
    ) -> None:
        if likelihood not in ("bernoulli", "gaussian"):
            raise NFKError(f"likelihood={likelihood!r} is not one of 'bernoulli', 'gaussian'.")
        if int(n_mc) < 0:
            raise NFKError(f"n_mc must be 0 (score at the mean code) or more, got {n_mc}.")
        super().__init__(None, _EncoderDecoder(encoder, decoder), params=params, partition="none")
        self.encoder, self.decoder = encoder, decoder
        self.n_mc, self.likelihood, self.sigma, self.seed = int(n_mc), likelihood, float(sigma), seed
        self._latent_dim: int | None = None

    @staticmethod
    def _split(out: Any) -> tuple[Tensor, Tensor]:
        if isinstance(out, (tuple, list)):
            return out[0], out[1]
        d = out.shape[-1] // 2
        return out[..., :d], out[..., d:]

    def latent_dim(self, x: Tensor) -> int:
        if self._latent_dim is None:
            with torch.no_grad():
                mu, _ = self._split(self.encoder(x[:1]))
            self._latent_dim = int(mu.shape[-1])
        return self._latent_dim

    def prepare(self, batch: Batch) -> Batch:
        x = batch[0]
        d = self.latent_dim(x)
        dtype = x.dtype if x.is_floating_point() else torch.float32
        if self.n_mc == 0:  # the mean code: one "sample" with ε = 0
            return (x, torch.zeros(len(x), 1, d, dtype=dtype, device=x.device))
        flat = x.detach().to("cpu", torch.float32).reshape(len(x), -1).numpy()
        noise = torch.empty(len(x), self.n_mc, d, dtype=torch.float64)
        gen = torch.Generator()
        for i, row in enumerate(flat):
            digest = hashlib.blake2b(row.tobytes(), digest_size=8, key=str(self.seed).encode())
            gen.manual_seed(int.from_bytes(digest.digest(), "little") & (2**63 - 1))
            noise[i] = torch.randn(self.n_mc, d, generator=gen, dtype=torch.float64)
        return (x, noise.to(x.device, dtype))

    def log_prob(self, model: nn.Module, batch: Batch) -> Tensor:
        x, eps = batch[0], batch[-1]
        mu, logvar = self._split(model.encoder(x))
        z = mu.unsqueeze(1) + torch.exp(0.5 * logvar).unsqueeze(1) * eps  # (B, S, d)
        out = model.decoder(z.reshape(-1, z.shape[-1]))
        out = out.reshape(x.shape[0], eps.shape[1], -1)
        target = x.reshape(x.shape[0], 1, -1).expand_as(out)
        if self.likelihood == "bernoulli":
            rec = -F.binary_cross_entropy_with_logits(out, target, reduction="none").sum(-1)
        else:
            d = out.shape[-1]
            rec = -((target - out) ** 2).sum(-1) / (2 * self.sigma**2) - 0.5 * d * torch.log(
                torch.tensor(2 * torch.pi * self.sigma**2, dtype=out.dtype, device=out.device)
            )
        kl = 0.5 * (mu**2 + logvar.exp() - 1.0 - logvar).sum(-1)
        return rec.mean(1) - kl

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "n_mc": self.n_mc,
            "likelihood": self.likelihood,
            "sigma": self.sigma,
            "seed": self.seed,
        }
