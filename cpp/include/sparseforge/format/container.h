// The on-disk container's C++ reader (docs/formats.md, "On-disk container"; the writer and
// the other reader are python/sparseforge/_container.py). A file is a safetensors file:
//   8 bytes   N, the header length, uint64 little-endian
//   N bytes   UTF-8 JSON: key -> {"dtype", "shape", "data_offsets": [begin, end]}, and
//             "__metadata__": {str: str} with sparseforge's reserved keys
//   rest      the data buffer, tensors back to back
// sparseforge adds a format version ("1"), a CRC-32 (zlib's) per stored tensor and of the
// header (its own field zeroed), and compressed tensors stored as components under
// "__sf__:<name>:<component>", described in "sparseforge.tensors".
//
// The file is memory-mapped (read-only); arrays are views into the map, valid while the
// ContainerFile lives. open() validates the layout before returning: the size prefix, the
// JSON, every entry's dtype/shape/offsets (covering the data buffer exactly), the version,
// the header CRC and, with verify, every tensor's CRC. Anything wrong throws
// InvalidArgument naming the file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace sparseforge {
namespace format {

// One stored array: safetensors dtype name ("F32", "BF16", "U8", "I64"...), shape, bytes.
struct StoredArray {
  std::string dtype;
  std::vector<size_t> shape;
  const uint8_t* data = nullptr;
  size_t nbytes = 0;
  size_t numel() const;
};

// A compressed tensor's description: kind ("nm", "bitmap", "csr"), its string metadata and
// component -> stored key.
struct CompressedEntry {
  std::string kind;
  std::map<std::string, std::string> meta;
  std::map<std::string, std::string> components;
};

class ContainerFile {
 public:
  static std::unique_ptr<ContainerFile> open(const std::string& path, bool verify = true);
  ~ContainerFile();
  ContainerFile(const ContainerFile&) = delete;
  ContainerFile& operator=(const ContainerFile&) = delete;

  const std::string& path() const { return path_; }
  bool is_sparseforge() const { return sparseforge_; }
  // User metadata (sparseforge.* keys removed).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Every stored key (component keys included) in file order.
  const std::vector<std::string>& keys() const { return keys_; }
  bool has_array(const std::string& key) const { return arrays_.count(key) != 0; }
  // Throws InvalidArgument naming the file and key when absent.
  const StoredArray& array(const std::string& key) const;
  const std::map<std::string, CompressedEntry>& compressed() const { return compressed_; }
  // A compressed tensor's component array.
  const StoredArray& component(const std::string& name, const std::string& component) const;

 private:
  ContainerFile() = default;
  void parse(bool verify);

  std::string path_;
  const uint8_t* base_ = nullptr;
  size_t size_ = 0;
  bool mapped_ = false;
  std::vector<uint8_t> buffer_;  // when mmap is not available
  bool sparseforge_ = false;
  std::map<std::string, std::string> metadata_;
  std::vector<std::string> keys_;
  std::map<std::string, StoredArray> arrays_;
  std::map<std::string, CompressedEntry> compressed_;
};

// CRC-32 as zlib.crc32 (polynomial 0xEDB88320), continuing from `crc`.
uint32_t crc32(const uint8_t* data, size_t n, uint32_t crc = 0);

}  // namespace format
}  // namespace sparseforge
