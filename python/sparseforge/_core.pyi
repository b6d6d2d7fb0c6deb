# Hand-written stubs for the compiled module; checked by `python -m mypy.stubtest
# sparseforge._core` in .ci/run. Arrays are numpy; see the facade for shapes and dtypes.
from typing import Any

import numpy as np
import numpy.typing as npt

__version__: str

class DTypeError(TypeError, ValueError): ...
class NumericalError(ArithmeticError): ...

# core
def build_info() -> dict[str, str]: ...
def simd_level() -> str: ...
def detected_simd_level() -> str: ...
def set_simd_level(level: str) -> None: ...
def default_num_threads() -> int: ...
def cast(x: npt.NDArray[Any], dtype: Any, num_threads: int = 0) -> npt.NDArray[Any]: ...
def _raise_for_test(kind: str) -> None: ...
def _gate_address(a: npt.NDArray[Any], writeable: bool = False) -> int: ...

# prune
def magnitude_mask(
    W: npt.NDArray[Any], sparsity: float, scope: str, num_threads: int = 0
) -> npt.NDArray[np.bool_]: ...
def magnitude_nm_mask(
    W: npt.NDArray[Any], n: int, m: int, num_threads: int = 0
) -> npt.NDArray[np.bool_]: ...
def magnitude_block_mask(
    W: npt.NDArray[Any],
    sparsity: float,
    block_rows: int,
    block_cols: int,
    scope: str,
    num_threads: int = 0,
) -> npt.NDArray[np.bool_]: ...
def magnitude_global_mask(
    weights: list[npt.NDArray[Any]], sparsity: float, num_threads: int = 0
) -> list[npt.NDArray[np.bool_]]: ...
def apply_mask_(W: npt.NDArray[Any], mask: npt.NDArray[np.bool_], num_threads: int = 0) -> None: ...
def masked_copy(
    W: npt.NDArray[Any], mask: npt.NDArray[np.bool_], num_threads: int = 0
) -> tuple[npt.NDArray[Any], int]: ...
def count_zeros(W: npt.NDArray[Any], num_threads: int = 0) -> int: ...
def nm_violations(
    W: npt.NDArray[Any], n: int, m: int, max_report: int, num_threads: int = 0
) -> tuple[int, int, list[tuple[int, int]]]: ...
def parse_nm(pattern: str) -> tuple[int, int]: ...

# calib
class LayerStats:
    def __init__(self, in_features: int, hessian: bool = True, float64: bool = False) -> None: ...
    def update(self, X: npt.NDArray[Any], num_threads: int = 0) -> None: ...
    def merged(self, other: LayerStats) -> LayerStats: ...
    @property
    def in_features(self) -> int: ...
    @property
    def has_hessian(self) -> bool: ...
    @property
    def float64(self) -> bool: ...
    @property
    def tokens(self) -> int: ...
    def col_norms(self) -> npt.NDArray[np.float32]: ...
    def sum_squares(self) -> npt.NDArray[np.float64]: ...
    def hessian(self) -> npt.NDArray[np.float64]: ...
    def hessian_diag(self) -> npt.NDArray[np.float64]: ...
    def xtx_lower(self) -> npt.NDArray[np.float64]: ...
    @staticmethod
    def from_state(
        in_features: int,
        hessian: bool,
        float64: bool,
        tokens: int,
        sum_squares: npt.NDArray[np.float64],
        xtx_lower: npt.NDArray[np.float64],
    ) -> LayerStats: ...

# one-shot pruning
def wanda_mask(
    W: npt.NDArray[Any],
    col_norms: npt.NDArray[np.float32],
    sparsity: float,
    n: int,
    m: int,
    num_threads: int = 0,
) -> npt.NDArray[np.bool_]: ...
def wanda_variant_mask(
    W: npt.NDArray[Any], col_norms: npt.NDArray[np.float32], sparsity: float, num_threads: int = 0
) -> tuple[npt.NDArray[np.bool_], float, int, float]: ...

class HessianFactor:
    @property
    def n(self) -> int: ...
    @property
    def percdamp(self) -> float: ...
    @property
    def max_percdamp(self) -> float: ...
    @property
    def percdamp_used(self) -> float: ...
    @property
    def damp(self) -> float: ...
    @property
    def attempts(self) -> int: ...
    @property
    def float64(self) -> bool: ...
    @property
    def factor_float32(self) -> bool: ...
    @property
    def dead_columns(self) -> list[int]: ...
    @property
    def nbytes(self) -> int: ...

def factor_hessian(
    H: npt.NDArray[Any] | LayerStats,
    percdamp: float,
    max_percdamp: float,
    factor_float32: bool,
    float64: bool,
    num_threads: int = 0,
) -> HessianFactor: ...
def reconstruction_error(
    W: npt.NDArray[Any],
    W_hat: npt.NDArray[Any],
    H: npt.NDArray[Any] | LayerStats,
    num_threads: int = 0,
) -> float: ...
def sparsegpt(
    W: npt.NDArray[Any],
    H: npt.NDArray[Any] | LayerStats | HessianFactor,
    sparsity: float,
    n: int,
    m: int,
    block_size: int,
    percdamp: float,
    max_percdamp: float,
    float64: bool,
    factor_float32: bool,
    exact_count: bool,
    mask: npt.NDArray[np.bool_] | None,
    num_threads: int = 0,
) -> tuple[npt.NDArray[Any], npt.NDArray[np.bool_], dict[str, Any]]: ...
def obs(
    W: npt.NDArray[Any],
    H: npt.NDArray[Any] | LayerStats,
    sparsity: float,
    n: int,
    m: int,
    percdamp: float,
    max_percdamp: float,
    num_threads: int = 0,
) -> tuple[npt.NDArray[Any], npt.NDArray[np.bool_], dict[str, Any]]: ...
def obd_mask(
    W: npt.NDArray[Any],
    H: npt.NDArray[Any] | LayerStats,
    sparsity: float,
    n: int,
    m: int,
    num_threads: int = 0,
) -> npt.NDArray[np.bool_]: ...
def reconstruct_exact(
    W: npt.NDArray[Any],
    H: npt.NDArray[Any] | LayerStats,
    mask: npt.NDArray[np.bool_],
    percdamp: float,
    num_threads: int = 0,
) -> tuple[npt.NDArray[Any], dict[str, Any]]: ...

# --- formats: N:M (bind_format_nm.cc) ---
class NMMatrix:
    @staticmethod
    def from_dense(
        W: npt.NDArray[Any], n: int, m: int, prune: bool, num_threads: int = 0
    ) -> NMMatrix: ...
    @staticmethod
    def from_canonical(
        values: npt.NDArray[Any],
        codes: npt.NDArray[np.uint8],
        cols: int,
        n: int,
        m: int,
        num_threads: int = 0,
    ) -> NMMatrix: ...
    @property
    def rows(self) -> int: ...
    @property
    def cols(self) -> int: ...
    @property
    def n(self) -> int: ...
    @property
    def m(self) -> int: ...
    @property
    def dtype(self) -> np.dtype[Any]: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def canonical_nbytes(self) -> int: ...
    def to_canonical(
        self, num_threads: int = 0
    ) -> tuple[npt.NDArray[Any], npt.NDArray[np.uint8]]: ...
    def to_dense(self, num_threads: int = 0) -> npt.NDArray[Any]: ...
    def validate(self) -> None: ...
    def gemv(
        self,
        x: npt.NDArray[np.float32],
        out: npt.NDArray[np.float32] | None = None,
        num_threads: int = 0,
    ) -> npt.NDArray[np.float32]: ...
    def gemm(
        self,
        X: npt.NDArray[np.float32],
        out: npt.NDArray[np.float32] | None = None,
        num_threads: int = 0,
    ) -> npt.NDArray[np.float32]: ...

def nm_code_row_bytes(cols: int, n: int, m: int) -> int: ...

# --- end formats: N:M ---

# --- formats: bitmap and CSR (bind_format_unstructured.cc) ---
class BitmapMatrix:
    @property
    def shape(self) -> tuple[int, int]: ...
    @property
    def dtype(self) -> np.dtype[Any]: ...
    @property
    def nnz(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def values(self) -> npt.NDArray[Any]: ...
    @property
    def bitmap(self) -> npt.NDArray[np.uint8]: ...
    @property
    def row_offsets(self) -> npt.NDArray[np.int64]: ...
    def validate(self) -> None: ...
    def to_dense(self, num_threads: int = 0) -> npt.NDArray[Any]: ...
    def gemv(
        self,
        x: npt.NDArray[np.float32],
        out: npt.NDArray[np.float32] | None = None,
        num_threads: int = 0,
    ) -> npt.NDArray[np.float32]: ...
    def gemm(
        self,
        X: npt.NDArray[np.float32],
        out: npt.NDArray[np.float32] | None = None,
        num_threads: int = 0,
    ) -> npt.NDArray[np.float32]: ...
    def gemv_sparse_input(
        self,
        x: npt.NDArray[np.float32],
        threshold: float,
        out: npt.NDArray[np.float32] | None = None,
        num_threads: int = 0,
    ) -> tuple[npt.NDArray[np.float32], int]: ...

class CSRMatrix:
    @property
    def shape(self) -> tuple[int, int]: ...
    @property
    def dtype(self) -> np.dtype[Any]: ...
    @property
    def nnz(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def values(self) -> npt.NDArray[Any]: ...
    @property
    def indptr(self) -> npt.NDArray[np.int64]: ...
    @property
    def indices(self) -> npt.NDArray[np.int32]: ...
    def validate(self) -> None: ...
    def to_dense(self, num_threads: int = 0) -> npt.NDArray[Any]: ...
    def gemv(
        self,
        x: npt.NDArray[np.float32],
        out: npt.NDArray[np.float32] | None = None,
        num_threads: int = 0,
    ) -> npt.NDArray[np.float32]: ...
    def gemm(
        self,
        X: npt.NDArray[np.float32],
        out: npt.NDArray[np.float32] | None = None,
        num_threads: int = 0,
    ) -> npt.NDArray[np.float32]: ...

def bitmap_from_dense(
    W: npt.NDArray[Any], mask: npt.NDArray[np.bool_] | None = None, num_threads: int = 0
) -> BitmapMatrix: ...
def csr_from_dense(
    W: npt.NDArray[Any], mask: npt.NDArray[np.bool_] | None = None, num_threads: int = 0
) -> CSRMatrix: ...
def bitmap_from_components(
    rows: int,
    cols: int,
    bitmap: npt.NDArray[np.uint8],
    values: npt.NDArray[Any],
    row_offsets: npt.NDArray[np.int64] | None = None,
) -> BitmapMatrix: ...
def csr_from_components(
    rows: int,
    cols: int,
    indptr: npt.NDArray[np.int64],
    indices: npt.NDArray[np.int32],
    values: npt.NDArray[Any],
) -> CSRMatrix: ...

# --- end formats: bitmap and CSR ---

# --- kernels: dense and activation-sparse (bind_kernels.cc) ---
def gemv(
    W: npt.NDArray[Any],
    x: npt.NDArray[np.float32],
    out: npt.NDArray[np.float32] | None = None,
    num_threads: int = 0,
) -> npt.NDArray[np.float32]: ...
def gemm(
    W: npt.NDArray[Any],
    X: npt.NDArray[np.float32],
    out: npt.NDArray[np.float32] | None = None,
    num_threads: int = 0,
) -> npt.NDArray[np.float32]: ...
def gemv_rows(
    W: npt.NDArray[Any],
    x: npt.NDArray[np.float32],
    rows: npt.NDArray[Any],
    out: npt.NDArray[np.float32] | None = None,
    num_threads: int = 0,
) -> tuple[npt.NDArray[np.float32], int]: ...
def gemv_sparse_input(
    Wt: npt.NDArray[Any],
    x: npt.NDArray[np.float32],
    threshold: float,
    out: npt.NDArray[np.float32] | None = None,
    num_threads: int = 0,
) -> tuple[npt.NDArray[np.float32], int]: ...
def gemv_active_input(
    Wt: npt.NDArray[Any],
    x: npt.NDArray[np.float32],
    active: npt.NDArray[Any],
    out: npt.NDArray[np.float32] | None = None,
    num_threads: int = 0,
) -> tuple[npt.NDArray[np.float32], int]: ...
def gemm_sparse_input(
    Wt: npt.NDArray[Any],
    X: npt.NDArray[np.float32],
    threshold: float,
    min_gain: float,
    out: npt.NDArray[np.float32] | None = None,
    num_threads: int = 0,
) -> tuple[npt.NDArray[np.float32], int, bool]: ...
def swiglu(
    mode: str,
    gate: npt.NDArray[Any],
    up: npt.NDArray[Any],
    down: npt.NDArray[Any],
    x: npt.NDArray[np.float32],
    t_x: float,
    t_h: float,
    out: npt.NDArray[np.float32] | None = None,
    num_threads: int = 0,
) -> tuple[npt.NDArray[np.float32], int, int]: ...
def _read_probe(buf: npt.NDArray[np.float32], num_threads: int = 0) -> float: ...

# --- end kernels ---

# --- models: forward ops (bind_models.cc) ---
def rms_norm(
    x: npt.NDArray[np.float32],
    weight: npt.NDArray[np.float32],
    eps: float,
    out: npt.NDArray[np.float32] | None = None,
    num_threads: int = 0,
) -> npt.NDArray[np.float32]: ...
def rope(
    x: npt.NDArray[np.float32],
    positions: npt.NDArray[np.int64],
    theta: float,
    style: str,
    num_threads: int = 0,
) -> None: ...
def attention(
    q: npt.NDArray[np.float32],
    k: npt.NDArray[np.float32],
    v: npt.NDArray[np.float32],
    scale: float,
    out: npt.NDArray[np.float32] | None = None,
    num_threads: int = 0,
    window: int = 0,
) -> npt.NDArray[np.float32]: ...
def decode_attention(
    q: npt.NDArray[np.float32],
    k_cache: npt.NDArray[np.float32],
    v_cache: npt.NDArray[np.float32],
    length: int,
    scale: float,
    out: npt.NDArray[np.float32] | None = None,
    num_threads: int = 0,
    window: int = 0,
) -> npt.NDArray[np.float32]: ...
def swiglu_gate(
    g: npt.NDArray[np.float32],
    u: npt.NDArray[np.float32],
    out: npt.NDArray[np.float32] | None = None,
    num_threads: int = 0,
) -> npt.NDArray[np.float32]: ...
def geglu_gate(
    g: npt.NDArray[np.float32],
    u: npt.NDArray[np.float32],
    out: npt.NDArray[np.float32] | None = None,
    num_threads: int = 0,
) -> npt.NDArray[np.float32]: ...

# --- end models ---

# --- kvcache (bind_kvcache.cc) ---
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

def kv_decode_attention(
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
def kv_decode_upkeep(
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
def kv_quest_select(
    cache: PagedKVCache,
    layer: int,
    q: npt.NDArray[np.float32],
    page_budget: int,
    group_reduce: str,
    num_threads: int,
) -> npt.NDArray[np.int32]: ...
def kv_quest_page_scores(
    cache: PagedKVCache,
    layer: int,
    q: npt.NDArray[np.float32],
    group_reduce: str,
    num_threads: int,
) -> npt.NDArray[np.float32]: ...
def kv_window_mass(
    q: npt.NDArray[Any],
    k: npt.NDArray[Any],
    num_heads: int,
    num_kv_heads: int,
    window: int,
    scale: float,
    group_reduce: str,
    num_threads: int,
) -> npt.NDArray[np.float32]: ...
def kv_apply_rope(
    x: npt.NDArray[np.float32],
    positions: npt.NDArray[np.int64],
    rope_style: str,
    rope_theta: float,
) -> npt.NDArray[np.float32]: ...

# --- end kvcache ---

# --- moe (bind_moe.cc) ---
def moe_route(
    logits: npt.NDArray[np.float32],
    top_k: int,
    score: str,
    renormalize: bool,
    routed_scaling_factor: float,
    bias: npt.NDArray[np.float32] | None,
    n_group: int,
    topk_group: int,
    group_score: str,
    num_threads: int,
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float32], npt.NDArray[np.float32]]: ...
def moe_assign_capacity(
    expert_ids: npt.NDArray[np.int32],
    num_experts: int,
    priority_values: npt.NDArray[np.float32] | None,
    capacity_mode: str,
    capacity_factor: float,
    capacity: int,
    priority: str,
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64], npt.NDArray[np.int64], int, int]: ...
def moe_dispatch_plan(
    expert_ids: npt.NDArray[np.int32], locations: npt.NDArray[np.int32], num_experts: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32], npt.NDArray[np.int32]]: ...
def moe_gather(
    x: npt.NDArray[np.float32], token_of: npt.NDArray[np.int32], num_threads: int
) -> npt.NDArray[np.float32]: ...
def moe_combine(
    buffer: npt.NDArray[np.float32],
    row_of: npt.NDArray[np.int32],
    weights: npt.NDArray[np.float32],
    out: npt.NDArray[np.float32] | None,
    accumulate: bool,
    num_threads: int,
) -> npt.NDArray[np.float32]: ...
def moe_swiglu_ffn(
    x: npt.NDArray[np.float32],
    offsets: npt.NDArray[np.int64],
    token_of: npt.NDArray[np.int32],
    row_of: npt.NDArray[np.int32],
    weights: npt.NDArray[np.float32],
    w_gate: npt.NDArray[Any],
    w_up: npt.NDArray[Any],
    w_down: npt.NDArray[Any],
    want_norms: bool,
    num_threads: int,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32] | None]: ...
def moe_load_balancing_loss(
    logits: npt.NDArray[np.float32],
    num_layers: int,
    top_k: int,
    kind: str,
    expert_ids: npt.NDArray[np.int32] | None,
    token_mask: npt.NDArray[np.bool_] | None,
) -> float: ...
def moe_z_loss(logits: npt.NDArray[np.float32]) -> float: ...

# --- end moe ---

# --- activation (bind_activation.cc) ---

class PredictorStats:
    def __init__(self, in_features: int, out_features: int) -> None: ...
    def update(
        self, X: npt.NDArray[np.float32], Y: npt.NDArray[np.float32], num_threads: int = 0
    ) -> None: ...
    @property
    def in_features(self) -> int: ...
    @property
    def out_features(self) -> int: ...
    @property
    def tokens(self) -> int: ...
    def sums(self) -> npt.NDArray[np.float64]: ...

def fit_low_rank_predictor(
    stats: PredictorStats, rank: int, ridge: float
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32]]: ...

# --- end activation ---

# --- runtime (bind_runtime.cc) ---

class RuntimeModel:
    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        n_layers: int,
        n_heads: int,
        n_kv_heads: int,
        head_dim: int,
        vocab_size: int,
        max_seq_len: int,
        norm_eps: float,
        rope_theta: float,
        rope_style: str,
        tied_embeddings: bool,
        arch: str,
    ) -> None: ...
    def set_linear(
        self, block: int, j: int, w: Any, wt: Any, bias: Any, threshold: float | None
    ) -> None: ...
    def set_norms(self, block: int, attn: Any, mlp: Any) -> None: ...
    def set_family(
        self,
        activation: str,
        embed_scale: float,
        query_scale: float,
        final_softcap: float,
        qk_norm: bool,
        sandwich_norms: bool,
        layer_window: list[int],
        layer_rope_theta: list[float],
    ) -> None: ...
    def set_block_norms(
        self, block: int, q_norm: Any, k_norm: Any, attn_post: Any, mlp_post: Any
    ) -> None: ...
    def set_embed(self, embed: Any) -> None: ...
    @staticmethod
    def load(path: str, verify: bool = True, num_threads: int = 0) -> RuntimeModel: ...
    def validate(self) -> None: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def tokenizer_kind(self) -> str: ...
    @property
    def weight_bytes(self) -> int: ...
    @property
    def frozen(self) -> bool: ...

class RuntimeSession:
    def __init__(self, model: RuntimeModel, capacity: int, num_threads: int = 0) -> None: ...
    def prefill(self, tokens: list[int], last_only: bool = False) -> npt.NDArray[np.float32]: ...
    def step(self, token: int) -> npt.NDArray[np.float32]: ...
    def generate(
        self,
        prompt: list[int],
        max_new_tokens: int,
        temperature: float,
        top_k: int,
        top_p: float,
        seed: int,
        stop: list[int],
    ) -> list[int]: ...
    def read_kv(self, layer: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]: ...
    def set_model(self, model: RuntimeModel) -> None: ...
    def reset(self) -> None: ...
    @property
    def num_threads(self) -> int: ...
    @num_threads.setter
    def num_threads(self, arg1: int) -> None: ...
    @property
    def length(self) -> int: ...
    @property
    def capacity(self) -> int: ...
    @property
    def kv_bytes(self) -> int: ...
    @property
    def model(self) -> RuntimeModel: ...

# --- end runtime ---
