// Decode with TEAL and a KV policy: C++ alone (the twin of
// examples/python/teal_kv_decode.py, which writes the model and its TEAL thresholds).
//
//   python examples/python/teal_kv_decode.py --save model.sf    # also writes model.sf.teal
//   ./kv_policy_example model.sf [budget] [max_new_tokens] [policy]
//
// The model is read by sparseforge::runtime::SavedModel; every block linear gets its TEAL
// threshold from model.sf.teal (x * (|x| > t) before the product); a kv::PolicyCache (a
// paged cache + a policy from kv::make_policy, H2O by default) holds the KV cache, and a
// runtime::Session runs each decode step of every layer -- attention with the policy's
// update and eviction included -- in one call. The full cache runs beside it for comparison.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "sparseforge/sparseforge.h"

namespace {

namespace kv = sparseforge::kv;
namespace rt = sparseforge::runtime;

// "weight-name threshold" lines -> map
std::map<std::string, float> read_thresholds(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::map<std::string, float> out;
  std::string name;
  double t = 0.0;
  while (in >> name >> t) out[name] = static_cast<float>(t);
  return out;
}

// Sets TEAL on every block linear named in `th` (Hugging Face names, as Python writes them).
size_t apply_teal(rt::Model& m, const std::map<std::string, float>& th) {
  static const char* kNames[7] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                  "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                  "mlp.down_proj"};
  size_t n = 0;
  for (size_t i = 0; i < m.blocks.size(); ++i) {
    rt::Block& b = m.blocks[i];
    rt::Linear* ls[7] = {&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down};
    for (size_t j = 0; j < 7; ++j) {
      const auto it = th.find("model.layers." + std::to_string(i) + "." + kNames[j] + ".weight");
      if (it == th.end()) continue;
      ls[j]->teal = true;
      ls[j]->threshold = it->second;
      ++n;
    }
  }
  m.validate();
  return n;
}

std::string render(const rt::SavedModel& saved, int64_t bos, const std::vector<int64_t>& ids) {
  std::ostringstream s;
  if (saved.tokenizer_kind() == "llama2c") {
    // llama2.c's tokenizer.bin: int32 max_len, then per token float score, int32 len, bytes
    const uint8_t* d = saved.tokenizer_data();
    const size_t size = saved.tokenizer_size();
    std::vector<std::string> pieces;
    size_t pos = 4;
    while (pos + 8 <= size) {
      int32_t len = 0;
      std::memcpy(&len, d + pos + 4, 4);
      pos += 8;
      if (len < 0 || pos + static_cast<size_t>(len) > size) break;
      pieces.emplace_back(reinterpret_cast<const char*>(d + pos), static_cast<size_t>(len));
      pos += static_cast<size_t>(len);
    }
    int64_t prev = bos;
    for (int64_t t : ids) {
      if (t > 2 && static_cast<size_t>(t) < pieces.size()) {
        std::string p = pieces[static_cast<size_t>(t)];
        if (prev == 1 && !p.empty() && p[0] == ' ') p.erase(0, 1);
        s << p;
      }
      prev = t;
    }
  } else {
    for (int64_t t : ids) s << t << ' ';
  }
  return s.str();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s model.sf [budget] [max_new_tokens] [policy]\n", argv[0]);
    return 2;
  }
  const size_t budget = argc > 2 ? std::strtoul(argv[2], nullptr, 10) : 32;
  const size_t max_new = argc > 3 ? std::strtoul(argv[3], nullptr, 10) : 48;
  const std::string policy = argc > 4 ? argv[4] : "h2o";
  try {
    const std::unique_ptr<rt::SavedModel> saved = rt::SavedModel::load(argv[1]);
    rt::Model model = saved->model();  // views: a copy of the description, not the weights
    const size_t n_teal = apply_teal(model, read_thresholds(std::string(argv[1]) + ".teal"));
    const rt::ModelConfig& c = model.config;
    std::printf("%s: %zu layers, %zu/%zu heads of %zu; TEAL on %zu linears\n", argv[1], c.n_layers,
                c.n_heads, c.n_kv_heads, c.head_dim, n_teal);
    const int64_t bos = saved->bos_id() >= 0 ? saved->bos_id() : 0;
    const std::vector<int64_t> prompt = {bos};
    const size_t n = std::min(max_new, c.max_seq_len - 1);
    rt::SamplingConfig greedy;  // temperature 0

    // The full cache (the contiguous one).
    rt::Session full(model, n + 1);
    const std::vector<int64_t> a = full.generate(prompt.data(), 1, n, greedy, {});
    std::printf("TEAL + full cache (%zu bytes): %s\n", full.kv_bytes(),
                render(*saved, bos, a).c_str());

    // The paged cache with a KV policy: one core call per step for every layer.
    kv::CacheConfig cc;
    cc.num_layers = c.n_layers;
    cc.num_kv_heads = c.n_kv_heads;
    cc.head_dim = c.head_dim;
    cc.page_size = 16;
    auto cache = std::make_shared<kv::PolicyCache>(
        std::make_shared<kv::PagedKVCache>(cc), c.n_heads,
        std::shared_ptr<kv::Policy>(
            kv::make_policy(policy, kv::Budget::tokens(budget), kv::PolicyOptions())),
        /*prefill_compress=*/true);
    rt::Session session(model, cache);
    const std::vector<int64_t> b = session.generate(prompt.data(), 1, n, greedy, {});
    size_t held = 0;
    for (size_t l = 0; l < c.n_layers; ++l) held = std::max(held, cache->cache().length(l, 0));
    std::printf("TEAL + %s %zu (%zu bytes, %zu tokens held of %zu): %s\n", policy.c_str(), budget,
                session.kv_bytes(), held, cache->length(), render(*saved, bos, b).c_str());
    size_t same = 0;
    for (size_t i = 0; i < a.size() && i < b.size(); ++i) same += a[i] == b[i];
    std::printf("%zu of %zu tokens as the full cache\n", same, a.size());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
