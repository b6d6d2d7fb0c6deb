// KV policies in the core: one interface (prefill compression from the prompt's attention,
// a per-step decode update that uses the attention mass of the same pass, eviction, page
// selection) and the eleven built-in policies behind it, plus PolicyCache, the driver a
// model's forward (or runtime::Session) calls once per layer and step.
//
// Notation as in paged_cache.h; B is a layer's token budget per kv head.
//
// A policy drives every layer of ONE sequence in one PagedKVCache (it remembers each
// layer's budget, fixed when the layer's prompt is compressed). Calls:
//   prefill(cache, layer, q, k, v, positions, T): appends the prompt's T tokens and
//     compresses them (q (T, H*Dk) fp32 post-RoPE; k (T, Hkv*Dk), v (T, Hkv*Dv)). Every
//     check (budget against the context, a scorer's fresh layer, SnapKV's window) runs
//     before the append: a call that throws leaves the cache as it was.
//   decode(cache, layer, q, k, v, position, out, scale): appends one token, attends (dense,
//     or over Quest's selected pages) with the mass of the same pass where the policy needs
//     it, then evicts down to the budget if the policy evicts at decode time.
// Eviction timing is explicit (EvictAt): kPrefill compresses the prompt only (kvpress's
// presses; the cache then grows by one token per step), kDecode also holds the budget after
// every decode step. Each policy has a default (window, StreamingLLM, H2O, TOVA: kDecode;
// the score-once policies: kPrefill) and accepts the other:
//   score-once policies at kDecode keep their prompt scores and evict, per step, the
//     lowest-scoring non-protected slot; the new token gets the maximum score so far (it is
//     "in the window"), so the oldest-lowest token goes (SnapKV's rule applied per step).
//   window / H2O / TOVA at kPrefill compress the prompt and then grow.
// Full and Quest never evict.
//
// Budgets (Budget): a token count, a kept fraction of the prompt (n = max(1, floor(T * f))),
// kvpress's compression_ratio r (the fraction REMOVED: kept fraction 1 - r), or one entry
// per layer. Python names them tokens= / keep= / compression_ratio=.
//
// Arithmetic follows the numpy reference implementations kept as test oracles
// (tests_py/kv_oracle.py): scores in fp64, ties broken by position (older kept) exactly as
// their lexsorts do, so the kept tokens are the same and the outputs bitwise equal.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "sparseforge/core/view.h"
#include "sparseforge/kvcache/attention.h"
#include "sparseforge/kvcache/paged_cache.h"

namespace sparseforge {
namespace kv {

enum class EvictAt : uint8_t { kDefault = 0, kPrefill = 1, kDecode = 2 };

struct BudgetEntry {
  bool fraction = false;  // false: value tokens (>= 1); true: kept fraction in (0, 1]
  double value = 0.0;
};

struct Budget {
  // none (Full / a policy that needs none), one entry for every layer, or one per layer
  bool given = false;
  BudgetEntry uniform;
  std::vector<BudgetEntry> per_layer;

  static Budget tokens(size_t n);
  static Budget keep_fraction(double f);
  static Budget compression_ratio(double r);  // kvpress: keeps 1 - r
  // Throws InvalidArgument naming `budget` on a bad entry or a per-layer list of the wrong
  // length (num_layers, when nonzero).
  void validate(size_t num_layers) const;
  // Tokens a layer keeps for a prompt of `context` tokens.
  size_t resolve(size_t layer, size_t context) const;
  // The same before flooring: context * fraction for a fraction (kvpress's PyramidKV uses
  // this float), the count for a token budget.
  double resolve_real(size_t layer, size_t context) const;
  // True when every entry is a token count (no fractions).
  bool all_tokens() const;
};

// Options of the built-in policies (each reads its own; the factory fills the defaults).
struct PolicyOptions {
  GroupReduce reduce = GroupReduce::kMean;  // how a group's G query heads combine
  bool reduce_given = false;                // false: the policy's default
  EvictAt evict_at = EvictAt::kDefault;
  size_t sinks = 4;               // StreamingLLM
  double recent_ratio = 0.5;      // H2O: the newest round(B * ratio) are protected
  size_t window = 64;             // SnapKV / PyramidKV observation window
  size_t kernel_size = 5;         // SnapKV pooling (odd)
  bool max_pool = false;          // SnapKV: max pooling instead of avg
  bool keep_last = false;         // TOVA: the prompt's last token is never evicted at prefill
  double beta = 20.0;             // PyramidKV
  double alpha_safeguard = 0.2;   // AdaKV
  std::string scorer = "snapkv";  // AdaKV's scorer: snapkv, key_norm, random
  size_t dense_layers = 2;        // Quest: the first layers attend densely
  uint64_t seed = 0;              // Random
};

class Policy {
 public:
  Policy(Budget budget, const PolicyOptions& options);
  virtual ~Policy() = default;
  virtual std::unique_ptr<Policy> clone() const = 0;
  virtual const char* name() const = 0;
  // Removes tokens at all (Full and Quest do not).
  virtual bool evicts() const { return true; }
  // The budget holds after every decode step (EvictAt::kDecode).
  bool decode_evicts() const { return evicts() && evict_at_ == EvictAt::kDecode; }
  EvictAt evict_at() const { return evict_at_; }
  const Budget& budget() const { return budget_; }
  GroupReduce reduce() const { return reduce_; }

  void prefill(PagedKVCache& cache, size_t layer, ConstMatrixView<float> q, const AnyConstMatrix& k,
               const AnyConstMatrix& v, const int64_t* positions, size_t T, int num_threads);
  void decode(PagedKVCache& cache, size_t layer, ConstMatrixView<float> q, const AnyConstMatrix& k,
              const AnyConstMatrix& v, int64_t position, MatrixView<float> out, float scale,
              int num_threads);
  // Tokens a layer keeps (fixed at its prefill; before it, resolved against the layer's
  // current context).
  size_t layer_budget(const PagedKVCache& cache, size_t layer);
  // Forget the per-sequence state (layer budgets) before a new sequence.
  virtual void reset() { fixed_.clear(); }
  // Validates this policy against a cache before anything is appended (num_layers of a
  // per-layer budget, page bounds for Quest).
  virtual void check_cache(const PagedKVCache& cache) const;
  // prefill()'s checks for a prompt of T tokens into `layer` (positions 0 .. T-1 when the
  // layer is empty), without appending.
  void check_prefill_at(const PagedKVCache& cache, size_t layer, size_t T) const;

  // The lock of callers that share this policy between threads (never taken by the core).
  std::mutex& mutex() const { return mu_.get(); }

  // Quest: the pages attended by the last decode step of a sparse layer ((Hkv, n), -1
  // padded; empty after a dense layer).
  const std::vector<int32_t>& last_pages() const { return last_pages_; }
  size_t last_pages_stride() const { return last_pages_stride_; }

 protected:
  // Checks run before the append (throw to leave the cache untouched); T = prompt tokens,
  // context = the layer's context after the append.
  virtual void check_prefill(const PagedKVCache& cache, size_t layer, size_t T, size_t context,
                             size_t budget) const;
  virtual void after_prefill(PagedKVCache& cache, size_t layer, ConstMatrixView<float> q,
                             const AnyConstMatrix& k, size_t T, int num_threads);
  virtual void decode_step(PagedKVCache& cache, size_t layer, ConstMatrixView<float> q,
                           MatrixView<float> out, float scale, int num_threads);
  // The layer's budget for a prompt of `context` tokens (PyramidKV overrides it);
  // fix_budget also remembers it for the layer.
  virtual size_t peek_budget(const PagedKVCache& cache, size_t layer, size_t context) const;
  size_t fix_budget(const PagedKVCache& cache, size_t layer, size_t context);
  size_t set_fixed(size_t layer, size_t b);
  void dense_attend(PagedKVCache& cache, size_t layer, ConstMatrixView<float> q,
                    MatrixView<float> out, float scale, int num_threads) const;

  Budget budget_;
  GroupReduce reduce_;
  EvictAt evict_at_;
  std::vector<int64_t> fixed_;  // per layer, -1 = not fixed
  std::vector<int32_t> last_pages_;
  size_t last_pages_stride_ = 0;
  ObjectMutex mu_;
};

// Score-once policies (kvpress's ScorerPress): per-token scores (Hkv, L) in fp64 at prefill,
// the top B per kv head kept (ties: the older token). Subclasses define score().
class ScorerPolicy : public Policy {
 public:
  using Policy::Policy;
  // scores: (Hkv, T) row-major fp64 for the layer's fresh prompt (T = its length).
  virtual void score(const PagedKVCache& cache, size_t layer, ConstMatrixView<float> q,
                     const AnyConstMatrix& k, size_t T, int num_threads,
                     std::vector<double>& scores) const = 0;
  void reset() override {
    Policy::reset();
    prompt_end_.clear();
  }

 protected:
  void check_prefill(const PagedKVCache& cache, size_t layer, size_t T, size_t context,
                     size_t budget) const override;
  void after_prefill(PagedKVCache& cache, size_t layer, ConstMatrixView<float> q,
                     const AnyConstMatrix& k, size_t T, int num_threads) override;
  void decode_step(PagedKVCache& cache, size_t layer, ConstMatrixView<float> q,
                   MatrixView<float> out, float scale, int num_threads) override;
  std::vector<int64_t> prompt_end_;  // per layer: positions below it are the prompt's
};

// Keeps the top n_keep slots of each kv head by scores (Hkv rows of `ld` doubles, slot order);
// ties: the older position is kept. Order-preserving compaction.
void keep_top(PagedKVCache& cache, size_t layer, const double* scores, size_t ld, size_t n_keep);

// PyramidKV's per-layer budgets (kvpress get_layer_budget); see docs/kvcache.md. `budget`
// is the average per layer, a count or kvpress's float T * (1 - compression_ratio); the
// uniform fallback is max(1, round(budget)) (half to even, Python's round).
std::vector<size_t> pyramid_budgets(size_t num_layers, size_t context, double budget, size_t window,
                                    double beta);

// numpy's default_rng([seed, layer]).random(n): SeedSequence + PCG64 + 53-bit doubles, so the
// Random policy keeps the tokens the numpy reference keeps.
void numpy_random(uint64_t seed, uint64_t layer, double* out, size_t n);

// A built-in policy by name: full, sliding_window, streaming_llm, h2o, tova, snapkv,
// pyramidkv, adakv, quest, random, key_norm. Throws InvalidArgument naming `policy`,
// `budget` or the option.
std::unique_ptr<Policy> make_policy(const std::string& name, const Budget& budget,
                                    const PolicyOptions& options);
const std::vector<std::string>& policy_names();

// The decode cache a model's forward calls per layer: the paged cache and a policy.
//   attend(layer, q (T, H*Dk), k, v (T, Hkv*D) fp32 post-RoPE at positions length ..
//     length + T - 1, scale, out (T, H*Dv)):
//     prefill (T > 1, empty cache, prefill_compress): exact causal attention over the chunk,
//       then policy.prefill;
//     otherwise token by token: policy.decode.
//   advance(T) once every layer has attended (length += T).
// A throw leaves the cache untouched for the failing layer (the policy checks first).
class PolicyCache {
 public:
  // The cache and the policy may be shared with other owners (the Python views); a fork
  // copies both.
  PolicyCache(std::shared_ptr<PagedKVCache> cache, size_t num_heads, std::shared_ptr<Policy> policy,
              bool prefill_compress);
  PolicyCache(const PolicyCache& other);  // a fork: a deep copy of cache and policy state
  PolicyCache& operator=(const PolicyCache&) = delete;

  const std::shared_ptr<PagedKVCache>& shared_cache() const { return cache_; }
  const std::shared_ptr<Policy>& shared_policy() const { return policy_; }
  PagedKVCache& cache() { return *cache_; }
  const PagedKVCache& cache() const { return *cache_; }
  Policy& policy() { return *policy_; }
  const Policy& policy() const { return *policy_; }
  size_t num_heads() const { return num_heads_; }
  size_t length() const { return length_; }
  bool prefill_compress() const { return prefill_compress_; }
  std::mutex& mutex() const { return mu_.get(); }

  void attend(size_t layer, ConstMatrixView<float> q, ConstMatrixView<float> k,
              ConstMatrixView<float> v, float scale, MatrixView<float> out, int num_threads);
  void advance(size_t T) { length_ += T; }
  // The checks attend() would make for T new tokens on every layer (the policy's prefill
  // checks: budget against the prompt, SnapKV's window, ...), so that a caller running all
  // layers can refuse before the first layer appends anything.
  void check_attend(size_t T) const;
  // Drops every token and the policy's per-sequence state.
  void reset();
  // Bytes held: K/V pages plus metadata (positions, scores, page bounds).
  size_t bytes_in_use() const { return cache_->bytes_in_use() + cache_->metadata_bytes(); }

 private:
  std::shared_ptr<PagedKVCache> cache_;
  std::shared_ptr<Policy> policy_;
  size_t num_heads_;
  size_t length_ = 0;
  bool prefill_compress_;
  std::vector<float> scratch_;
  ObjectMutex mu_;
};

}  // namespace kv
}  // namespace sparseforge
