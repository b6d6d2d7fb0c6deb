// A paged KV cache with one page table per (layer, kv head) and a pool that really frees.
//
// Notation (used in every kvcache header): L tokens in a head's cache, H query heads, Hkv kv
// heads, G = H / Hkv query heads per kv head (GQA; MHA G = 1, MQA Hkv = 1), Dk key dim, Dv
// value dim, S page size (tokens per page).
//
// Layout: a page holds S consecutive slots of ONE (layer, kv head): S key rows of Dk elements,
// then S value rows of Dv elements, in the storage dtype (fp32, fp16 or bf16), 64-byte
// aligned. Slot s of a head lives in row s % S of its page pages[s / S]. Keys are stored
// per kv head (GQA-native: never repeated per query head). A latent cache (MLA) stores no
// value rows: the value of a slot is the first Dv elements of its key row ([c_kv | k_rope]).
// Per slot the cache keeps the token's original position (int64) and one fp32 score that
// policies accumulate (H2O); per page, when page_bounds is on, the channel-wise min and max
// of its keys in fp32 (Quest's metadata: 2*Dk floats per page, 1/S of the K+V bytes in
// fp32), updated on append and recomputed for pages that eviction rewrites.
//
// Pool: pages are allocated one at a time on demand; freed pages go to a free list and are
// reused before new ones are allocated; trim() returns the free list to the allocator.
// bytes_in_use() counts the pages held by page tables, reserved_bytes() those plus the free
// list, peak_bytes() the maximum of bytes_in_use() since construction or reset_peak().
//
// Eviction removes slots for real: the remaining slots are compacted inside the head's page
// table and pages past the new length return to the free list. keep_order = true shifts the
// survivors down (slot order stays position order; O(L * (Dk + Dv)) bytes moved);
// keep_order = false fills each hole with the head's last slot (O(Dk + Dv) per evicted
// slot, FlexGen's replacement; slot order then differs from position order, which attention
// does not care about: positions are stored per slot).
//
// RoPE: rope_mode kOriginal stores keys as given (already rotated at their original
// positions by the model) and attention uses them as they are (kvpress, H2O, Quest).
// kRerotate is StreamingLLM's position shift (mit-han-lab/streaming-llm
// streaming_llm/pos_shift/modify_llama.py 89-104): append un-rotates each key (rotation by
// -position, in fp32) and stores it pre-RoPE; attention rotates slot s's key to position s
// (its rank in the cache) and the query to position L - 1, so positions inside the window
// never exceed the cache length. Rerotate keeps slot order = position order (every
// eviction is order-preserving) and needs no rewriting of stored keys (no drift in
// fp16/bf16). Conventions: kInterleaved rotates pairs (x[2i], x[2i+1]), kHalf rotates
// (x[i], x[i + Dk/2]) (Hugging Face rotate_half); angle = position * theta^(-2i/Dk),
// (a, b) -> (a cos - b sin, a sin + b cos).
//
// Threads: append and evict are serial (they touch O(T * Hkv) rows); attention over the
// cache is parallel over kv heads (attention.h). A cache must not be modified while another
// thread reads it: a caller that shares one cache between threads holds mutex() around every
// call that touches it (the Python bindings do; core/object_mutex.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "sparseforge/core/dtype.h"
#include "sparseforge/core/object_mutex.h"
#include "sparseforge/core/view.h"

namespace sparseforge {
namespace kv {

enum class RopeMode : uint8_t { kOriginal = 0, kRerotate = 1 };
enum class RopeStyle : uint8_t { kInterleaved = 0, kHalf = 1 };

struct CacheConfig {
  size_t num_layers = 0;
  size_t num_kv_heads = 0;
  size_t head_dim = 0;   // Dk
  size_t value_dim = 0;  // Dv; 0 means Dv = Dk
  size_t page_size = 16;
  DType dtype = DType::kF32;
  bool latent = false;  // MLA: no value rows, value = key row[0:Dv] (needs Dv <= Dk)
  bool page_bounds = true;
  RopeMode rope_mode = RopeMode::kOriginal;
  RopeStyle rope_style = RopeStyle::kHalf;
  double rope_theta = 10000.0;
};

// Applies RoPE in place to x (n rows of `dim`, row stride ld) at positions pos[r] (fp64
// angles, fp32 arithmetic). dim must be even.
void apply_rope(float* x, size_t n, size_t dim, size_t ld, const int64_t* pos, RopeStyle style,
                double theta);
// The same with one rotation `delta` for every row (may be negative).
void rotate_rope(float* x, size_t n, size_t dim, size_t ld, double delta, RopeStyle style,
                 double theta);

class PagedKVCache {
 public:
  // Throws InvalidArgument naming the field (num_layers, num_kv_heads, head_dim, value_dim,
  // page_size, rope_theta, latent) when the configuration is invalid.
  explicit PagedKVCache(const CacheConfig& config);
  ~PagedKVCache();
  // A deep copy (a fork of the sequence): its own pages holding the same slots, positions,
  // scores and bounds; no free list; peak = the pages in use. O(bytes_in_use) copied.
  PagedKVCache(const PagedKVCache& other);
  PagedKVCache& operator=(const PagedKVCache&) = delete;

  const CacheConfig& config() const { return cfg_; }
  // The lock of callers that share this cache between threads (the cache never takes it).
  std::mutex& mutex() const { return mu_.get(); }
  size_t key_dim() const { return cfg_.head_dim; }
  size_t value_dim() const { return dv_; }

  // Appends T tokens to every kv head of `layer`. k: (T, Hkv * Dk), v: (T, Hkv * Dv) (row t
  // holds token t of every kv head, the (T, Hkv, D) layout of a model's projections), any
  // storage dtype (converted to the cache's); v is ignored (may be empty) for a latent cache.
  // positions[0:T] strictly increasing and greater than every position appended to the layer
  // before (InvalidArgument naming `positions` otherwise). On error nothing is appended.
  void append(size_t layer, const AnyConstMatrix& k, const AnyConstMatrix& v,
              const int64_t* positions, size_t T);

  // Removes the given slots (a set: indices in [0, length), duplicates are an error) from
  // one head. keep_order: see the header comment (forced on in kRerotate mode).
  void evict(size_t layer, size_t head, const int64_t* slots, size_t n, bool keep_order);

  // Evicts `count` slots of one head with the lowest score(), never one whose position is
  // < protect_below (sinks) or > newest_position - protect_recent (the recent window). Ties:
  // of equal scores the newer token (larger position) goes first. Fills holes from the tail
  // (keep_order = false unless kRerotate). Returns the evicted positions (count of them,
  // fewer if not enough slots are unprotected).
  std::vector<int64_t> evict_lowest(size_t layer, size_t head, size_t count, int64_t protect_below,
                                    size_t protect_recent);

  // evict_lowest on every kv head of `layer`, each down to at most `keep` slots (H2O's decode
  // step in one call). Returns the number of slots evicted over all heads.
  size_t evict_lowest_layer(size_t layer, size_t keep, int64_t protect_below,
                            size_t protect_recent);

  // TOVA's selection for a layer whose kv heads share one slot layout (same length; TOVA
  // evicts the same slots from every head): score[s] = (sum over h in order 0..Hkv-1 of
  // double(mass[h, s])) / Hkv, i.e. float64 accumulation of the fp32 mass (bitwise numpy's
  // mass.astype(float64).mean(axis=0)); evicts the `count` slots with the lowest score
  // (ties: the newer position, read from head 0, goes first) from every kv head. count == 1
  // fills the hole from the tail (keep_order = false, the decode step); count > 1 compacts in
  // order (prefill). count >= length evicts everything. mass: (Hkv, >= length) fp32.
  // Throws InvalidArgument naming `mass` (shape) or `layer` (heads of unequal length).
  // Returns the evicted positions, sorted. Serial, deterministic; allocates O(count).
  std::vector<int64_t> evict_lowest_mean(size_t layer, ConstMatrixView<float> mass, size_t count);

  // Drops every token of every layer (pages return to the free list).
  void clear();
  // Returns the free list to the allocator; returns the bytes released.
  size_t trim();
  void reset_peak() { peak_pages_ = pages_in_use_; }

  size_t length(size_t layer, size_t head) const { return head_at(layer, head).length; }
  size_t max_length(size_t layer) const;
  size_t num_pages(size_t layer, size_t head) const { return head_at(layer, head).pages.size(); }
  // Newest position appended to the layer (-1 if none).
  int64_t last_position(size_t layer) const { return last_pos_[check_layer(layer)]; }
  const int64_t* positions(size_t layer, size_t head) const {
    return head_at(layer, head).positions.data();
  }
  float* scores(size_t layer, size_t head) { return head_at(layer, head).scores.data(); }
  const float* scores(size_t layer, size_t head) const {
    return head_at(layer, head).scores.data();
  }
  // Page p's bounds: 2 * Dk floats, [min | max] (page_bounds must be on).
  const float* page_bounds(size_t layer, size_t head, size_t page) const;

  // Copies one head's keys and values to fp32 (length rows each; K rows of Dk, V rows of Dv).
  // In kRerotate mode the keys come rotated to their cache position (as attention sees them).
  void gather(size_t layer, size_t head, MatrixView<float> K, MatrixView<float> V) const;

  // Raw page access for kernels: row r of page `page` of a head.
  const void* key_page(size_t layer, size_t head, size_t page) const;
  const void* value_page(size_t layer, size_t head, size_t page) const;
  size_t key_stride() const { return cfg_.head_dim; }
  size_t value_stride() const { return cfg_.latent ? cfg_.head_dim : dv_; }

  // Accounting (bytes of K/V pages; metadata_bytes() is positions, scores and bounds).
  size_t page_bytes() const { return page_bytes_; }
  size_t pages_in_use() const { return pages_in_use_; }
  size_t bytes_in_use() const { return pages_in_use_ * page_bytes_; }
  size_t peak_bytes() const { return peak_pages_ * page_bytes_; }
  size_t reserved_bytes() const { return (pages_in_use_ + free_.size()) * page_bytes_; }
  size_t metadata_bytes() const;
  size_t tokens_in_use() const;

  // cos/sin table for ranks [0, n): row r = cos(r * f_i) for i < Dk/2, then sin (kRerotate).
  // ensure_rope_table is not thread-safe; call it before a parallel read.
  void ensure_rope_table(size_t n);
  const float* rope_table() const { return rope_table_.data(); }

 private:
  struct Head {
    std::vector<uint32_t> pages;
    size_t length = 0;
    std::vector<int64_t> positions;
    std::vector<float> scores;
    std::vector<float> bounds;  // per page 2 * Dk
  };
  size_t check_layer(size_t layer) const;
  const Head& head_at(size_t layer, size_t head) const;
  Head& head_at(size_t layer, size_t head);
  uint32_t take_page();
  void release_page(uint32_t id);
  char* key_row(const Head& h, size_t slot) const;
  char* value_row(const Head& h, size_t slot) const;
  void move_slot(Head& h, size_t from, size_t to);
  void shrink_pages(Head& h);
  void recompute_bounds(Head& h, size_t page);
  void fold_bounds(Head& h, size_t slot);

  CacheConfig cfg_;
  size_t dv_ = 0;
  size_t esize_ = 4;
  size_t key_page_bytes_ = 0;
  size_t page_bytes_ = 0;
  std::vector<Head> heads_;  // layer-major
  std::vector<int64_t> last_pos_;
  std::vector<char*> pool_;  // page id -> memory (nullptr once trimmed)
  std::vector<uint32_t> free_;
  std::vector<uint32_t> trimmed_;  // ids whose memory was released, reused first
  size_t pages_in_use_ = 0;
  size_t peak_pages_ = 0;
  std::vector<float> rope_table_;
  size_t rope_rows_ = 0;
  ObjectMutex mu_;
};

}  // namespace kv
}  // namespace sparseforge
