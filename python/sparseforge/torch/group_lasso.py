"""Group lasso for structured sparsity (Wen et al. 2016 SSL; the proximal form of torchao's
PAT ``ProxGroupLasso``).

A :class:`Groups` object is a family of G groups, each spanning slices of one or more
weights (an MLP neuron = a row of ``gate_proj`` and ``up_proj`` and a column of
``down_proj``). With ``||w_g||`` the L2 norm over everything in group g and ``n_g`` its size:

* penalty: ``lam * sum_g sqrt(n_g) * ||w_g||`` (differentiable; add it to the loss);
* proximal step after an optimizer step of size ``lr``:
  ``w_g <- w_g * max(0, 1 - lam * sqrt(n_g) * lr / ||w_g||)`` — groups with
  ``||w_g|| <= lam * sqrt(n_g) * lr`` become exactly zero, the others shrink in norm by
  ``lam * sqrt(n_g) * lr``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._util import check_float, check_int, torch_module

__all__ = ["Groups"]


class _Member:
    """One weight's share of a group family: ``view(W) -> (G, k)`` and a broadcastable
    factor shape."""

    def __init__(self, weight: Any, kind: str, arg: int = 0) -> None:
        self.weight = weight
        self.kind = kind
        self.arg = arg
        rows, cols = weight.shape
        if kind == "rows":
            self.count = rows
        elif kind == "columns":
            self.count = cols
        elif kind == "row_blocks":  # heads on dim 0: arg = rows per group
            if rows % arg:
                raise ValueError(f"num_heads: {rows} rows do not split into groups of {arg}")
            self.count = rows // arg
        elif kind == "col_blocks":  # heads on dim 1
            if cols % arg:
                raise ValueError(f"num_heads: {cols} columns do not split into groups of {arg}")
            self.count = cols // arg
        elif kind == "nm":
            if cols % arg:
                raise ValueError(f"m: in_features {cols} is not a multiple of m={arg}")
            self.count = rows * (cols // arg)
        else:  # pragma: no cover
            raise ValueError(kind)

    def sq_norms(self, w: Any) -> Any:
        """Squared L2 norm of this member's slice of each group, shape (G,)."""
        rows, cols = w.shape
        if self.kind == "rows":
            return (w * w).sum(dim=1)
        if self.kind == "columns":
            return (w * w).sum(dim=0)
        if self.kind == "row_blocks":
            return (w * w).reshape(self.count, -1).sum(dim=1)
        if self.kind == "col_blocks":
            return (w * w).reshape(rows, self.count, self.arg).sum(dim=(0, 2))
        return (w * w).reshape(rows, cols // self.arg, self.arg).sum(dim=2).reshape(-1)

    def size(self) -> int:
        rows, cols = self.weight.shape
        return int(rows * cols // self.count)

    def scale_(self, factor: Any) -> None:
        w = self.weight.data
        rows, cols = w.shape
        if self.kind == "rows":
            w.mul_(factor[:, None])
        elif self.kind == "columns":
            w.mul_(factor[None, :])
        elif self.kind == "row_blocks":
            w.view(self.count, -1).mul_(factor[:, None])
        elif self.kind == "col_blocks":
            w.view(rows, self.count, self.arg).mul_(factor[None, :, None])
        else:
            w.view(rows, cols // self.arg, self.arg).mul_(
                factor.reshape(rows, cols // self.arg)[:, :, None]
            )


class Groups:
    """A family of groups over one or more weights (use the constructors)."""

    def __init__(self, members: Sequence[_Member], name: str = "") -> None:
        if not members:
            raise ValueError("members: expected at least one weight")
        counts = {m.count for m in members}
        if len(counts) != 1:
            raise ValueError(f"members: the weights give different group counts {sorted(counts)}")
        self.members = list(members)
        self.name = name
        self.count = members[0].count
        self.group_size = sum(m.size() for m in members)

    # -- constructors -----------------------------------------------------------------
    @classmethod
    def rows(cls, weight: Any) -> Groups:
        """Each output row (neuron of this layer's output) is a group."""
        return cls([_Member(weight, "rows")], "rows")

    @classmethod
    def columns(cls, weight: Any) -> Groups:
        """Each input column is a group."""
        return cls([_Member(weight, "columns")], "columns")

    @classmethod
    def nm(cls, weight: Any, m: int = 4) -> Groups:
        """Each run of ``m`` consecutive weights along ``in_features`` (an N:M group)."""
        return cls([_Member(weight, "nm", check_int(m, "m", 1))], "nm")

    @classmethod
    def mlp_neurons(cls, gate: Any, up: Any, down: Any) -> Groups:
        """SwiGLU neuron j: row j of ``gate`` and ``up`` and column j of ``down``."""
        return cls(
            [_Member(gate, "rows"), _Member(up, "rows"), _Member(down, "columns")], "neurons"
        )

    @classmethod
    def attention_heads(
        cls,
        q: Any,
        o: Any,
        num_heads: int,
        k: Any = None,
        v: Any = None,
    ) -> Groups:
        """Head h: its ``head_dim`` rows of ``q`` (and of ``k``/``v`` when given: only
        without GQA, one kv head per query head) and its columns of ``o``."""
        h = check_int(num_heads, "num_heads", 1)
        if q.shape[0] % h:
            raise ValueError(f"num_heads: q has {q.shape[0]} rows, not a multiple of {h}")
        hd = q.shape[0] // h
        members = [_Member(q, "row_blocks", hd), _Member(o, "col_blocks", hd)]
        for name, w in (("k", k), ("v", v)):
            if w is not None:
                if w.shape[0] != q.shape[0]:
                    raise ValueError(
                        f"{name}: {w.shape[0]} rows differ from q's {q.shape[0]} (GQA: group "
                        "k/v separately with Groups.rows-like blocks)"
                    )
                members.append(_Member(w, "row_blocks", hd))
        return cls(members, "heads")

    # -- math -------------------------------------------------------------------------
    def norms(self) -> Any:
        """L2 norm of every group, shape (G,), differentiable."""
        return self._sq_norms().sqrt()

    def _sq_norms(self) -> Any:
        total: Any = self.members[0].sq_norms(self.members[0].weight)
        for m in self.members[1:]:
            total = total + m.sq_norms(m.weight)
        return total

    def penalty(self, lam: float) -> Any:
        """``lam * sqrt(n_g) * sum_g ||w_g||`` (all groups have the same size ``n_g``).
        The gradient at a zero group is 0 (the subgradient Caffe's SSL uses)."""
        torch = torch_module()
        lam = check_float(lam, "lam")
        sq = self._sq_norms()
        # sqrt with a zero-safe gradient
        safe = torch.where(sq > 0, sq, torch.ones_like(sq))
        norms = torch.where(sq > 0, safe.sqrt(), torch.zeros_like(sq))
        return lam * (self.group_size**0.5) * norms.sum()

    def prox_(self, lam: float, lr: float) -> int:
        """The closed-form proximal step, in place; returns the number of zero groups."""
        torch = torch_module()
        lam = check_float(lam, "lam")
        lr = check_float(lr, "lr")
        with torch.no_grad():
            norms = self.norms().double()
            thresh = lam * (self.group_size**0.5) * lr
            factor = torch.where(
                norms > thresh, 1.0 - thresh / norms.clamp_min(1e-300), torch.zeros_like(norms)
            )
            for m in self.members:
                m.scale_(factor.to(m.weight.dtype))
            return int((factor == 0).sum())

    def zero_groups(self) -> Any:
        """Bool (G,): groups whose weights are all exactly zero."""
        torch = torch_module()
        with torch.no_grad():
            return self.norms() == 0
