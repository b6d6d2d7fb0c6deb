"""The model's decode loop: a policy-driven ``DecodeCache``."""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np

from .. import _core
from .._base import threads_arg
from ._common import GroupReduce, _int_arg, _reduce_arg
from .budgets import budget_from
from .cache import PagedKVCache
from .policies import POLICIES, make_policy
from .policies.base import KVPolicy, _CorePolicy
from .policies.full import FullCache
from .policies.quest import Quest

_PREFILL_MODES = ("compress", "decode")


class PolicyCache:
    """A :class:`sparseforge.models.DecodeCache` that runs a KV policy inside
    :meth:`LlamaModel.step <sparseforge.models.LlamaModel.step>`.

    The keys and values live in a :class:`PagedKVCache` (per layer and kv head, GQA-native:
    the G query heads of a kv head combine into one score per key with ``group_reduce``),
    and the policy keeps it within its budget:

    * **prefill** (the first chunk, ``T > 1`` tokens into an empty cache, with
      ``prefill="compress"``): the chunk's outputs are exact causal attention over the chunk
      (what the model computes without a cache); then the policy appends and compresses it
      (:meth:`KVPolicy.prefill`: SnapKV / PyramidKV / AdaKV / KeyNorm / Random score it
      once, H2O takes the column sums, TOVA the last query, StreamingLLM / SlidingWindow keep
      their windows, Quest and FullCache keep everything).
    * **decode** (every other token, one at a time, including a later chunk's tokens and,
      with ``prefill="decode"``, the prompt's): :meth:`KVPolicy.decode` appends the token,
      attends (dense, or page-sparse for Quest) with the attention mass from the same pass
      (H2O's accumulator, TOVA's last-query score) and evicts to the budget.

    Parameters
    ----------
    config_or_model : LlamaConfig or LlamaModel
        The model's layout: ``n_layers``, ``n_heads``, ``n_kv_heads``, ``head_dim``,
        ``rope_style``, ``rope_theta``.
    policy : str or KVPolicy
        A name of :data:`POLICIES` (built with ``budget`` and ``policy_options``) or a policy
        instance (then ``budget`` must be None: the instance has its own). One policy
        instance serves one cache.
    budget : int, float, sequence or Budget
        Tokens per (layer, kv head); see :class:`Budget`. Required by every policy except
        ``"full"``. Ratios resolve against the prefill's length.
    page_size : int
        Tokens per page ``S`` of the paged cache.
    dtype : float32, float16 or ml_dtypes.bfloat16
        Storage dtype of K and V (compute is fp32).
    group_reduce : {"mean", "max", "sum"}, optional
        How a kv head's query heads combine into one score (default: the policy's).
    prefill : {"compress", "decode"}
        "compress": the first multi-token chunk is a prefill (exact attention, then the
        policy compresses). "decode": every token goes through the decode path, so the
        policy applies from the first token (score-once policies then never evict).
    rope_mode : {"original", "rerotate"}
        See :class:`PagedKVCache` ("rerotate" is StreamingLLM's position shift).
    **policy_options
        Passed to the policy's constructor when ``policy`` is a name (``sinks=4``,
        ``window=32``, ``dense_layers=2``, ...).

    Attributes
    ----------
    length : int
        Tokens fed so far (positions ``0 .. length-1``), whatever the policy evicted.
    paged : PagedKVCache
        The storage: ``paged.bytes_in_use`` is the measured K/V memory.
    policy : KVPolicy
    """

    def __init__(
        self,
        config_or_model: Any,
        policy: str | KVPolicy,
        budget: Any = None,
        *,
        tokens: int | None = None,
        keep: float | None = None,
        compression_ratio: float | None = None,
        page_size: int = 16,
        dtype: Any = np.float32,
        group_reduce: GroupReduce | None = None,
        prefill: str = "compress",
        rope_mode: str = "original",
        **policy_options: Any,
    ) -> None:
        cfg = getattr(config_or_model, "config", config_or_model)
        need = ("n_layers", "n_heads", "n_kv_heads", "head_dim", "rope_style", "rope_theta")
        missing = [a for a in need if not hasattr(cfg, a)]
        if missing:
            raise TypeError(
                "config_or_model: expected a LlamaConfig or a LlamaModel, got "
                f"{type(config_or_model).__name__} (no {', '.join(missing)})"
            )
        self.config = cfg
        if prefill not in _PREFILL_MODES:
            raise ValueError(f"prefill: expected 'compress' or 'decode', got {prefill!r}")
        self.prefill_mode = prefill
        named = (tokens, keep, compression_ratio)
        if any(x is not None for x in named):
            budget = budget_from(
                budget, tokens=tokens, keep=keep, compression_ratio=compression_ratio
            )
        if isinstance(policy, KVPolicy):
            if budget is not None or policy_options or group_reduce is not None:
                raise ValueError(
                    "budget: a policy instance carries its own budget and options; pass "
                    "budget/group_reduce/options only with a policy name"
                )
            pol = policy
        elif isinstance(policy, str):
            if group_reduce is not None:
                policy_options["group_reduce"] = _reduce_arg(group_reduce)
            if policy not in POLICIES:
                raise ValueError(f"policy: unknown KV policy {policy!r}; known: {sorted(POLICIES)}")
            if budget is None and POLICIES[policy] is not FullCache:
                raise ValueError(f"budget: policy {policy!r} needs a budget (tokens per kv head)")
            pol = make_policy(policy, budget, **policy_options)
        else:
            raise TypeError(
                f"policy: expected a policy name or a KVPolicy, got {type(policy).__name__}"
            )
        if pol.evicts and pol.budget is None:
            raise ValueError(f"budget: {type(pol).__name__} needs a budget")
        per_layer = None if pol.budget is None else pol.budget.per_layer
        if per_layer is not None and len(per_layer) != cfg.n_layers:
            raise ValueError(
                f"budget: expected {cfg.n_layers} per-layer entries, got {len(per_layer)}"
            )
        self.policy = pol
        self.paged = PagedKVCache(
            cfg.n_layers,
            cfg.n_kv_heads,
            cfg.head_dim,
            page_size,
            dtype,
            rope_mode=rope_mode,
            rope_style=cfg.rope_style,
            rope_theta=float(cfg.rope_theta),
            page_bounds=isinstance(pol, Quest) or rope_mode == "original",
        )
        self._length: int = 0
        self._session: Any = None  # a _core.runtime.RuntimeSession over _core (the runtime)
        # The core runs the whole step for a built-in policy; a Python policy (a research
        # scorer or subclass) runs the Python loop below.
        self._core: Any = None
        if isinstance(pol, _CorePolicy) and pol._impl is not None:
            self._core = _core.kvcache.KVPolicyCache(
                self.paged._impl, cfg.n_heads, pol._impl, prefill == "compress"
            )

    # -- DecodeCache -----------------------------------------------------------------------
    def check_model(self, config: Any) -> None:
        c = self.config
        mine = (c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim)
        theirs = tuple(getattr(config, a, None) for a in ("n_layers", "n_heads", "n_kv_heads"))
        theirs = (*theirs, getattr(config, "head_dim", None))
        if mine != theirs:
            raise ValueError(
                "cache: was built for (n_layers, n_heads, n_kv_heads, head_dim) = "
                f"{mine}, the model has {theirs}"
            )
        if (config.rope_style, float(config.rope_theta)) != (c.rope_style, float(c.rope_theta)):
            raise ValueError("cache: was built for another RoPE (rope_style / rope_theta)")

    def reserve(self, T: int) -> None:
        _int_arg(T, "T", minimum=1)

    def attend(
        self,
        block: int,
        q: np.ndarray,
        k: np.ndarray,
        v: np.ndarray,
        scale: float,
        num_threads: int | None = None,
    ) -> np.ndarray:
        """Store block ``block``'s new tokens under the policy and return their attention
        output, float32 ``(T, n_heads * head_dim)``; ``q`` ``(T, n_heads, head_dim)``, ``k`` and
        ``v`` ``(T, n_kv_heads, head_dim)`` post-RoPE at positions ``length .. length+T-1``."""
        c = self.config
        layer = self.paged._layer(block)
        if not isinstance(q, np.ndarray) or q.ndim != 3 or q.shape[1:] != (c.n_heads, c.head_dim):
            raise ValueError(
                f"q: expected shape (T, {c.n_heads}, {c.head_dim}), got {_shape_of(q)}"
            )
        T = q.shape[0]
        for name, x in (("k", k), ("v", v)):
            if not isinstance(x, np.ndarray) or x.shape != (T, c.n_kv_heads, c.head_dim):
                want = (T, c.n_kv_heads, c.head_dim)
                raise ValueError(f"{name}: expected shape {want}, got {_shape_of(x)}")
        if T == 0:
            raise ValueError("q: expected at least one token")
        start = self.length
        have = self.paged.last_position(layer) + 1
        if have != start:
            raise ValueError(
                f"block: layer {layer} holds positions up to {have - 1}, but the new tokens "
                f"start at {start} (blocks must be fed in order, each once per step)"
            )
        # The model passes its thread count as an int, 0 meaning the default.
        nt = None if not num_threads else threads_arg(num_threads)
        q = np.ascontiguousarray(q, dtype=np.float32)
        k = np.ascontiguousarray(k, dtype=np.float32)
        v = np.ascontiguousarray(v, dtype=np.float32)
        if self._core is not None:
            out: np.ndarray = np.empty((T, c.n_heads * c.head_dim), dtype=np.float32)
            with self.paged._append_lock:
                self._core.attend(
                    layer,
                    q.reshape(T, -1),
                    k.reshape(T, -1),
                    v.reshape(T, -1),
                    float(scale),
                    out,
                    threads_arg(nt),
                )
            return out
        if T > 1 and start == 0 and self.prefill_mode == "compress":
            out = _core.models.attention(q, k, v, float(scale), None, threads_arg(nt))
            self.policy.prefill(self.paged, layer, q, k, v, num_threads=nt)
            return out
        out = np.empty((T, c.n_heads * c.head_dim), dtype=np.float32)
        for t in range(T):
            o = self.policy.decode(
                self.paged,
                layer,
                q[t],
                k[t],
                v[t],
                start + t,
                scale=float(scale),
                num_threads=nt,
            )
            out[t] = o.reshape(-1)
        return out

    def advance(self, T: int) -> None:
        T = _int_arg(T, "T", minimum=1)
        if self._core is not None:
            self._core.advance(T)
        self._length += T

    @property
    def length(self) -> int:
        """Tokens fed so far (positions ``0 .. length-1``), whatever the policy evicted."""
        return int(self._core.length) if self._core is not None else self._length

    def _runtime_session(self, rt: Any, num_threads: int) -> Any:
        """A runtime session over this cache (:mod:`sparseforge.runtime`): the whole step of
        every layer in one core call. None for a Python policy (the Python loop runs)."""
        if self._core is None:
            return None
        s = self._session
        if s is None or s.model is not rt:
            s = self._session = _core.runtime.RuntimeSession(rt, self._core, num_threads)
        if s.num_threads != num_threads:
            s.num_threads = num_threads
        return s

    # -- accounting / lifecycle -------------------------------------------------------------
    @property
    def bytes_in_use(self) -> int:
        """Bytes the cache holds: its K/V pages (measured from the pool, :attr:`kv_bytes`)
        plus the metadata (per slot the position and score, per page Quest's key bounds)."""
        return self.paged.bytes_in_use + self.paged.metadata_bytes

    @property
    def kv_bytes(self) -> int:
        """Bytes of the K/V pages alone (whole pages of ``page_size`` tokens)."""
        return self.paged.bytes_in_use

    @property
    def metadata_bytes(self) -> int:
        return self.paged.metadata_bytes

    @property
    def peak_bytes(self) -> int:
        return self.paged.peak_bytes

    def lengths(self) -> np.ndarray:
        """(n_layers, n_kv_heads) int64: tokens each (layer, kv head) holds."""
        return np.stack([self.paged.lengths(i) for i in range(self.config.n_layers)])

    def reset(self) -> None:
        """Forget the sequence (pages return to the free list; the policy's state too)."""
        if self._core is not None:
            self._core.reset()
        else:
            self.paged.clear()
            self.paged.reset_peak()
            self.policy.reset()
        self._length = 0

    def fork(self) -> PolicyCache:
        """An independent copy of this cache and its policy's state: ask several questions
        of one (compressed) prefill. The copy has its own pages (``kv_bytes`` more memory);
        feeding one never changes the other."""
        new = copy.copy(self)
        new._session = None
        new.policy = copy.copy(self.policy)
        if self._core is not None:
            new._core = self._core.fork()
            new.paged = PagedKVCache._wrap(new._core.cache, self.paged)
            new.policy._impl = new._core.policy  # type: ignore[attr-defined]
        else:
            new.paged = PagedKVCache._wrap(self.paged._impl.copy(), self.paged)
            new.policy = copy.deepcopy(self.policy)
        return new

    def __repr__(self) -> str:
        return (
            f"PolicyCache(policy={self.policy!r}, length={self.length}, "
            f"tokens={self.paged.tokens_in_use}, bytes_in_use={self.bytes_in_use})"
        )


def _shape_of(x: Any) -> str:
    return str(x.shape) if isinstance(x, np.ndarray) else type(x).__name__


def decode_nll(
    model: Any,
    tokens: Any,
    cache: Any,
    *,
    prefill: int = 0,
) -> np.ndarray:
    """Negative log-likelihoods through the model's decode loop, float64.

    ``tokens[:prefill]`` run as one chunk (``prefill >= 2``; 0 or 1 feeds the first token
    alone), then every further token is fed one at a time with :meth:`LlamaModel.step`
    into ``cache`` (a :class:`PolicyCache` or any ``DecodeCache``, empty). Returns the NLL
    (nats) of ``tokens[s + 1:]``, ``s = max(prefill, 1) - 1``: every token predicted from
    the decode loop (the prefill's own tokens but its last are not scored). ``exp(mean())``
    is the perplexity under the cache's policy.
    """
    ids = np.asarray(tokens)
    if ids.ndim != 1 or ids.size < 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"tokens: expected a 1-D sequence of >= 2 token ids, got {_shape_of(ids)}")
    p = _int_arg(prefill, "prefill")
    if p > ids.size - 1:
        raise ValueError(f"prefill: expected <= {ids.size - 1} (tokens - 1), got {p}")
    if getattr(cache, "length", None) != 0:
        raise ValueError("cache: expected an empty cache (length 0); call cache.reset()")
    first = max(p, 1)
    logits = model.step(ids[:first], cache)[-1]
    out = np.empty(ids.size - first, dtype=np.float64)
    for i in range(first, ids.size):
        lg = logits.astype(np.float64)
        m = lg.max()
        out[i - first] = m + math.log(float(np.exp(lg - m).sum())) - lg[int(ids[i])]
        if i + 1 < ids.size:
            logits = model.step(ids[i : i + 1], cache)[-1]
    return out
