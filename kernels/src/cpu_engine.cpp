// The engine formats' shape rules and storage cost, and their CPU reference
// (cpu::fake_quant_engine): engine_math.h's per-group arithmetic over the
// tensor's groups (llama.cpp's: over its units of blocks and Hadamard chunks).
#include <algorithm>
#include <string>

#include "cpu_common.h"
#include "cpu_ggml.h"
#include "kvtune/kernels/engine.h"

namespace kvtune::kernels {

bool engine_takes_scale(EngineArith arith) {
  switch (arith) {
    case EngineArith::E4m3Scaled:
    case EngineArith::E5m2Scaled:
    case EngineArith::E4m3Cast:
    case EngineArith::E5m2Cast:
    case EngineArith::Nvfp4Layer:
      return true;
    default:
      return false;
  }
}

void validate_engine(const EngineSpec& spec, const CacheShape& shape) {
  validate_shape(shape, "engine format");
  if (engine_takes_scale(spec.arith) &&
      !(spec.scale > 0.0f && spec.scale < 3.0e38f && floor_log2(spec.scale) >= -126)) {
    throw std::invalid_argument("the per-layer KV scale " + std::to_string(spec.scale) +
                                " is not a positive normal float");
  }
  if (spec.arith == EngineArith::Nvfp4Layer && shape.head_dim % 16 != 0) {
    throw std::invalid_argument("nvfp4 blocks are 16 channels of one head: head_dim " +
                                std::to_string(shape.head_dim) + " is not a multiple of 16");
  }
  if (spec.arith == EngineArith::Fp4Pow2 && (shape.heads * shape.head_dim) % 16 != 0) {
    throw std::invalid_argument(
        "fp4_e2m1 blocks are 16 consecutive elements of a token's heads x head_dim = " +
        std::to_string(shape.heads * shape.head_dim) + " values, which is not a multiple of 16");
  }
  if (engine_is_ggml_block(spec.arith) && (shape.heads * shape.head_dim) % kGgmlBlock != 0) {
    throw std::invalid_argument(
        "llama.cpp's quantized cache blocks are 32 consecutive elements of a token's heads (" +
        std::to_string(shape.heads) + ") x head_dim (" + std::to_string(shape.head_dim) + ") = " +
        std::to_string(shape.heads * shape.head_dim) + " values, which is not a multiple of 32");
  }
  const int n = spec.rotate_chunk;
  if (n != 0 && !engine_is_ggml(spec.arith)) {
    throw std::invalid_argument("a Hadamard rotation (rotate_chunk " + std::to_string(n) +
                                ") is llama.cpp's, for its cache types only");
  }
  if (n != 0 && (n < 2 || n > kGgmlMaxRotation || (n & (n - 1)) != 0 || shape.head_dim % n != 0)) {
    throw std::invalid_argument("the Hadamard chunk rotate_chunk " + std::to_string(n) +
                                " is not a power of two from 2 to " +
                                std::to_string(kGgmlMaxRotation) + " dividing head_dim " +
                                std::to_string(shape.head_dim));
  }
}

double engine_storage_bits(const EngineSpec& spec, const CacheShape& shape) {
  validate_engine(spec, shape);
  const double layer_scale =
      engine_takes_scale(spec.arith) ? 32.0 / static_cast<double>(shape.elements()) : 0.0;
  switch (spec.arith) {
    case EngineArith::Fp8PerTokenHead:
    case EngineArith::Int8PerTokenHead:
      return 8.0 + 32.0 / static_cast<double>(shape.head_dim);  // an fp32 scale per (token, head)
    case EngineArith::Nvfp4Layer:
    case EngineArith::Fp4Pow2:
      return 4.0 + 8.0 / 16.0 + layer_scale;  // a one-byte scale per 16 elements
    // llama.cpp: per block of 32, the codes, an fp16 scale and (q4_1, q5_1) an fp16 minimum.
    case EngineArith::GgmlQ8_0:
      return 8.0 + 16.0 / 32.0;
    case EngineArith::GgmlQ4_0:
    case EngineArith::GgmlIq4Nl:
      return 4.0 + 16.0 / 32.0;
    case EngineArith::GgmlQ4_1:
      return 4.0 + 32.0 / 32.0;
    case EngineArith::GgmlQ5_0:
      return 5.0 + 16.0 / 32.0;
    case EngineArith::GgmlQ5_1:
      return 5.0 + 32.0 / 32.0;
    case EngineArith::GgmlF16:
    case EngineArith::GgmlBf16:
      return 16.0;
    case EngineArith::GgmlF32:
      return 32.0;
    default:
      return 8.0 + layer_scale;
  }
}

namespace cpu {
using namespace detail;
int64_t fake_quant_engine(const EngineSpec& spec, const CacheShape& shape, DType dtype,
                          const void* x, void* y) {
  validate_engine(spec, shape);
  check_pointers(x, y, "fake_quant_engine");
  const int64_t group = engine_unit_size(spec.arith, spec.rotate_chunk, shape.head_dim);
  const bool ggml = engine_is_ggml(spec.arith);
  FirstBad bad;
  std::atomic<int64_t> overflow{0};
  dispatch(dtype, [&]<class T>(T*) {
    const T* in = static_cast<const T*>(x);
    T* out = static_cast<T*>(y);
    // whole groups per work item (llama.cpp's: whole batches of sixteen blocks)
    const int64_t per = ggml ? std::max<int64_t>(kGgmlBatch, group) * 4 : 256;
    const int64_t step = group * (group < per ? per / group : 1);
    parallel_for((shape.elements() + step - 1) / step, 64, [&](int64_t begin, int64_t end) {
      const int64_t last = std::min(end * step, shape.elements());
      int64_t local = 0;
      if (ggml) {
        local = ggml_fake_quant_range(spec, in, out, begin * step, last, group, bad);
      } else {
        for (int64_t e = begin * step; e < last; e += group) {
          int64_t first_bad = -1;
          local +=
              engine_fake_quant_group(spec.arith, spec.scale, in + e, out + e, group, &first_bad);
          if (first_bad >= 0) bad.report(e + first_bad);
        }
      }
      overflow += local;
    });
  });
  bad.raise_if_any(shape, x, dtype, "fake_quant_engine");
  return overflow.load();
}

}  // namespace cpu
}  // namespace kvtune::kernels
