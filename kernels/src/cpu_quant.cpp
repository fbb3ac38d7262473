// The CPU reference of the KV quantization kernels: the specification the
// CUDA kernels are tested against, and the fallback on hosts without a GPU.
// Groups are processed one at a time (stats, parameters, then the group's
// elements while they are still in cache), spread over worker threads.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "cpu_common.h"
#include "kvtune/kernels/quant.h"

namespace kvtune::kernels::cpu {
using namespace detail;
namespace {

std::atomic<int> g_threads{0};

// Min and max of n values `stride` apart; returns the offset of a non-finite
// value or -1. Contiguous groups keep 8 independent lanes so that the compiler
// vectorizes the reduction.
template <class T>
KVT_VECTOR_CLONES int64_t group_min_max(const T* x, int64_t n, int64_t stride, float& mn,
                                        float& mx) {
  constexpr int kLanes = 8;
  // poison[k] turns NaN once lane k meets a NaN or Inf (x * 0 is NaN exactly
  // for those), which keeps the loop free of integer ops and vectorizable.
  using Lanes = float __attribute__((vector_size(kLanes * sizeof(float))));
  const float first = to_float(x[0]);
  Lanes lo = Lanes{} + first, hi = lo, poison = Lanes{};
  int64_t i = 0;
  if (stride == 1) {
    for (; i + kLanes <= n; i += kLanes) {
      Lanes v;
      for (int k = 0; k < kLanes; ++k) v[k] = to_float(x[i + k]);
      lo = v < lo ? v : lo;
      hi = v > hi ? v : hi;
      poison = poison + v * 0.0f;
    }
  }
  for (; i < n; ++i) {
    const float v = to_float(x[i * stride]);
    lo[0] = min_f(lo[0], v);
    hi[0] = max_f(hi[0], v);
    poison[0] = poison[0] + v * 0.0f;
  }
  bool any_bad = false;
  for (int k = 0; k < kLanes; ++k) {
    lo[0] = min_f(lo[0], lo[k]);
    hi[0] = max_f(hi[0], hi[k]);
    any_bad |= poison[k] != 0.0f;
  }
  mn = lo[0];
  mx = hi[0];
  if (!any_bad) return -1;
  for (int64_t j = 0; j < n; ++j) {
    if (is_nonfinite(to_float(x[j * stride]))) return j * stride;
  }
  return -1;
}

template <ZeroPoint M, class T>
KVT_VECTOR_CLONES void fake_quant_run(const T* x, T* y, int64_t n, AffineParams p, int bits) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = to_float(x[i]);
    y[i] = from_float<T>(int_fake_quant(v, p, bits, M));
  }
}

// Folds one token row into per-channel running min/max; poison[c] turns NaN
// once channel c meets a NaN or Inf (see group_min_max).
template <class T>
KVT_VECTOR_CLONES void channel_min_max(const T* x, int64_t n, float* lo, float* hi, float* poison) {
  for (int64_t c = 0; c < n; ++c) {
    const float v = to_float(x[c]);
    lo[c] = min_f(lo[c], v);
    hi[c] = max_f(hi[c], v);
    poison[c] = poison[c] + v * 0.0f;
  }
}

// Fake-quantizes one token row whose channels each have their own parameters
// (kivi keys), with the parameters split into arrays so the loop vectorizes.
template <ZeroPoint M, class T>
KVT_VECTOR_CLONES void fake_quant_channels(const T* x, T* y, int64_t n, const float* scale,
                                           const float* zero, int bits) {
  for (int64_t c = 0; c < n; ++c) {
    y[c] = from_float<T>(int_fake_quant(to_float(x[c]), AffineParams{scale[c], zero[c]}, bits, M));
  }
}

template <class T>
KVT_VECTOR_CLONES void fp8_fake_quant_row(const T* x, T* y, int64_t n, float head_scale) {
  for (int64_t i = 0; i < n; ++i) y[i] = from_float<T>(fp8_fake_quant(to_float(x[i]), head_scale));
}

template <class T>
KVT_VECTOR_CLONES int64_t first_nonfinite(const T* x, int64_t n) {
  float poison = 0.0f;
  for (int64_t i = 0; i < n; ++i) poison = poison + to_float(x[i]) * 0.0f;
  if (poison == 0.0f) return -1;
  for (int64_t i = 0; i < n; ++i) {
    if (is_nonfinite(to_float(x[i]))) return i;
  }
  return -1;
}

// Visits every group of the quantized prefix with its parameters, in blocks
// that stay in cache: visit(first_group, group_count, params) after the
// parameters of those groups are known. Contiguous groups are visited one by
// one; kivi key groups one token block (all channels of G tokens) at a time.
template <class T, class Visit>
void for_each_group_block(const IntSpec& spec, const IntLayout& layout, const T* x, FirstBad& bad,
                          const Visit& visit) {
  const GroupGeometry& geo = layout.groups;
  if (geo.token_group == 0) {
    parallel_for(geo.count, 256, [&](int64_t begin, int64_t end) {
      for (int64_t g = begin; g < end; ++g) {
        float mn, mx;
        const int64_t off = group_min_max(x + g * geo.size, geo.size, 1, mn, mx);
        if (off >= 0) {
          bad.report(g * geo.size + off);
          return;
        }
        const AffineParams p = int_params(mn, mx, spec.bits, spec.zero_point);
        visit(g, int64_t{1}, &p);
      }
    });
    return;
  }
  const int64_t row = geo.row;
  const int64_t blocks = layout.quantized_tokens / geo.token_group;
  parallel_for(blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> lo(static_cast<size_t>(row)), hi(static_cast<size_t>(row)),
        poison(static_cast<size_t>(row));
    std::vector<AffineParams> params(static_cast<size_t>(row));
    for (int64_t b = begin; b < end; ++b) {
      const T* block = x + b * geo.token_group * row;
      for (int64_t c = 0; c < row; ++c) lo[c] = hi[c] = to_float(block[c]);
      std::fill(poison.begin(), poison.end(), 0.0f);
      for (int64_t t = 0; t < geo.token_group; ++t) {
        channel_min_max(block + t * row, row, lo.data(), hi.data(), poison.data());
      }
      if (std::any_of(poison.begin(), poison.end(), [](float p) { return p != 0.0f; })) {
        for (int64_t i = 0; i < geo.token_group * row; ++i) {
          if (is_nonfinite(to_float(block[i]))) {
            bad.report(b * geo.token_group * row + i);
            return;
          }
        }
      }
      for (int64_t c = 0; c < row; ++c) {
        params[c] = int_params(lo[c], hi[c], spec.bits, spec.zero_point);
      }
      visit(b * row, row, params.data());
    }
  });
}

template <class T>
void copy_residual(const IntLayout& layout, const CacheShape& shape, const T* x, T* y) {
  if (x == y || layout.residual_tokens == 0) return;
  const int64_t start = layout.code_elements;
  std::memmove(y + start, x + start, static_cast<size_t>(shape.elements() - start) * sizeof(T));
}

}  // namespace

void set_num_threads(int threads) {
  g_threads = std::max(1, threads);
}

int num_threads() {
  const int t = g_threads.load();
  if (t > 0) return t;
  return std::max(1u, std::thread::hardware_concurrency());
}

void fake_quant_int(const IntSpec& spec, const CacheShape& shape, DType dtype, const void* x,
                    void* y) {
  const IntLayout layout = int_layout(spec, shape);
  check_pointers(x, y, "fake_quant_int");
  FirstBad bad;
  dispatch(dtype, [&]<class T>(T*) {
    const T* in = static_cast<const T*>(x);
    T* out = static_cast<T*>(y);
    const GroupGeometry& geo = layout.groups;
    for_each_group_block(
        spec, layout, in, bad, [&](int64_t first, int64_t count, const AffineParams* params) {
          if (geo.token_group == 0) {
            const int64_t off = first * geo.size;
            if (spec.zero_point == ZeroPoint::Int) {
              fake_quant_run<ZeroPoint::Int>(in + off, out + off, geo.size, params[0], spec.bits);
            } else {
              fake_quant_run<ZeroPoint::Float>(in + off, out + off, geo.size, params[0], spec.bits);
            }
            return;
          }
          // A kivi key token block: `count` channels over G tokens.
          thread_local std::vector<float> scale, zero;
          scale.resize(static_cast<size_t>(count));
          zero.resize(static_cast<size_t>(count));
          for (int64_t c = 0; c < count; ++c) {
            scale[c] = params[c].scale;
            zero[c] = params[c].zero;
          }
          const int64_t base = geo.first_element(first);
          for (int64_t t = 0; t < geo.token_group; ++t) {
            const int64_t off = base + t * geo.row;
            if (spec.zero_point == ZeroPoint::Int) {
              fake_quant_channels<ZeroPoint::Int>(in + off, out + off, count, scale.data(),
                                                  zero.data(), spec.bits);
            } else {
              fake_quant_channels<ZeroPoint::Float>(in + off, out + off, count, scale.data(),
                                                    zero.data(), spec.bits);
            }
          }
        });
    bad.raise_if_any(shape, x, dtype, "fake_quant_int");
    copy_residual(layout, shape, in, out);
  });
}

void quantize_int(const IntSpec& spec, const CacheShape& shape, DType dtype, const void* x,
                  IntBuffers out) {
  const IntLayout layout = int_layout(spec, shape);
  if (x == nullptr || (layout.code_elements > 0 &&
                       (out.codes == nullptr || out.scales == nullptr || out.zeros == nullptr))) {
    throw std::invalid_argument("quantize_int: null buffer");
  }
  FirstBad bad;
  dispatch(dtype, [&]<class T>(T*) {
    const T* in = static_cast<const T*>(x);
    for_each_group_block(spec, layout, in, bad,
                         [&](int64_t first, int64_t count, const AffineParams* params) {
                           for (int64_t i = 0; i < count; ++i) {
                             out.scales[first + i] = params[i].scale;
                             out.zeros[first + i] = params[i].zero;
                           }
                         });
    bad.raise_if_any(shape, x, dtype, "quantize_int");
    const int width = spec.bits == 3 ? 8 : spec.bits;
    const int per_word = layout.codes_per_word;
    parallel_for(layout.code_words, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t w = begin; w < end; ++w) {
        uint32_t word = 0;
        for (int j = 0; j < per_word; ++j) {
          const int64_t e = w * per_word + j;
          if (e >= layout.code_elements) break;
          const int64_t g = layout.groups.group_of(e);
          const AffineParams p{out.scales[g], out.zeros[g]};
          word |= int_encode(to_float(in[e]), p, spec.bits, spec.zero_point) << (width * j);
        }
        out.codes[w] = word;
      }
    });
  });
}

void dequantize_int(const IntSpec& spec, const CacheShape& shape, ConstIntBuffers in, DType dtype,
                    void* y) {
  const IntLayout layout = int_layout(spec, shape);
  if (y == nullptr || (layout.code_elements > 0 &&
                       (in.codes == nullptr || in.scales == nullptr || in.zeros == nullptr))) {
    throw std::invalid_argument("dequantize_int: null buffer");
  }
  dispatch(dtype, [&]<class T>(T*) {
    T* out = static_cast<T*>(y);
    parallel_for(layout.code_elements, 1 << 14, [&](int64_t begin, int64_t end) {
      for (int64_t e = begin; e < end; ++e) {
        const int64_t g = layout.groups.group_of(e);
        const AffineParams p{in.scales[g], in.zeros[g]};
        const uint32_t code = unpack_code(in.codes, e, spec.bits, layout.codes_per_word);
        out[e] = from_float<T>(int_decode(code, p, spec.bits, spec.zero_point));
      }
    });
  });
}

void accumulate_head_amax(const CacheShape& shape, DType dtype, const void* x, float* amax) {
  check_pointers(x, amax, "accumulate_head_amax");
  validate_shape(shape, "accumulate_head_amax");
  FirstBad bad;
  const auto heads = static_cast<size_t>(shape.heads);
  std::vector<float> merged(amax, amax + heads);
  std::mutex merge_lock;
  dispatch(dtype, [&]<class T>(T*) {
    const T* in = static_cast<const T*>(x);
    parallel_for(shape.tokens, 64, [&](int64_t begin, int64_t end) {
      std::vector<float> local(heads, 0.0f);
      for (int64_t t = begin; t < end; ++t) {
        for (int64_t h = 0; h < shape.heads; ++h) {
          const T* r = in + (t * shape.heads + h) * shape.head_dim;
          float m = local[h];
          bool any_bad = false;
          for (int64_t d = 0; d < shape.head_dim; ++d) {
            const float v = to_float(r[d]);
            const float a = fabsf(v);
            m = a > m ? a : m;
            any_bad |= is_nonfinite(v);
          }
          if (any_bad) {
            for (int64_t d = 0; d < shape.head_dim; ++d) {
              if (is_nonfinite(to_float(r[d])))
                bad.report((t * shape.heads + h) * shape.head_dim + d);
            }
          }
          local[h] = m;
        }
      }
      const std::lock_guard lock(merge_lock);
      for (size_t h = 0; h < heads; ++h) merged[h] = std::max(merged[h], local[h]);
    });
  });
  bad.raise_if_any(shape, x, dtype, "accumulate_head_amax");
  std::copy(merged.begin(), merged.end(), amax);
}

namespace {

// Runs fn(row_pointer_offset, head) over every (token, head) row of head_dim
// values; reports non-finite inputs.
template <class Fn>
void for_each_row(const CacheShape& shape, const Fn& fn) {
  parallel_for(shape.tokens * shape.heads, 256, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) fn(r * shape.head_dim, r % shape.heads);
  });
}

void check_head_scales(const CacheShape& shape, const float* head_scales, const char* what) {
  if (head_scales == nullptr) throw std::invalid_argument(std::string(what) + ": null head scales");
  for (int64_t h = 0; h < shape.heads; ++h) {
    if (!(head_scales[h] > 0.0f) || is_nonfinite(head_scales[h])) {
      throw std::invalid_argument(std::string(what) + ": head " + std::to_string(h) + " scale " +
                                  std::to_string(head_scales[h]) + " must be positive and finite");
    }
  }
}

}  // namespace

void fake_quant_fp8(const CacheShape& shape, DType dtype, const void* x, const float* head_scales,
                    void* y) {
  validate_shape(shape, "fake_quant_fp8");
  check_pointers(x, y, "fake_quant_fp8");
  check_head_scales(shape, head_scales, "fake_quant_fp8");
  FirstBad bad;
  dispatch(dtype, [&]<class T>(T*) {
    const T* in = static_cast<const T*>(x);
    T* out = static_cast<T*>(y);
    for_each_row(shape, [&](int64_t off, int64_t h) {
      if (const int64_t b = first_nonfinite(in + off, shape.head_dim); b >= 0) {
        bad.report(off + b);
        return;
      }
      fp8_fake_quant_row(in + off, out + off, shape.head_dim, head_scales[h]);
    });
  });
  bad.raise_if_any(shape, x, dtype, "fake_quant_fp8");
}

void quantize_fp8(const CacheShape& shape, DType dtype, const void* x, const float* head_scales,
                  uint8_t* codes) {
  validate_shape(shape, "quantize_fp8");
  check_pointers(x, codes, "quantize_fp8");
  check_head_scales(shape, head_scales, "quantize_fp8");
  FirstBad bad;
  dispatch(dtype, [&]<class T>(T*) {
    const T* in = static_cast<const T*>(x);
    for_each_row(shape, [&](int64_t off, int64_t h) {
      if (const int64_t b = first_nonfinite(in + off, shape.head_dim); b >= 0) {
        bad.report(off + b);
        return;
      }
      const float s = head_scales[h];
      for (int64_t d = 0; d < shape.head_dim; ++d) {
        codes[off + d] = e4m3_encode(to_float(in[off + d]) / s);
      }
    });
  });
  bad.raise_if_any(shape, x, dtype, "quantize_fp8");
}

void dequantize_fp8(const CacheShape& shape, const uint8_t* codes, const float* head_scales,
                    DType dtype, void* y) {
  validate_shape(shape, "dequantize_fp8");
  check_pointers(codes, y, "dequantize_fp8");
  check_head_scales(shape, head_scales, "dequantize_fp8");
  dispatch(dtype, [&]<class T>(T*) {
    T* out = static_cast<T*>(y);
    for_each_row(shape, [&](int64_t off, int64_t h) {
      const float s = head_scales[h];
      for (int64_t d = 0; d < shape.head_dim; ++d) {
        out[off + d] = from_float<T>(e4m3_decode(codes[off + d]) * s);
      }
    });
  });
}

namespace {

// Visits every NVFP4 block: visit(first_element, block_length, block_scale_code,
// effective_scale).
template <class T, class Visit>
void for_each_nvfp4_block(const CacheShape& shape, const T* x, const float* head_scales,
                          FirstBad& bad, const Visit& visit) {
  const int block = nvfp4_block(shape.head_dim);
  for_each_row(shape, [&](int64_t off, int64_t h) {
    if (const int64_t b = first_nonfinite(x + off, shape.head_dim); b >= 0) {
      bad.report(off + b);
      return;
    }
    for (int64_t start = off; start < off + shape.head_dim; start += block) {
      float amax = 0.0f;
      for (int i = 0; i < block; ++i) amax = std::max(amax, fabsf(to_float(x[start + i])));
      const uint8_t code = nvfp4_block_scale_code(amax, head_scales[h]);
      visit(start, block, code, nvfp4_block_scale(code, head_scales[h]));
    }
  });
}

}  // namespace

void fake_quant_nvfp4(const CacheShape& shape, DType dtype, const void* x, const float* head_scales,
                      void* y) {
  validate_shape(shape, "fake_quant_nvfp4");
  check_pointers(x, y, "fake_quant_nvfp4");
  check_head_scales(shape, head_scales, "fake_quant_nvfp4");
  FirstBad bad;
  dispatch(dtype, [&]<class T>(T*) {
    const T* in = static_cast<const T*>(x);
    T* out = static_cast<T*>(y);
    for_each_nvfp4_block(shape, in, head_scales, bad,
                         [&](int64_t start, int block, uint8_t, float s) {
                           for (int i = 0; i < block; ++i) {
                             const float v = to_float(in[start + i]);
                             out[start + i] = from_float<T>(nvfp4_fake_quant(v, s));
                           }
                         });
  });
  bad.raise_if_any(shape, x, dtype, "fake_quant_nvfp4");
}

void quantize_nvfp4(const CacheShape& shape, DType dtype, const void* x, const float* head_scales,
                    Nvfp4Buffers out) {
  validate_shape(shape, "quantize_nvfp4");
  check_pointers(x, out.codes, "quantize_nvfp4");
  check_pointers(x, out.block_scales, "quantize_nvfp4");
  check_head_scales(shape, head_scales, "quantize_nvfp4");
  const int block = nvfp4_block(shape.head_dim);
  FirstBad bad;
  dispatch(dtype, [&]<class T>(T*) {
    const T* in = static_cast<const T*>(x);
    for_each_nvfp4_block(shape, in, head_scales, bad, [&](int64_t start, int, uint8_t code, float) {
      out.block_scales[start / block] = code;
    });
    bad.raise_if_any(shape, x, dtype, "quantize_nvfp4");
    const int64_t n = shape.elements();
    const int64_t words = (n + 7) / 8;
    parallel_for(words, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t w = begin; w < end; ++w) {
        uint32_t word = 0;
        for (int j = 0; j < 8 && w * 8 + j < n; ++j) {
          const int64_t e = w * 8 + j;
          const int64_t h = (e / shape.head_dim) % shape.heads;
          const float s = nvfp4_block_scale(out.block_scales[e / block], head_scales[h]);
          word |= nvfp4_encode(to_float(in[e]), s) << (4 * j);
        }
        out.codes[w] = word;
      }
    });
  });
}

void dequantize_nvfp4(const CacheShape& shape, ConstNvfp4Buffers in, const float* head_scales,
                      DType dtype, void* y) {
  validate_shape(shape, "dequantize_nvfp4");
  check_pointers(in.codes, y, "dequantize_nvfp4");
  check_pointers(in.block_scales, y, "dequantize_nvfp4");
  check_head_scales(shape, head_scales, "dequantize_nvfp4");
  const int block = nvfp4_block(shape.head_dim);
  dispatch(dtype, [&]<class T>(T*) {
    T* out = static_cast<T*>(y);
    parallel_for(shape.elements(), 1 << 14, [&](int64_t begin, int64_t end) {
      for (int64_t e = begin; e < end; ++e) {
        const int64_t h = (e / shape.head_dim) % shape.heads;
        const float s = nvfp4_block_scale(in.block_scales[e / block], head_scales[h]);
        out[e] = from_float<T>(nvfp4_decode((in.codes[e / 8] >> (4 * (e % 8))) & 0xfu, s));
      }
    });
  });
}

}  // namespace kvtune::kernels::cpu
