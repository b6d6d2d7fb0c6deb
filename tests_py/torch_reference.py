"""Faithful PyTorch ports of the reference pruning code, as functions on tensors.

The model plumbing (hooks, layer loops, devices) is dropped; every operation that touches
the numbers is kept, in the reference's order and with the reference's torch calls, so the
ports behave as the repositories do (including their off-by-ones and tie handling):

* :func:`wanda_mask` — locuslab/wanda ``lib/prune.py`` ``prune_wanda`` (score, per-row
  stable sort, N:M ``topk``) and ``return_given_alpha`` + the bisection for
  ``--use_variant``;
* :func:`magnitude_mask` — locuslab/wanda ``lib/prune.py`` ``prune_magnitude`` (per layer,
  ``<=`` threshold);
* :func:`sparsegpt_fasterprune` — IST-DASLab/sparsegpt ``sparsegpt.py``
  ``SparseGPT.fasterprune`` (dead columns, damping, Cholesky inverse, per-block adaptive
  mask, lazy block updates, losses).

Conventions of the references (not sparseforge's): masks are **True = pruned**, and N:M
is given as ``prune_n`` / ``prunen`` = number **pruned** of every ``prune_m`` / ``prunem``.
The tests convert: sparseforge ``pattern="2:4"`` is ``prune_n=2, prune_m=4``; ``"1:4"`` is
``prune_n=3``.

Additions to ``sparsegpt_fasterprune``, each off by default and marked below: ``dtype`` (the
reference computes in float32; float64 gives an oracle), ``mask`` (the given-mask path of
locuslab/wanda's ``lib/ablate.py``), ``exact_count`` (prune exactly ``int(B*r*s)`` per
block instead of the reference's ``sort[k]`` with ``<=``, i.e. k+1) and ``index_ties``
(N:M ties broken by index, where ``topk`` leaves them unspecified).

Importing this module imports torch: tests call ``pytest.importorskip("torch")`` first.
"""

from __future__ import annotations

import torch

__all__ = ["magnitude_mask", "sparsegpt_fasterprune", "wanda_mask", "wanda_variant"]


# --- locuslab/wanda lib/prune.py -----------------------------------------------------------


def return_given_alpha(
    alpha: float,
    sort_res: tuple[torch.Tensor, torch.Tensor],
    W_metric: torch.Tensor,
    tmp_metric: torch.Tensor,
    sum_before: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """lib/prune.py ``return_given_alpha``, unchanged."""
    thres_cumsum = sum_before * alpha
    sort_mask = tmp_metric <= thres_cumsum.reshape((-1, 1))
    thres = torch.gather(sort_res[0], dim=1, index=sort_mask.sum(dim=1, keepdims=True) - 1)
    W_mask = W_metric <= thres
    cur_sparsity = (W_mask == True).sum() / W_mask.numel()  # noqa: E712  (as the reference)
    return W_mask, cur_sparsity


def wanda_variant(
    W: torch.Tensor, scaler_row: torch.Tensor, sparsity: float
) -> tuple[torch.Tensor, float, float, int]:
    """The ``--use_variant`` branch of ``prune_wanda``.

    Returns ``(W_mask, alpha, cur_sparsity, iterations)``: the mask (True = pruned), the
    final alpha, the achieved layer sparsity and the number of bisection steps (loop
    iterations after the first evaluation at alpha = 0.4).

    The dtype of the cumulative sums is the dtype of ``W_metric`` (float32 in the
    reference); pass float64 tensors for a float64 port.
    """
    W_metric = torch.abs(W) * torch.sqrt(scaler_row.reshape((1, -1)))
    sort_res = torch.sort(W_metric, dim=-1, stable=True)
    tmp_metric = torch.cumsum(sort_res[0], dim=1)
    sum_before = W_metric.sum(dim=1)

    alpha = 0.4
    alpha_hist = [0.0, 0.8]
    W_mask, cur_sparsity = return_given_alpha(alpha, sort_res, W_metric, tmp_metric, sum_before)
    iterations = 0
    while (torch.abs(cur_sparsity - sparsity) > 0.001) and (alpha_hist[1] - alpha_hist[0] >= 0.001):
        if cur_sparsity > sparsity:
            alpha_new = (alpha + alpha_hist[0]) / 2.0
            alpha_hist[1] = alpha
        else:
            alpha_new = (alpha + alpha_hist[1]) / 2.0
            alpha_hist[0] = alpha

        alpha = alpha_new
        W_mask, cur_sparsity = return_given_alpha(alpha, sort_res, W_metric, tmp_metric, sum_before)
        iterations += 1
    return W_mask, alpha, float(cur_sparsity), iterations


def wanda_mask(
    W: torch.Tensor,
    scaler_row: torch.Tensor,
    sparsity: float,
    prune_n: int = 0,
    prune_m: int = 0,
    use_variant: bool = False,
) -> torch.Tensor:
    """``prune_wanda``'s mask for one linear layer: True = **pruned**.

    ``scaler_row`` is the reference's statistic ``sum_t x_tj^2 / nsamples`` (a squared
    column norm up to scale); the score is ``|W| * sqrt(scaler_row)``. ``prune_n`` is the
    number pruned of every ``prune_m``.
    """
    W_metric = torch.abs(W) * torch.sqrt(scaler_row.reshape((1, -1)))

    W_mask = torch.zeros_like(W_metric) == 1  ## initialize a mask to be all False
    if prune_n != 0:
        # structured n:m sparsity
        for ii in range(W_metric.shape[1]):
            if ii % prune_m == 0:
                tmp = W_metric[:, ii : (ii + prune_m)].float()
                W_mask.scatter_(1, ii + torch.topk(tmp, prune_n, dim=1, largest=False)[1], True)
    else:
        sort_res = torch.sort(W_metric, dim=-1, stable=True)

        if use_variant:
            return wanda_variant(W, scaler_row, sparsity)[0]
        # unstructured pruning
        indices = sort_res[1][:, : int(W_metric.shape[1] * sparsity)]
        W_mask.scatter_(1, indices, True)
    return W_mask


def magnitude_mask(
    W: torch.Tensor, sparsity: float, prune_n: int = 0, prune_m: int = 0
) -> torch.Tensor:
    """``prune_magnitude``'s mask (True = **pruned**): one threshold over the whole layer,
    ``sort(|W|)[int(numel*s)]`` with ``<=`` (so k+1 or more pruned), or N:M ``topk``."""
    W_metric = torch.abs(W)
    if prune_n != 0:
        W_mask = torch.zeros_like(W) == 1
        for ii in range(W_metric.shape[1]):
            if ii % prune_m == 0:
                tmp = W_metric[:, ii : (ii + prune_m)].float()
                W_mask.scatter_(1, ii + torch.topk(tmp, prune_n, dim=1, largest=False)[1], True)
    else:
        thresh = torch.sort(W_metric.flatten())[0][int(W.numel() * sparsity)]
        W_mask = W_metric <= thresh
    return W_mask


# --- IST-DASLab/sparsegpt sparsegpt.py -----------------------------------------------------


def sparsegpt_fasterprune(
    W: torch.Tensor,
    H: torch.Tensor,
    sparsity: float,
    prunen: int = 0,
    prunem: int = 0,
    blocksize: int = 128,
    percdamp: float = 0.01,
    *,
    dtype: torch.dtype = torch.float32,
    mask: torch.Tensor | None = None,
    exact_count: bool = False,
    index_ties: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``SparseGPT.fasterprune`` on a weight ``W`` (rows, columns) and Hessian ``H``.

    Neither input is modified. ``prunen`` is the number pruned of every ``prunem``.

    Returns ``(W_pruned, mask, losses)``: the pruned and updated weights (in ``dtype``),
    the mask actually applied (True = **pruned**, the concatenated per-block ``mask1``)
    and the per-row ``Losses``.

    Additions to the reference (off by default):

    * ``dtype``: the compute dtype (the reference: ``W.float()`` and a float32 ``H``);
    * ``mask``: a given mask (True = pruned) used instead of the per-block selection, as
      the ``mask`` argument of locuslab/wanda ``lib/ablate.py``'s ``fasterprune``;
    * ``exact_count``: prune exactly ``int(tmp.numel() * sparsity)`` of each block (the
      lowest scores, ties by row-major index) instead of ``tmp <= sort(tmp)[k]``;
    * ``index_ties``: N:M picks the ``prunen`` lowest scores of a group by a stable sort
      (ties: lower index first) instead of ``topk(largest=False)``.
    """
    W = W.clone().to(dtype)
    H = H.clone().to(dtype)
    rows, columns = W.shape

    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0

    Losses = torch.zeros(rows, dtype=dtype)

    damp = percdamp * torch.mean(torch.diag(H))
    diag = torch.arange(columns)
    H[diag, diag] += damp
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    H = torch.linalg.cholesky(H, upper=True)
    Hinv = H

    applied = torch.zeros((rows, columns), dtype=torch.bool)

    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1

        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Losses1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]

        if prunen == 0:
            if mask is not None:
                mask1 = mask[:, i1:i2].clone()
            else:
                tmp = W1**2 / (torch.diag(Hinv1).reshape((1, -1))) ** 2
                if exact_count:  # addition: exactly k per block
                    k = int(tmp.numel() * sparsity)
                    order = torch.sort(tmp.flatten(), stable=True)[1][:k]
                    mask1 = torch.zeros(tmp.numel(), dtype=torch.bool)
                    mask1[order] = True
                    mask1 = mask1.reshape(tmp.shape)
                else:
                    thresh = torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity)]
                    mask1 = tmp <= thresh
        else:
            mask1 = torch.zeros_like(W1) == 1

        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]

            if prunen != 0 and i % prunem == 0:
                tmp = (
                    W1[:, i : (i + prunem)] ** 2
                    / (torch.diag(Hinv1)[i : (i + prunem)].reshape((1, -1))) ** 2
                )
                if index_ties:  # addition: ties by index
                    low = torch.sort(tmp, dim=1, stable=True)[1][:, :prunen]
                else:
                    low = torch.topk(tmp, prunen, dim=1, largest=False)[1]
                mask1.scatter_(1, i + low, True)

            q = w.clone()
            q[mask1[:, i]] = 0

            Q1[:, i] = q
            Losses1[:, i] = (w - q) ** 2 / d**2

            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1

        W[:, i1:i2] = Q1
        Losses += torch.sum(Losses1, 1) / 2
        applied[:, i1:i2] = mask1

        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])

    return W, applied, Losses
