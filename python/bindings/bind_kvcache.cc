// KV-cache glue: PagedKVCache as a class, decode attention (dense / page-sparse), Quest page
// selection, windowed attention mass, RoPE. Arrays pass the numpy gate (float32 queries,
// any float storage for K/V); outputs are allocated before the GIL is released. The facade
// (sparseforge/kv.py) reshapes (T, heads, D) arrays to 2-D views and validates names.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <utility>
#include <vector>

#include "bindings.h"
#include "numpy_view.h"
#include "sparseforge/core/error.h"
#include "sparseforge/kvcache/attention.h"
#include "sparseforge/kvcache/paged_cache.h"

namespace py = pybind11;
namespace sf = sparseforge;
namespace skv = sparseforge::kv;

namespace sfpy {
namespace {

using I64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

skv::GroupReduce parse_reduce(const std::string& s) {
  if (s == "mean") return skv::GroupReduce::kMean;
  if (s == "max") return skv::GroupReduce::kMax;
  if (s == "sum") return skv::GroupReduce::kSum;
  if (s == "none") return skv::GroupReduce::kNone;
  throw sf::InvalidArgument("group_reduce: expected 'mean', 'max' or 'sum', got '" + s + "'");
}

skv::RopeStyle parse_style(const std::string& s) {
  if (s == "interleaved") return skv::RopeStyle::kInterleaved;
  if (s == "half") return skv::RopeStyle::kHalf;
  throw sf::InvalidArgument("rope_style: expected 'interleaved' or 'half', got '" + s + "'");
}

// A 1-D int64 array (small: positions, slots); converted once, never a big copy.
std::vector<int64_t> i64_in(const I64Array& a, const char* name) {
  if (a.ndim() != 1)
    throw sf::InvalidArgument(std::string(name) + ": expected a 1-D integer array, got " +
                              std::to_string(a.ndim()) + "-D");
  return std::vector<int64_t>(a.data(), a.data() + a.size());
}

std::shared_ptr<skv::PagedKVCache> make_cache(size_t num_layers, size_t num_kv_heads,
                                              size_t head_dim, size_t value_dim, size_t page_size,
                                              py::handle dtype, bool latent, bool page_bounds,
                                              const std::string& rope_mode,
                                              const std::string& rope_style, double rope_theta) {
  skv::CacheConfig c;
  c.num_layers = num_layers;
  c.num_kv_heads = num_kv_heads;
  c.head_dim = head_dim;
  c.value_dim = value_dim;
  c.page_size = page_size;
  c.dtype = parse_dtype(dtype, "dtype");
  c.latent = latent;
  c.page_bounds = page_bounds;
  if (rope_mode == "original") {
    c.rope_mode = skv::RopeMode::kOriginal;
  } else if (rope_mode == "rerotate") {
    c.rope_mode = skv::RopeMode::kRerotate;
  } else {
    throw sf::InvalidArgument("rope_mode: expected 'original' or 'rerotate', got '" + rope_mode +
                              "'");
  }
  c.rope_style = parse_style(rope_style);
  c.rope_theta = rope_theta;
  return std::make_shared<skv::PagedKVCache>(c);
}

py::tuple decode_attention(skv::PagedKVCache& cache, size_t layer, py::handle q_obj,
                           py::handle pages_obj, const std::string& reduce, bool accumulate,
                           float scale, int64_t query_position, bool want_mass, int num_threads) {
  const sf::ConstMatrixView<float> q = matrix_in(q_obj, "q", kF32).as<float>();
  ObjectLock lock(cache.mutex());
  skv::DecodeOptions opt;
  opt.reduce = parse_reduce(reduce);
  opt.accumulate_scores = accumulate;
  opt.scale = scale;
  opt.query_position = query_position;
  opt.num_threads = threads_arg(num_threads);
  py::array_t<int32_t, py::array::c_style | py::array::forcecast> pages;
  const int32_t* pp = nullptr;
  size_t stride = 0;
  if (!pages_obj.is_none()) {
    pages = py::cast<py::array_t<int32_t, py::array::c_style | py::array::forcecast>>(pages_obj);
    if (pages.ndim() != 2 || static_cast<size_t>(pages.shape(0)) != cache.config().num_kv_heads)
      throw sf::InvalidArgument("pages: expected a 2-D (num_kv_heads, n) integer array");
    pp = pages.data();
    stride = static_cast<size_t>(pages.shape(1));
  }
  py::array out = new_array(sf::DType::kF32, {static_cast<py::ssize_t>(q.rows),
                                              static_cast<py::ssize_t>(cache.value_dim())});
  const size_t maxlen = cache.max_length(layer);
  py::object mass_obj = py::none();
  sf::MatrixView<float> mv;
  if (want_mass) {
    py::array m = new_array(sf::DType::kF32, {static_cast<py::ssize_t>(cache.config().num_kv_heads),
                                              static_cast<py::ssize_t>(maxlen)});
    mv = matrix_view(m).as<float>();
    if (maxlen == 0) mv.data = static_cast<float*>(m.mutable_data());
    mass_obj = m;
  }
  const sf::MatrixView<float> ov = matrix_view(out).as<float>();
  {
    py::gil_scoped_release release;
    skv::decode_attention(cache, layer, q, ov, mv, pp, stride, opt);
  }
  return py::make_tuple(out, mass_obj);
}

// TOVA's / H2O's whole decode-time upkeep for one layer in one call (attention + selection +
// eviction, the mass kept in C++); returns out (H, Dv).
py::array decode_upkeep(skv::PagedKVCache& cache, size_t layer, py::handle q_obj, bool tova,
                        size_t budget, size_t recent, const std::string& reduce, float scale,
                        int num_threads) {
  const sf::ConstMatrixView<float> q = matrix_in(q_obj, "q", kF32).as<float>();
  ObjectLock lock(cache.mutex());
  skv::DecodeOptions opt;
  opt.reduce = parse_reduce(reduce);
  opt.scale = scale;
  opt.num_threads = threads_arg(num_threads);
  py::array out = new_array(sf::DType::kF32, {static_cast<py::ssize_t>(q.rows),
                                              static_cast<py::ssize_t>(cache.value_dim())});
  const sf::MatrixView<float> ov = matrix_view(out).as<float>();
  py::gil_scoped_release release;
  if (tova) {
    skv::decode_attention_tova(cache, layer, q, ov, budget, opt);
  } else {
    skv::decode_attention_h2o(cache, layer, q, ov, budget, recent, opt);
  }
  return out;
}

py::array quest_select(const skv::PagedKVCache& cache, size_t layer, py::handle q_obj,
                       size_t page_budget, const std::string& reduce, int num_threads) {
  const sf::ConstMatrixView<float> q = matrix_in(q_obj, "q", kF32).as<float>();
  ObjectLock lock(cache.mutex());
  const skv::GroupReduce r = parse_reduce(reduce);
  const int threads = threads_arg(num_threads);
  py::array_t<int32_t> out({static_cast<py::ssize_t>(cache.config().num_kv_heads),
                            static_cast<py::ssize_t>(std::max<size_t>(page_budget, 1))});
  int32_t* op = out.mutable_data();
  py::gil_scoped_release release;
  skv::quest_select(cache, layer, q, page_budget, r, op, threads);
  return std::move(out);
}

py::array quest_page_scores(const skv::PagedKVCache& cache, size_t layer, py::handle q_obj,
                            const std::string& reduce, int num_threads) {
  const sf::ConstMatrixView<float> q = matrix_in(q_obj, "q", kF32).as<float>();
  ObjectLock lock(cache.mutex());
  const skv::GroupReduce r = parse_reduce(reduce);
  const int threads = threads_arg(num_threads);
  size_t maxp = 0;
  for (size_t h = 0; h < cache.config().num_kv_heads; ++h)
    maxp = std::max(maxp, cache.num_pages(layer, h));
  py::array out = new_array(sf::DType::kF32, {static_cast<py::ssize_t>(cache.config().num_kv_heads),
                                              static_cast<py::ssize_t>(maxp)});
  sf::MatrixView<float> ov = matrix_view(out).as<float>();
  if (maxp == 0) ov.data = static_cast<float*>(out.mutable_data());
  py::gil_scoped_release release;
  skv::quest_page_scores(cache, layer, q, r, ov, threads);
  return out;
}

py::array window_mass(py::handle q_obj, py::handle k_obj, size_t num_heads, size_t num_kv_heads,
                      size_t window, float scale, const std::string& reduce, int num_threads) {
  const sf::AnyConstMatrix q = matrix_in(q_obj, "q");
  const sf::AnyConstMatrix k = matrix_in(k_obj, "k");
  const skv::GroupReduce r = parse_reduce(reduce);
  const int threads = threads_arg(num_threads);
  const size_t rows = r == skv::GroupReduce::kNone ? num_heads : num_kv_heads;
  py::array out = new_array(sf::DType::kF32,
                            {static_cast<py::ssize_t>(rows), static_cast<py::ssize_t>(k.rows)});
  const sf::MatrixView<float> ov = matrix_view(out).as<float>();
  py::gil_scoped_release release;
  skv::window_attention_mass(q, k, num_heads, num_kv_heads, window, scale, r, ov, threads);
  return out;
}

py::array apply_rope(py::handle x_obj, const I64Array& positions, const std::string& style,
                     double theta) {
  const sf::ConstMatrixView<float> x = matrix_in(x_obj, "x", kF32).as<float>();
  const std::vector<int64_t> pos = i64_in(positions, "positions");
  if (pos.size() != x.rows)
    throw sf::InvalidArgument("positions: expected " + std::to_string(x.rows) +
                              " positions (rows of x), got " + std::to_string(pos.size()));
  const skv::RopeStyle st = parse_style(style);
  py::array out = new_array(sf::DType::kF32,
                            {static_cast<py::ssize_t>(x.rows), static_cast<py::ssize_t>(x.cols)});
  float* o = static_cast<float*>(out.mutable_data());
  for (size_t r = 0; r < x.rows; ++r) std::copy(x.row(r), x.row(r) + x.cols, o + r * x.cols);
  skv::apply_rope(o, x.rows, x.cols, x.cols, pos.data(), st, theta);
  return out;
}

}  // namespace

void register_kvcache(py::module_& m) {
  using C = skv::PagedKVCache;
  py::class_<C, std::shared_ptr<C>>(m, "PagedKVCache")
      .def(py::init(&make_cache), py::arg("num_layers"), py::arg("num_kv_heads"),
           py::arg("head_dim"), py::arg("value_dim"), py::arg("page_size"), py::arg("dtype"),
           py::arg("latent"), py::arg("page_bounds"), py::arg("rope_mode"), py::arg("rope_style"),
           py::arg("rope_theta"))
      .def(
          "append",
          [](C& c, size_t layer, py::handle k_obj, py::handle v_obj, const I64Array& positions) {
            const sf::AnyConstMatrix k = matrix_in(k_obj, "k");
            const sf::AnyConstMatrix v =
                c.config().latent ? sf::AnyConstMatrix() : matrix_in(v_obj, "v");
            const std::vector<int64_t> pos = i64_in(positions, "positions");
            ObjectLock lock(c.mutex());
            py::gil_scoped_release release;
            c.append(layer, k, v, pos.data(), pos.size());
          },
          py::arg("layer"), py::arg("k"), py::arg("v"), py::arg("positions"))
      .def(
          "evict",
          [](C& c, size_t layer, size_t head, const I64Array& slots, bool keep_order) {
            const std::vector<int64_t> s = i64_in(slots, "slots");
            ObjectLock lock(c.mutex());
            c.evict(layer, head, s.data(), s.size(), keep_order);
          },
          py::arg("layer"), py::arg("head"), py::arg("slots"), py::arg("keep_order"))
      .def("evict_lowest", locked(&C::evict_lowest), py::arg("layer"), py::arg("head"),
           py::arg("count"), py::arg("protect_below"), py::arg("protect_recent"))
      .def("evict_lowest_layer", locked(&C::evict_lowest_layer), py::arg("layer"), py::arg("keep"),
           py::arg("protect_below"), py::arg("protect_recent"))
      .def(
          "evict_lowest_mean",
          [](C& c, size_t layer, py::handle mass_obj, size_t count) {
            const sf::ConstMatrixView<float> mv = matrix_in(mass_obj, "mass", kF32).as<float>();
            ObjectLock lock(c.mutex());
            return c.evict_lowest_mean(layer, mv, count);
          },
          py::arg("layer"), py::arg("mass"), py::arg("count"))
      .def("clear", locked(&C::clear))
      .def("copy",
           [](const C& c) {
             ObjectLock lock(c.mutex());
             return std::make_shared<C>(c);
           })
      .def("trim", locked(&C::trim))
      .def("reset_peak", locked(&C::reset_peak))
      .def("length", locked(&C::length), py::arg("layer"), py::arg("head"))
      .def("num_pages", locked(&C::num_pages), py::arg("layer"), py::arg("head"))
      .def("last_position", locked(&C::last_position), py::arg("layer"))
      .def(
          "positions",
          [](const C& c, size_t layer, size_t head) {
            ObjectLock lock(c.mutex());
            const size_t n = c.length(layer, head);
            py::array_t<int64_t> out(static_cast<py::ssize_t>(n));
            std::copy(c.positions(layer, head), c.positions(layer, head) + n, out.mutable_data());
            return out;
          },
          py::arg("layer"), py::arg("head"))
      .def(
          "scores",
          [](const C& c, size_t layer, size_t head) {
            ObjectLock lock(c.mutex());
            const size_t n = c.length(layer, head);
            py::array_t<float> out(static_cast<py::ssize_t>(n));
            std::copy(c.scores(layer, head), c.scores(layer, head) + n, out.mutable_data());
            return out;
          },
          py::arg("layer"), py::arg("head"))
      .def(
          "set_scores",
          [](C& c, size_t layer, size_t head, py::handle s_obj) {
            ObjectLock lock(c.mutex());
            const float* s = vector_f32_in(s_obj, "scores", c.length(layer, head));
            std::copy(s, s + c.length(layer, head), c.scores(layer, head));
          },
          py::arg("layer"), py::arg("head"), py::arg("scores"))
      .def(
          "page_bounds",
          [](const C& c, size_t layer, size_t head) {
            ObjectLock lock(c.mutex());
            const size_t np = c.num_pages(layer, head), D = c.key_dim();
            py::array_t<float> out(
                {static_cast<py::ssize_t>(np), py::ssize_t{2}, static_cast<py::ssize_t>(D)});
            for (size_t p = 0; p < np; ++p)
              std::copy(c.page_bounds(layer, head, p), c.page_bounds(layer, head, p) + 2 * D,
                        out.mutable_data() + p * 2 * D);
            return out;
          },
          py::arg("layer"), py::arg("head"))
      .def(
          "gather",
          [](const C& c, size_t layer, size_t head) {
            ObjectLock lock(c.mutex());
            const auto n = static_cast<py::ssize_t>(c.length(layer, head));
            py::array K = new_array(sf::DType::kF32, {n, static_cast<py::ssize_t>(c.key_dim())});
            py::array V = new_array(sf::DType::kF32, {n, static_cast<py::ssize_t>(c.value_dim())});
            sf::MatrixView<float> kv = matrix_view(K).as<float>(), vv = matrix_view(V).as<float>();
            kv.data = static_cast<float*>(K.mutable_data());
            vv.data = static_cast<float*>(V.mutable_data());
            c.gather(layer, head, kv, vv);
            return py::make_tuple(K, V);
          },
          py::arg("layer"), py::arg("head"))
      .def_property_readonly("bytes_in_use", locked(&C::bytes_in_use))
      .def_property_readonly("peak_bytes", locked(&C::peak_bytes))
      .def_property_readonly("reserved_bytes", locked(&C::reserved_bytes))
      .def_property_readonly("metadata_bytes", locked(&C::metadata_bytes))
      .def_property_readonly("page_bytes", locked(&C::page_bytes))
      .def_property_readonly("pages_in_use", locked(&C::pages_in_use))
      .def_property_readonly("tokens_in_use", locked(&C::tokens_in_use))
      .def_property_readonly("value_dim", locked(&C::value_dim));
  m.def("decode_attention", &decode_attention, py::arg("cache"), py::arg("layer"), py::arg("q"),
        py::arg("pages"), py::arg("group_reduce"), py::arg("accumulate"), py::arg("scale"),
        py::arg("query_position"), py::arg("want_mass"), py::arg("num_threads"));
  m.def("decode_upkeep", &decode_upkeep, py::arg("cache"), py::arg("layer"), py::arg("q"),
        py::arg("tova"), py::arg("budget"), py::arg("recent"), py::arg("group_reduce"),
        py::arg("scale"), py::arg("num_threads"));
  m.def("quest_select", &quest_select, py::arg("cache"), py::arg("layer"), py::arg("q"),
        py::arg("page_budget"), py::arg("group_reduce"), py::arg("num_threads"));
  m.def("quest_page_scores", &quest_page_scores, py::arg("cache"), py::arg("layer"), py::arg("q"),
        py::arg("group_reduce"), py::arg("num_threads"));
  m.def("window_mass", &window_mass, py::arg("q"), py::arg("k"), py::arg("num_heads"),
        py::arg("num_kv_heads"), py::arg("window"), py::arg("scale"), py::arg("group_reduce"),
        py::arg("num_threads"));
  m.def("apply_rope", &apply_rope, py::arg("x"), py::arg("positions"), py::arg("rope_style"),
        py::arg("rope_theta"));
}

}  // namespace sfpy
