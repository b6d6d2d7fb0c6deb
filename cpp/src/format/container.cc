#include "sparseforge/format/container.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#define SF_HAVE_MMAP 1
#endif

#include "format/json.h"
#include "sparseforge/core/error.h"

namespace sparseforge {
namespace format {
namespace {

constexpr uint64_t kMaxHeader = 100000000;  // the safetensors limit
constexpr size_t kMaxDims = 32;
const char kPrefix[] = "sparseforge.";
const char kHeaderCrcKey[] = "sparseforge.header_crc32";

size_t itemsize(const std::string& d) {
  static const std::map<std::string, size_t> sizes = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1},
      {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},
      {"U32", 4},  {"F32", 4}, {"F64", 8}, {"I64", 8},     {"U64", 8}};
  const auto it = sizes.find(d);
  return it == sizes.end() ? 0 : it->second;
}

std::array<uint32_t, 256> crc_table() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    t[i] = c;
  }
  return t;
}

std::string hex8(uint32_t v) {
  char buf[9];
  std::snprintf(buf, sizeof buf, "%08x", v);
  return buf;
}

}  // namespace

uint32_t crc32(const uint8_t* data, size_t n, uint32_t crc) {
  static const std::array<uint32_t, 256> table = crc_table();
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) crc = table[(crc ^ data[i]) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

size_t StoredArray::numel() const {
  size_t n = 1;
  for (size_t d : shape) n *= d;
  return n;
}

std::unique_ptr<ContainerFile> ContainerFile::open(const std::string& path, bool verify) {
  std::unique_ptr<ContainerFile> f(new ContainerFile());
  f->path_ = path;
#ifdef SF_HAVE_MMAP
  const int fd = ::open(path.c_str(), O_RDONLY);
  SF_CHECK_ARG(fd >= 0, "%s: cannot open (%s)", path.c_str(), std::strerror(errno));
  struct stat st{};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    SF_THROW(InvalidArgument, "%s: not a regular file", path.c_str());
  }
  f->size_ = static_cast<size_t>(st.st_size);
  if (f->size_ > 0) {
    void* p = ::mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p != MAP_FAILED) {
      f->base_ = static_cast<const uint8_t*>(p);
      f->mapped_ = true;
    }
  }
  ::close(fd);
#endif
  if (!f->mapped_) {
    std::ifstream in(path, std::ios::binary);
    SF_CHECK_ARG(in.good(), "%s: cannot open", path.c_str());
    f->buffer_.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    f->base_ = f->buffer_.data();
    f->size_ = f->buffer_.size();
  }
  f->parse(verify);
  return f;
}

ContainerFile::~ContainerFile() {
#ifdef SF_HAVE_MMAP
  if (mapped_) ::munmap(const_cast<uint8_t*>(base_), size_);
#endif
}

const StoredArray& ContainerFile::array(const std::string& key) const {
  const auto it = arrays_.find(key);
  SF_CHECK_ARG(it != arrays_.end(), "%s: no tensor '%s'", path_.c_str(), key.c_str());
  return it->second;
}

const StoredArray& ContainerFile::component(const std::string& name,
                                            const std::string& component) const {
  const auto it = compressed_.find(name);
  SF_CHECK_ARG(it != compressed_.end(), "%s: '%s' is not a compressed tensor", path_.c_str(),
               name.c_str());
  const auto c = it->second.components.find(component);
  SF_CHECK_ARG(c != it->second.components.end(), "%s: tensor '%s' has no component '%s'",
               path_.c_str(), name.c_str(), component.c_str());
  return array(c->second);
}

void ContainerFile::parse(bool verify) {
  const char* p = path_.c_str();
  SF_CHECK_ARG(size_ >= 8, "%s: %zu bytes: too short for a safetensors file", p, size_);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | base_[i];
  SF_CHECK_ARG(n <= kMaxHeader && n <= size_ - 8,
               "%s: header length %llu does not fit the file (%zu bytes)", p,
               static_cast<unsigned long long>(n), size_);
  const std::string raw(reinterpret_cast<const char*>(base_ + 8), static_cast<size_t>(n));
  SF_CHECK_ARG(!raw.empty() && raw[0] == '{',
               "%s: header does not start with '{': not a safetensors file", p);
  const std::string what = path_ + ": header";
  const json::Value header = json::parse(raw, what.c_str());
  SF_CHECK_ARG(header.is(json::Value::Type::kObject), "%s: header is not a JSON object", p);
  const uint8_t* data = base_ + 8 + n;
  const size_t data_size = size_ - 8 - static_cast<size_t>(n);
  std::map<std::string, std::string> meta;
  std::vector<std::pair<size_t, size_t>> ranges;
  for (const auto& m : header.members) {
    const std::string& key = m.first;
    const json::Value& info = m.second;
    if (key == "__metadata__") {
      SF_CHECK_ARG(info.is(json::Value::Type::kObject), "%s: __metadata__ is not an object", p);
      for (const auto& kv : info.members) {
        SF_CHECK_ARG(kv.second.is(json::Value::Type::kString),
                     "%s: __metadata__ is not an object of strings", p);
        meta[kv.first] = kv.second.text;
      }
      continue;
    }
    const json::Value* dt = info.find("dtype");
    const json::Value* shape = info.find("shape");
    const json::Value* offsets = info.find("data_offsets");
    SF_CHECK_ARG(
        info.is(json::Value::Type::kObject) && info.members.size() == 3 && dt && shape && offsets,
        "%s: tensor '%s': expected {dtype, shape, data_offsets}", p, key.c_str());
    StoredArray a;
    a.dtype = dt->text;
    const size_t isz = dt->is(json::Value::Type::kString) ? itemsize(a.dtype) : 0;
    SF_CHECK_ARG(isz > 0, "%s: tensor '%s': unsupported dtype", p, key.c_str());
    SF_CHECK_ARG(shape->is(json::Value::Type::kArray) && shape->items.size() <= kMaxDims,
                 "%s: tensor '%s': bad shape", p, key.c_str());
    size_t numel = 1;
    for (const json::Value& d : shape->items) {
      const uint64_t v = json::to_u64(d, "shape");
      SF_CHECK_ARG(v == 0 || numel <= (uint64_t{1} << 62) / v, "%s: tensor '%s': too large", p,
                   key.c_str());
      a.shape.push_back(static_cast<size_t>(v));
      numel *= static_cast<size_t>(v);
    }
    SF_CHECK_ARG(offsets->is(json::Value::Type::kArray) && offsets->items.size() == 2,
                 "%s: tensor '%s': bad data_offsets", p, key.c_str());
    const uint64_t b = json::to_u64(offsets->items[0], "data_offsets");
    const uint64_t e = json::to_u64(offsets->items[1], "data_offsets");
    SF_CHECK_ARG(b <= e && e - b == numel * isz,
                 "%s: tensor '%s': data_offsets hold %llu bytes, the shape needs %zu", p,
                 key.c_str(), static_cast<unsigned long long>(e - b), numel * isz);
    SF_CHECK_ARG(e <= data_size, "%s: tensor '%s' ends past the file (truncated)", p, key.c_str());
    a.data = data + b;
    a.nbytes = static_cast<size_t>(e - b);
    ranges.emplace_back(static_cast<size_t>(b), static_cast<size_t>(e));
    SF_CHECK_ARG(arrays_.emplace(key, a).second, "%s: tensor '%s' appears twice", p, key.c_str());
    keys_.push_back(key);
  }
  std::sort(ranges.begin(), ranges.end());
  size_t pos = 0;
  for (const auto& r : ranges) {
    SF_CHECK_ARG(r.first == pos, "%s: tensors overlap or leave a gap at byte %zu", p, r.first);
    pos = r.second;
  }
  SF_CHECK_ARG(pos == data_size, "%s: the tensors cover %zu data bytes, the file holds %zu", p, pos,
               data_size);

  std::map<std::string, std::string> ours;
  for (const auto& kv : meta) {
    if (kv.first.compare(0, sizeof kPrefix - 1, kPrefix) == 0) {
      ours[kv.first] = kv.second;
    } else {
      metadata_[kv.first] = kv.second;
    }
  }
  if (ours.empty()) return;
  sparseforge_ = true;
  const std::set<std::string> expected = {"sparseforge.format", "sparseforge.checksum",
                                          "sparseforge.checksums", "sparseforge.tensors",
                                          kHeaderCrcKey};
  SF_CHECK_ARG(ours.count("sparseforge.format") != 0,
               "%s: sparseforge metadata without 'sparseforge.format': corrupt header", p);
  SF_CHECK_ARG(ours["sparseforge.format"] == "1",
               "%s: unsupported sparseforge format version '%.20s' (this build reads '1'); "
               "upgrade sparseforge",
               p, ours["sparseforge.format"].c_str());
  for (const auto& kv : ours) {
    SF_CHECK_ARG(expected.count(kv.first) != 0, "%s: unknown sparseforge metadata key '%s'", p,
                 kv.first.c_str());
  }
  SF_CHECK_ARG(ours.size() == expected.size(), "%s: sparseforge metadata keys are incomplete", p);
  SF_CHECK_ARG(ours["sparseforge.checksum"] == "crc32", "%s: unknown checksum algorithm", p);
  // Header CRC: the raw header with this field's value written as 00000000.
  const std::string field =
      std::string("\"") + kHeaderCrcKey + "\":\"" + ours[kHeaderCrcKey] + "\"";
  const size_t at = raw.find(field);
  SF_CHECK_ARG(at != std::string::npos && raw.find(field, at + 1) == std::string::npos,
               "%s: header checksum field is corrupt", p);
  std::string zeroed = raw;
  zeroed.replace(at, field.size(), std::string("\"") + kHeaderCrcKey + "\":\"00000000\"");
  SF_CHECK_ARG(hex8(crc32(reinterpret_cast<const uint8_t*>(zeroed.data()), zeroed.size())) ==
                   ours[kHeaderCrcKey],
               "%s: header checksum mismatch: the header is corrupt", p);
  const json::Value sums = json::parse(ours["sparseforge.checksums"], "sparseforge.checksums");
  SF_CHECK_ARG(sums.is(json::Value::Type::kObject) && sums.members.size() == arrays_.size(),
               "%s: the checksum table does not list exactly the stored tensors", p);
  for (const auto& kv : sums.members) {
    const auto it = arrays_.find(kv.first);
    SF_CHECK_ARG(it != arrays_.end() && kv.second.is(json::Value::Type::kString),
                 "%s: the checksum table does not list exactly the stored tensors", p);
    if (verify) {
      SF_CHECK_ARG(hex8(crc32(it->second.data, it->second.nbytes)) == kv.second.text,
                   "%s: tensor '%s': checksum mismatch (corrupt data)", p, kv.first.c_str());
    }
  }
  const json::Value desc = json::parse(ours["sparseforge.tensors"], "sparseforge.tensors");
  SF_CHECK_ARG(desc.is(json::Value::Type::kObject), "%s: sparseforge.tensors is not an object", p);
  for (const auto& kv : desc.members) {
    const json::Value* kind = kv.second.find("kind");
    const json::Value* m = kv.second.find("meta");
    const json::Value* comps = kv.second.find("components");
    SF_CHECK_ARG(kind && m && comps && kind->is(json::Value::Type::kString) &&
                     m->is(json::Value::Type::kObject) && comps->is(json::Value::Type::kObject),
                 "%s: tensor '%s': bad description", p, kv.first.c_str());
    CompressedEntry e;
    e.kind = kind->text;
    for (const auto& x : m->members) e.meta[x.first] = x.second.text;
    for (const auto& x : comps->members) {
      SF_CHECK_ARG(arrays_.count(x.second.text) != 0, "%s: tensor '%s': component '%s' missing", p,
                   kv.first.c_str(), x.first.c_str());
      e.components[x.first] = x.second.text;
    }
    compressed_[kv.first] = std::move(e);
  }
}

}  // namespace format
}  // namespace sparseforge
