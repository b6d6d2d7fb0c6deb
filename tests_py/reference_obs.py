"""numpy float64 oracles for the second-order pruning methods, written from the math.

Nothing here is ported from a repository or imports sparseforge. The setting: a linear
layer ``y = W x`` with calibration inputs of second moment ``H = E[x xᵀ]`` (``Xᵀ X / T``).
Removing weights from row ``w`` and changing the rest by ``δ`` costs ``½ δᵀ H δ`` in
expected squared output error per row (the factor ½ as in Optimal Brain Surgeon).

* **OBS** (Hassibi & Stork): removing weight ``q`` optimally costs
  ``w_q² / (2 [H⁻¹]_qq)`` and moves the row by ``δ = -(w_q / [H⁻¹]_qq) · H⁻¹[:, q]``;
  afterwards ``q`` is a constrained coordinate, and the inverse of the Hessian restricted
  to the free coordinates is ``H⁻¹ - H⁻¹[:, q] H⁻¹[q, :] / [H⁻¹]_qq`` (a Schur complement:
  row/column q become 0). Greedy OBS repeats this.
* **OBD** (LeCun et al.): diagonal approximation, saliency ``½ w_q² H_qq``, no update.
* **Exact reconstruction** for a fixed mask: the least-squares optimum
  ``min_ŵ (w-ŵ)ᵀ H (w-ŵ)`` subject to ``ŵ = 0`` off the kept set ``S``:
  ``H_SS ŵ_S = (H w)_S``.

Damping and dead inputs follow SparseGPT's conventions: an input that is never active
(``H_qq == 0``) gets ``H_qq = 1`` and its weights are zeroed; then
``percdamp · mean(diag H)`` is added to the diagonal.

Masks are bool, **True = kept** (sparseforge's convention). N:M means n kept of every m.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "closed_form_one_row",
    "damped",
    "obd",
    "obs",
    "obs_row",
    "reconstruct_exact",
    "reconstruction_error",
]


def _f64(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.name == "bfloat16":
        a = a.astype(np.float32)
    return a.astype(np.float64)


def _prune_plan(
    cols: int, sparsity: float | None, pattern: tuple[int, int] | None
) -> tuple[int, int | None, int | None]:
    """(weights pruned per row, n, m)."""
    if pattern is not None:
        n, m = pattern
        assert cols % m == 0, (cols, m)
        return (cols // m) * (m - n), n, m
    s = 0.5 if sparsity is None else sparsity
    return int(cols * s), None, None


def damped(H: np.ndarray, percdamp: float) -> tuple[np.ndarray, list[int]]:
    """``(H', dead)``: a float64 copy of ``H`` with each zero diagonal entry set to 1
    (``dead`` lists those indices, ascending), then ``percdamp * mean(diag)`` added to the
    diagonal (the mean taken after the dead fix)."""
    Hd = _f64(H).copy()
    d = np.diagonal(Hd)
    dead = [int(i) for i in np.flatnonzero(d == 0)]
    Hd[dead, dead] = 1.0
    Hd[np.diag_indices_from(Hd)] += percdamp * float(np.mean(np.diagonal(Hd)))
    return Hd, dead


def obs_row(
    w: np.ndarray,
    Hinv: np.ndarray,
    k: int,
    n: int | None = None,
    m: int | None = None,
) -> tuple[np.ndarray, list[int], float]:
    """Exact greedy OBS on one row.

    Repeats ``k`` times (N:M: until every group of m keeps n): among the unpruned
    coordinates (N:M: only in groups still keeping more than n) take the ``q`` with the
    smallest ``w_q² / Hinv_qq`` (ties: lowest index), add its loss ``w_q² / (2 Hinv_qq)``,
    move the row by ``-(w_q / Hinv_qq) Hinv[:, q]``, set ``w_q = 0`` and update
    ``Hinv -= Hinv[:, q] Hinv[q, :] / Hinv_qq``.

    Returns ``(w, pruned indices in pruning order, loss)``.
    """
    w = _f64(w).copy()
    Hinv = _f64(Hinv).copy()
    c = w.shape[0]
    pruned = np.zeros(c, dtype=bool)
    order: list[int] = []
    loss = 0.0
    if n is not None:
        assert m is not None
        assert c % m == 0
        kept_in_group = np.full(c // m, m)
        k = (c // m) * (m - n)
    for _ in range(k):
        candidates = ~pruned
        if n is not None:
            assert m is not None
            open_group = np.repeat(kept_in_group > n, m)
            candidates &= open_group
        idx = np.flatnonzero(candidates)
        d = np.diagonal(Hinv)[idx]
        score = w[idx] ** 2 / d
        q = int(idx[int(np.argmin(score))])  # argmin returns the first (lowest index) minimum
        hqq = Hinv[q, q]
        wq = w[q]
        loss += wq * wq / (2.0 * hqq)
        w -= (wq / hqq) * Hinv[:, q]
        w[q] = 0.0
        Hinv -= np.outer(Hinv[:, q], Hinv[q, :]) / hqq
        pruned[q] = True
        order.append(q)
        if n is not None:
            assert m is not None
            kept_in_group[q // m] -= 1
    w[pruned] = 0.0
    return w, order, loss


def obs(
    W: np.ndarray,
    H: np.ndarray,
    sparsity: float | None = None,
    *,
    pattern: tuple[int, int] | None = None,
    percdamp: float = 0.01,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy OBS on every row (rows are independent) with ``Hinv = inv(damped(H))``.

    ``k = int(in_features * sparsity)`` per row, or N:M ``pattern=(n, m)`` (n kept).
    Dead columns of ``W`` are zeroed first. Returns ``(W_hat, keep, row_loss)``, float64.
    """
    W64 = _f64(W).copy()
    Hd, dead = damped(H, percdamp)
    W64[:, dead] = 0.0
    Hinv = np.linalg.inv(Hd)
    Hinv = (Hinv + Hinv.T) / 2
    k, n, m = _prune_plan(W64.shape[1], sparsity, pattern)
    out = np.zeros_like(W64)
    keep = np.ones(W64.shape, dtype=bool)
    losses = np.zeros(W64.shape[0])
    for r in range(W64.shape[0]):
        w, order, loss = obs_row(W64[r], Hinv, k, n, m)
        out[r] = w
        keep[r, order] = False
        losses[r] = loss
    return out, keep, losses


def obd(
    W: np.ndarray,
    H: np.ndarray,
    sparsity: float | None = None,
    *,
    pattern: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Optimal Brain Damage: per row prune the ``k`` lowest ``(½ w_q² H_qq, q)`` with the
    undamped diagonal (N:M: the ``m - n`` lowest of each group), no weight update.
    Returns ``(W_hat, keep)`` with W_hat float64."""
    W64 = _f64(W)
    hd = np.diagonal(_f64(H))
    sal = 0.5 * W64**2 * hd[None, :]
    k, n, m = _prune_plan(W64.shape[1], sparsity, pattern)
    keep = np.ones(W64.shape, dtype=bool)
    for r in range(W64.shape[0]):
        if n is None:
            keep[r, np.argsort(sal[r], kind="stable")[:k]] = False
        else:
            assert m is not None
            for g in range(0, W64.shape[1], m):
                low = np.argsort(sal[r, g : g + m], kind="stable")[: m - n]
                keep[r, g + low] = False
    return np.where(keep, W64, 0.0), keep


def reconstruct_exact(
    W: np.ndarray,
    H: np.ndarray,
    keep: np.ndarray,
    percdamp: float = 0.01,
    *,
    zero_dead: bool = True,
) -> np.ndarray:
    """Per row the least-squares optimum for a fixed mask under ``H' = damped(H)``:
    ``ŵ_S = solve(H'_SS, (H' w)_S)`` on the kept set ``S``, 0 elsewhere (float64).

    ``zero_dead``: first zero the columns of dead inputs, as :func:`obs` and SparseGPT do
    (their inputs are always 0, so the output is the same either way; without it a kept
    dead weight would stay ``w_d``, since ``H'`` is diagonal in that row and column).
    """
    W64 = _f64(W).copy()
    Hd, dead = damped(H, percdamp)
    if zero_dead:
        W64[:, dead] = 0.0
    out = np.zeros_like(W64)
    for r in range(W64.shape[0]):
        S = np.flatnonzero(keep[r])
        if S.size == 0:
            continue
        rhs = (Hd @ W64[r])[S]
        out[r, S] = np.linalg.solve(Hd[np.ix_(S, S)], rhs)
    return out


def reconstruction_error(W: np.ndarray, W_hat: np.ndarray, H: np.ndarray) -> float:
    """``trace((W-Ŵ) H (W-Ŵ)ᵀ) / trace(W H Wᵀ)`` in float64: with ``H = XᵀX`` this is
    ``‖(W-Ŵ)Xᵀ‖² / ‖W Xᵀ‖²``, the relative output error on the calibration tokens."""
    W64 = _f64(W)
    D = W64 - _f64(W_hat)
    H64 = _f64(H)
    return float(np.einsum("ij,jk,ik->", D, H64, D) / np.einsum("ij,jk,ik->", W64, H64, W64))


# --- hand-derived closed forms ------------------------------------------------------------


def _inv2(a: float, b: float, c: float) -> np.ndarray:
    """Inverse of the symmetric 2x2 ``[[a, b], [b, c]]`` by the adjugate."""
    det = a * c - b * b
    return np.array([[c, -b], [-b, a]]) / det


def closed_form_one_row(
    w: np.ndarray, H: np.ndarray, k: int
) -> tuple[np.ndarray, list[int], float]:
    """Greedy OBS for a single row of 2 or 3 inputs, by hand, without forming ``H⁻¹``.

    For a free set ``F`` and a candidate ``q ∈ F`` with ``R = F \\ {q}``, block inversion
    gives ``1/[H_FF⁻¹]_qq = H_qq - H_qR H_RR⁻¹ H_Rq`` (the Schur complement ``σ_q``), so the
    OBS score ``w_q² / [H_FF⁻¹]_qq = w_q² σ_q``, the loss is ``½ w_q² σ_q`` and the updated
    free weights are ``ŵ_R = w_R + H_RR⁻¹ H_Rq w_q`` (the minimiser of the quadratic with
    ``ŵ_q = 0``; equal to ``-w_q / [H⁻¹]_qq · H⁻¹[:, q]`` restricted to ``R``). ``H_RR⁻¹``
    is a scalar or the 2x2 adjugate formula. ``H`` is used as given (damp it first).

    Returns ``(w, pruned indices in order, loss)``; ``k`` < number of inputs.
    """
    w = _f64(w).copy()
    H = _f64(H)
    free = list(range(w.shape[0]))
    assert 2 <= len(free) <= 3
    assert 0 <= k < len(free)
    order: list[int] = []
    loss = 0.0
    for _ in range(k):
        best: tuple[float, int, np.ndarray, float] | None = None
        for q in free:
            R = [j for j in free if j != q]
            if len(R) == 1:
                r = R[0]
                HRR_inv = np.array([[1.0 / H[r, r]]])
            else:
                r0, r1 = R
                HRR_inv = _inv2(H[r0, r0], H[r0, r1], H[r1, r1])
            HRq = H[R, q]
            sigma = H[q, q] - HRq @ HRR_inv @ HRq
            score = w[q] ** 2 * sigma
            wR = w[R] + HRR_inv @ HRq * w[q]
            if best is None or score < best[0]:  # strict <: the lowest index wins a tie
                best = (score, q, wR, sigma)
        assert best is not None
        score, q, wR, _sigma = best
        loss += 0.5 * score
        R = [j for j in free if j != q]
        w[R] = wR
        w[q] = 0.0
        free = R
        order.append(q)
    return w, order, loss
