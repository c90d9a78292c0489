"""Exact nearest-neighbour search by cosine similarity in blocks (scales to tens of thousands of images).

:class:`FeatureSpace` turns raw features into unit vectors (each part centred on the reference set's mean,
L2-normalised and weighted by ``sqrt(w)``, so a dot product is ``sum_k w_k cos_k``). :func:`topk_cosine` then finds,
for every query, the ``k`` most similar references exactly: the ``(N, M)`` similarity matrix is never held in
memory; queries are processed in blocks of ``query_block`` rows, references in blocks of ``ref_block`` columns, and
a running top-``k`` is merged after every block (memory ``O(query_block * (ref_block + k))``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["FeatureSpace", "topk_cosine", "brute_force_topk"]


class FeatureSpace:
    """Centre, normalise and weight feature parts (see the module docstring).

    Args:
        parts: ``[(name, width, weight), ...]`` covering the feature vector in order (default: one part).
    """

    def __init__(self, parts: Sequence[Sequence] | None = None) -> None:
        self.parts = [(str(n), int(w), float(wt)) for n, w, wt in parts] if parts else None
        self.means: list[torch.Tensor] | None = None

    def fit(self, reference: torch.Tensor) -> FeatureSpace:
        """Store each part's mean over the reference (training) features ``(M, D)``."""
        reference = reference.float()
        if self.parts is None:
            self.parts = [("features", reference.shape[1], 1.0)]
        if sum(p[1] for p in self.parts) != reference.shape[1]:
            raise ValueError(f"feature parts {self.parts} do not add up to the feature width {reference.shape[1]}")
        self.means = [chunk.mean(0) for chunk in self._split(reference)]
        return self

    def _split(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.split(x, [p[1] for p in self.parts], dim=1))

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Unit vectors ``(N, D)`` whose dot products are the weighted cosine similarities."""
        if self.means is None:
            raise RuntimeError("FeatureSpace.fit(reference) first")
        out = []
        total = sum(p[2] for p in self.parts) or 1.0
        for (_, _, w), chunk, mean in zip(self.parts, self._split(x.float()), self.means):
            c = chunk - mean
            c = c / c.norm(dim=1, keepdim=True).clamp_min(1e-12)
            out.append(c * (w / total) ** 0.5)
        return torch.cat(out, dim=1)


@torch.no_grad()
def topk_cosine(
    query: torch.Tensor,
    reference: torch.Tensor,
    k: int = 1,
    query_block: int = 1024,
    ref_block: int = 8192,
    exclude_self: bool = False,
    exclude: torch.Tensor | None = None,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest dot products of every query row with the reference rows (inputs already unit vectors).

    Args:
        query: ``(N, D)``.
        reference: ``(M, D)``.
        k: neighbours per query (``k <= M``, or ``M - 1`` with ``exclude_self``).
        query_block, ref_block: block sizes (rows of ``query`` / ``reference`` per matrix multiply).
        exclude_self: ``query`` *is* ``reference`` (same order): skip the diagonal (leave-one-out).
        exclude: ``(N,)`` reference index to skip for each query (``-1``: none), e.g. the queries' own indices when
            the queries are a subset of the references.
        device: where the products run (default: the query's device).

    Returns:
        ``(values (N, k), indices (N, k))``, sorted by decreasing similarity.
    """
    n, m = query.shape[0], reference.shape[0]
    if exclude_self:
        if n != m:
            raise ValueError("exclude_self needs query and reference to be the same rows; use exclude=indices")
        exclude = torch.arange(n)
    k_max = m - 1 if exclude is not None else m
    if not 1 <= k <= k_max:
        raise ValueError(f"k must be in [1, {k_max}] for {m} references, got {k}")
    device = torch.device(device) if device is not None else query.device
    out_v = torch.empty(n, k, dtype=torch.float32)
    out_i = torch.empty(n, k, dtype=torch.int64)
    for q0 in range(0, n, query_block):
        q = query[q0:q0 + query_block].to(device, torch.float32)
        best_v = torch.full((q.shape[0], k), -float("inf"), device=device)
        best_i = torch.full((q.shape[0], k), -1, dtype=torch.int64, device=device)
        for r0 in range(0, m, ref_block):
            r = reference[r0:r0 + ref_block].to(device, torch.float32)
            sims = q @ r.T
            if exclude is not None:
                rows = torch.arange(q.shape[0], device=device)
                cols = exclude[q0:q0 + q.shape[0]].to(device) - r0
                ok = (cols >= 0) & (cols < r.shape[0])
                sims[rows[ok], cols[ok]] = -float("inf")
            kk = min(k, sims.shape[1])
            v, i = sims.topk(kk, dim=1)
            cand_v = torch.cat([best_v, v], dim=1)
            cand_i = torch.cat([best_i, i + r0], dim=1)
            top_v, pos = cand_v.topk(k, dim=1)
            best_v, best_i = top_v, cand_i.gather(1, pos)
        out_v[q0:q0 + q.shape[0]] = best_v.cpu()
        out_i[q0:q0 + q.shape[0]] = best_i.cpu()
    return out_v, out_i


@torch.no_grad()
def brute_force_topk(query: torch.Tensor, reference: torch.Tensor, k: int = 1,
                     exclude_self: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The full similarity matrix and one ``topk``: the oracle :func:`topk_cosine` is tested against."""
    sims = query.float() @ reference.float().T
    if exclude_self:
        sims.fill_diagonal_(-float("inf"))
    return sims.topk(k, dim=1)
