// A model file written by sparseforge.models.save, read by C++ alone: the second reader of
// the one container format (format/container.h; the first is python/sparseforge/_container.py,
// and tests read the same files with both).
//
// The file's metadata "sfmodel.config" (JSON) gives the LlamaConfig; every weight is stored
// under its Hugging Face name, dense (F32/F16/BF16, viewed in the memory map without a
// copy) or compressed ("nm" -> NMMatrix, "bitmap" -> BitmapMatrix, built once from the
// stored canonical components). Norms and biases stored in another dtype than float32 are
// widened into owned vectors. "sfmodel.tokenizer" / "sfmodel.tokenizer_data" carry the
// tokenizer, exposed as its kind and bytes.
//
// load() throws InvalidArgument naming the file for anything that does not match: not a
// sparseforge model file, a config that does not validate, a missing weight, a shape or
// dtype that disagrees with the config, corrupt data (CRC), unsupported formats (CSR, a
// SliceGPT-sliced model).
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "sparseforge/format/container.h"
#include "sparseforge/format/nm.h"
#include "sparseforge/format/unstructured.h"
#include "sparseforge/runtime/model.h"

namespace sparseforge {
namespace runtime {

class SavedModel {
 public:
  static std::unique_ptr<SavedModel> load(const std::string& path, bool verify = true,
                                          int num_threads = 0);

  const Model& model() const { return model_; }
  const format::ContainerFile& file() const { return *file_; }
  // "llama2c", "tokenizers" or "" (none stored); the stored bytes (a view into the file);
  // BOS / EOS ids (-1: none).
  const std::string& tokenizer_kind() const { return tokenizer_kind_; }
  const uint8_t* tokenizer_data() const { return tokenizer_data_; }
  size_t tokenizer_size() const { return tokenizer_size_; }
  int64_t bos_id() const { return bos_id_; }
  int64_t eos_id() const { return eos_id_; }

 private:
  SavedModel() = default;
  Weight weight(const std::string& name, size_t rows, size_t cols, int num_threads);
  // A float32 view of vector `name` (a widened copy when stored narrower or offset != 0:
  // offset + w, Gemma's norm convention).
  const float* vector(const std::string& name, size_t n, bool optional, float offset = 0.0f);

  std::unique_ptr<format::ContainerFile> file_;
  std::deque<format::NMMatrix> nm_;
  std::deque<format::BitmapMatrix> bitmap_;
  std::deque<std::vector<float>> widened_;
  Model model_;
  std::string tokenizer_kind_;
  const uint8_t* tokenizer_data_ = nullptr;
  size_t tokenizer_size_ = 0;
  int64_t bos_id_ = -1, eos_id_ = -1;
};

}  // namespace runtime
}  // namespace sparseforge
