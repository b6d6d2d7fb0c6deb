// Load a saved pruned model and generate text: C++ alone, no Python (the twin of
// examples/python/generate.py, which writes the file).
//
//   python examples/python/generate.py --save model.sf     # stories260K pruned 30 %
//   ./generate_example model.sf [max_new_tokens] [temperature] [seed]
//
// The file is read by sparseforge::runtime::SavedModel (memory-mapped, CRC-checked; N:M and
// bitmap weights in their execution layouts), a Session runs prefill and one decode step
// per token over its KV cache, and a llama2.c tokenizer stored in the file turns the
// tokens into text (other tokenizers: the ids are printed).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "sparseforge/sparseforge.h"

namespace {

// llama2.c's tokenizer.bin: int32 max_token_length, then per token: float score, int32
// length, the piece's bytes. Decoding follows run.c: "<0xXX>" pieces are raw bytes, the
// leading space of a piece after BOS is dropped, BOS/EOS print nothing.
std::vector<std::string> llama2c_pieces(const uint8_t* data, size_t size, size_t vocab) {
  std::vector<std::string> pieces;
  size_t pos = 4;
  for (size_t i = 0; i < vocab && pos + 8 <= size; ++i) {
    int32_t len = 0;
    std::memcpy(&len, data + pos + 4, 4);
    pos += 8;
    if (len < 0 || pos + static_cast<size_t>(len) > size) break;
    pieces.emplace_back(reinterpret_cast<const char*>(data + pos), static_cast<size_t>(len));
    pos += static_cast<size_t>(len);
  }
  return pieces;
}

std::string decode(const std::vector<std::string>& pieces, int64_t prev, int64_t t) {
  if (t == 1 || t == 2 || static_cast<size_t>(t) >= pieces.size()) return "";
  std::string p = pieces[static_cast<size_t>(t)];
  unsigned byte = 0;
  if (p.size() == 6 && std::sscanf(p.c_str(), "<0x%02X>", &byte) == 1) {
    return std::string(1, static_cast<char>(byte));
  }
  if (prev == 1 && !p.empty() && p[0] == ' ') p.erase(0, 1);
  return p;
}

}  // namespace

int main(int argc, char** argv) {
  namespace rt = sparseforge::runtime;
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s model.sf [max_new_tokens] [temperature] [seed]\n", argv[0]);
    return 2;
  }
  const size_t max_new = argc > 2 ? std::strtoul(argv[2], nullptr, 10) : 64;
  rt::SamplingConfig sampling;
  sampling.temperature = argc > 3 ? std::strtof(argv[3], nullptr) : 0.0f;
  sampling.seed = argc > 4 ? std::strtoull(argv[4], nullptr, 10) : 0;
  try {
    const std::unique_ptr<rt::SavedModel> saved = rt::SavedModel::load(argv[1]);
    const rt::Model& model = saved->model();
    const rt::ModelConfig& c = model.config;
    std::printf("%s: %s, %zu layers, dim %zu, vocab %zu; %.2f MB of weights read per token\n",
                argv[1], c.arch.c_str(), c.n_layers, c.dim, c.vocab_size,
                static_cast<double>(model.weight_bytes()) / 1e6);
    const int64_t bos = saved->bos_id() >= 0 ? saved->bos_id() : 0;
    const std::vector<int64_t> prompt = {bos};
    const size_t capacity = std::min(c.max_seq_len, prompt.size() + max_new);
    rt::Session session(model, capacity, /*num_threads=*/0);
    std::vector<int64_t> stop;
    if (saved->eos_id() >= 0) stop.push_back(saved->eos_id());
    if (saved->bos_id() >= 0) stop.push_back(saved->bos_id());
    const std::vector<int64_t> out =
        session.generate(prompt.data(), prompt.size(), capacity - prompt.size(), sampling, stop);
    if (saved->tokenizer_kind() == "llama2c") {
      const std::vector<std::string> pieces =
          llama2c_pieces(saved->tokenizer_data(), saved->tokenizer_size(), c.vocab_size);
      std::string text;
      int64_t prev = bos;
      for (int64_t t : out) {
        text += decode(pieces, prev, t);
        prev = t;
      }
      std::printf("%s\n", text.c_str());
    } else {
      for (int64_t t : out) std::printf("%lld ", static_cast<long long>(t));
      std::printf("\n");
    }
    std::printf("%zu tokens generated (KV cache %zu bytes)\n", out.size(), session.kv_bytes());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
