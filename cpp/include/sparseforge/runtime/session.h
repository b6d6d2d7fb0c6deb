// A decode session: a model (runtime/model.h), a contiguous KV cache it owns, and the
// forward for all layers in one call: prefill(tokens), step(token) -> logits, generate().
//
// Cache layout (float32, per layer): keys transposed per kv head, K[g][d][j] at
// (g * D + d) * ldk + j with ldk = round_up(capacity, 16), so decode attention reads the
// cache in place (models::attention_transposed_keys) with no copy per step; values row
// per token, V[j][g * D + d]. Bytes: 2 n_layers Hkv D capacity * 4 (+ the key padding).
//
// Arithmetic: the same core operations as the research forward in Python
// (sparseforge.models.LlamaModel with linear_backend="sparseforge"): rms_norm, rope,
// attention, the SwiGLU gate and the kernels of each weight format, so results match it
// bitwise for dense / N:M / bitmap weights; with TEAL the fused sparse SwiGLU
// (kernels::swiglu) differs from the unfused path in the last bits. Threads run inside
// each kernel call; every result is bitwise identical for any num_threads.
//
// Errors: a token id outside [0, vocab_size), a context past the capacity (or max_seq_len)
// and a model of another configuration throw InvalidArgument before anything is written:
// the cache (its length and every cached token) is as before the call. A call that fails
// later (std::bad_alloc) leaves length unchanged too.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <random>
#include <vector>

#include "sparseforge/kvcache/policy.h"
#include "sparseforge/runtime/model.h"

namespace sparseforge {
namespace runtime {

// How generate() picks the next token. temperature 0: greedy (argmax, ties to the lowest
// id). Otherwise p = softmax(logits / temperature) in double, restricted to the top_k most
// likely ids (0 = all; ties to the lower id) and then to the smallest set of most likely
// ids whose mass reaches top_p (1 = all), renormalised, and sampled with a 64-bit
// Mersenne Twister (std::mt19937_64) seeded with `seed`: u = (draw >> 11) * 2^-53, the first
// kept id (ascending) whose cumulative mass exceeds u * total.
struct SamplingConfig {
  float temperature = 0.0f;  // >= 0
  size_t top_k = 0;
  float top_p = 1.0f;  // (0, 1]
  uint64_t seed = 0;
};

// The next token from one row of logits (vocab floats); the generator advances.
class Sampler {
 public:
  explicit Sampler(const SamplingConfig& config);
  int64_t pick(const float* logits, size_t vocab);

 private:
  SamplingConfig config_;
  std::mt19937_64 rng_;
  std::vector<double> p_;
  std::vector<uint32_t> order_;
};

class Session {
 public:
  // capacity: tokens the cache holds, 1 <= capacity <= max_seq_len. The model must outlive
  // the session (or be replaced with set_model first). num_threads <= 0: the default.
  Session(const Model& model, size_t capacity, int num_threads = 0);
  // A session over a paged cache with a KV policy (kvcache/policy.h): every layer's attention
  // is the policy cache's attend (prefill: exact attention over the chunk then the policy's
  // compression; decode: append, attention with its mass, eviction), so a whole step with
  // any built-in policy is one call. The cache must match the model's layers, kv heads,
  // head_dim, query heads and RoPE; it may already hold tokens (a prefilled or forked
  // context), which the session continues. Capacity: max_seq_len positions.
  Session(const Model& model, std::shared_ptr<kv::PolicyCache> cache, int num_threads = 0);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  const Model& model() const { return *model_; }
  // Another model of the same layer/head layout (e.g. after its weights changed): the
  // cached tokens stay. Throws InvalidArgument otherwise.
  void set_model(const Model& model);

  size_t length() const { return policy_ ? policy_->length() : length_; }
  // The policy cache of a policy session (nullptr for the contiguous cache).
  const std::shared_ptr<kv::PolicyCache>& policy_cache() const { return policy_; }
  size_t capacity() const { return capacity_; }
  int num_threads() const { return num_threads_; }
  void set_num_threads(int num_threads);
  size_t kv_bytes() const;  // bytes the cache holds (a policy cache: pages + metadata)
  void reset();

  // Feeds T >= 1 tokens after the cached ones; logits: (T, vocab) float32, or (1, vocab)
  // for the last token only when last_only. Advances length by T.
  void prefill(const int64_t* tokens, size_t T, float* logits, bool last_only);
  // One token: logits (vocab,).
  void step(int64_t token, float* logits);
  // Continues from prompt (n >= 1 tokens, fed after the cached ones) by up to max_new
  // tokens; returns the new ones. Stops after a token in `stop` (which is returned).
  // Needs length + n + max_new - 1 <= capacity.
  std::vector<int64_t> generate(const int64_t* prompt, size_t n, size_t max_new,
                                const SamplingConfig& sampling, const std::vector<int64_t>& stop);

  // The cached keys (post-RoPE) and values of `layer`, rows 0 .. length-1: k and v each
  // (length, Hkv * D) float32, caller-owned. Contiguous sessions only.
  void read_kv(size_t layer, float* k, float* v) const;

 private:
  struct Scratch;
  void check_tokens(const int64_t* tokens, size_t T, const char* name) const;
  void check_window(size_t total) const;
  void forward(const int64_t* tokens, size_t T, float* logits, bool last_only);
  void block(size_t i, size_t T);

  const Model* model_;
  size_t capacity_, ldk_, length_ = 0;
  int num_threads_;
  std::vector<float> k_, v_;  // per layer: Hkv*D*ldk keys (transposed), capacity*Hkv*D values
  std::shared_ptr<kv::PolicyCache> policy_;  // set: the paged cache with a policy
  std::unique_ptr<Scratch> scratch_;
};

}  // namespace runtime
}  // namespace sparseforge
