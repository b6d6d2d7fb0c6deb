# sparseforge._core.kvcache: paged KV cache, decode attention, Quest, RoPE (bind_kvcache.cc).
from typing import Any

import numpy as np
import numpy.typing as npt

class PagedKVCache:
    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        value_dim: int,
        page_size: int,
        dtype: Any,
        latent: bool,
        page_bounds: bool,
        rope_mode: str,
        rope_style: str,
        rope_theta: float,
    ) -> None: ...
    def append(
        self,
        layer: int,
        k: npt.NDArray[Any],
        v: npt.NDArray[Any] | None,
        positions: npt.NDArray[np.int64],
    ) -> None: ...
    def evict(
        self, layer: int, head: int, slots: npt.NDArray[np.int64], keep_order: bool
    ) -> None: ...
    def evict_lowest(
        self, layer: int, head: int, count: int, protect_below: int, protect_recent: int
    ) -> list[int]: ...
    def evict_lowest_layer(
        self, layer: int, keep: int, protect_below: int, protect_recent: int
    ) -> int: ...
    def evict_lowest_mean(
        self, layer: int, mass: npt.NDArray[np.float32], count: int
    ) -> list[int]: ...
    def copy(self) -> PagedKVCache: ...
    def clear(self) -> None: ...
    def trim(self) -> int: ...
    def reset_peak(self) -> None: ...
    def length(self, layer: int, head: int) -> int: ...
    def num_pages(self, layer: int, head: int) -> int: ...
    def last_position(self, layer: int) -> int: ...
    def positions(self, layer: int, head: int) -> npt.NDArray[np.int64]: ...
    def scores(self, layer: int, head: int) -> npt.NDArray[np.float32]: ...
    def set_scores(self, layer: int, head: int, scores: npt.NDArray[np.float32]) -> None: ...
    def page_bounds(self, layer: int, head: int) -> npt.NDArray[np.float32]: ...
    def gather(self, layer: int, head: int) -> tuple[Any, ...]: ...
    @property
    def bytes_in_use(self) -> int: ...
    @property
    def peak_bytes(self) -> int: ...
    @property
    def reserved_bytes(self) -> int: ...
    @property
    def metadata_bytes(self) -> int: ...
    @property
    def page_bytes(self) -> int: ...
    @property
    def pages_in_use(self) -> int: ...
    @property
    def tokens_in_use(self) -> int: ...
    @property
    def value_dim(self) -> int: ...

def decode_attention(
    cache: PagedKVCache,
    layer: int,
    q: npt.NDArray[np.float32],
    pages: npt.NDArray[Any] | None,
    group_reduce: str,
    accumulate: bool,
    scale: float,
    query_position: int,
    want_mass: bool,
    num_threads: int,
) -> tuple[Any, ...]: ...
def decode_upkeep(
    cache: PagedKVCache,
    layer: int,
    q: npt.NDArray[np.float32],
    tova: bool,
    budget: int,
    recent: int,
    group_reduce: str,
    scale: float,
    num_threads: int,
) -> npt.NDArray[np.float32]: ...
def quest_select(
    cache: PagedKVCache,
    layer: int,
    q: npt.NDArray[np.float32],
    page_budget: int,
    group_reduce: str,
    num_threads: int,
) -> npt.NDArray[np.int32]: ...
def quest_page_scores(
    cache: PagedKVCache,
    layer: int,
    q: npt.NDArray[np.float32],
    group_reduce: str,
    num_threads: int,
) -> npt.NDArray[np.float32]: ...
def window_mass(
    q: npt.NDArray[Any],
    k: npt.NDArray[Any],
    num_heads: int,
    num_kv_heads: int,
    window: int,
    scale: float,
    group_reduce: str,
    num_threads: int,
) -> npt.NDArray[np.float32]: ...
def apply_rope(
    x: npt.NDArray[np.float32],
    positions: npt.NDArray[np.int64],
    rope_style: str,
    rope_theta: float,
) -> npt.NDArray[np.float32]: ...

# KV policies and PolicyCache (bind_kvpolicy.cc, registered into this submodule)
class KVPolicyCore:
    def __init__(
        self,
        name: str,
        budget: list[tuple[bool, float]] | None,
        per_layer: bool,
        group_reduce: str,
        reduce_given: bool,
        evict: str,
        sinks: int,
        recent_ratio: float,
        window: int,
        kernel_size: int,
        max_pool: bool,
        beta: float,
        alpha_safeguard: float,
        scorer: str,
        dense_layers: int,
        seed: int,
        keep_last: bool,
    ) -> None: ...
    def prefill(
        self,
        cache: PagedKVCache,
        layer: int,
        q: npt.NDArray[np.float32],
        k: npt.NDArray[Any],
        v: npt.NDArray[Any] | None,
        positions: npt.NDArray[np.int64] | None,
        num_threads: int,
    ) -> None: ...
    def decode(
        self,
        cache: PagedKVCache,
        layer: int,
        q: npt.NDArray[np.float32],
        k: npt.NDArray[Any],
        v: npt.NDArray[Any] | None,
        position: int,
        scale: float,
        num_threads: int,
    ) -> npt.NDArray[np.float32]: ...
    def score(
        self,
        cache: PagedKVCache,
        layer: int,
        q: npt.NDArray[np.float32],
        k: npt.NDArray[Any],
        num_threads: int,
    ) -> npt.NDArray[np.float64]: ...
    def layer_budget(self, cache: PagedKVCache, layer: int) -> int: ...
    def reset(self) -> None: ...
    def clone(self) -> KVPolicyCore: ...
    @property
    def name(self) -> str: ...
    @property
    def evicts(self) -> bool: ...
    @property
    def decode_evicts(self) -> bool: ...
    @property
    def last_pages(self) -> npt.NDArray[np.int32] | None: ...

def keep_top(
    cache: PagedKVCache, layer: int, scores: npt.NDArray[np.float64], n_keep: int
) -> None: ...
def pyramid_budgets(
    num_layers: int, context: int, budget: float, window: int, beta: float
) -> list[int]: ...
def policy_names() -> list[str]: ...

class KVPolicyCache:
    def __init__(
        self, cache: PagedKVCache, num_heads: int, policy: KVPolicyCore, prefill_compress: bool
    ) -> None: ...
    def attend(
        self,
        layer: int,
        q: npt.NDArray[np.float32],
        k: npt.NDArray[np.float32],
        v: npt.NDArray[np.float32],
        scale: float,
        out: npt.NDArray[np.float32],
        num_threads: int,
    ) -> None: ...
    def advance(self, arg0: int) -> None: ...
    def reset(self) -> None: ...
    def fork(self) -> KVPolicyCache: ...
    @property
    def length(self) -> int: ...
    @property
    def cache(self) -> PagedKVCache: ...
    @property
    def policy(self) -> KVPolicyCore: ...
    @property
    def num_heads(self) -> int: ...
