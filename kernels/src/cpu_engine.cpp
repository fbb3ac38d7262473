// The engine formats' shape rules and storage cost, and their CPU reference
// (cpu::fake_quant_engine): engine_math.h's per-group arithmetic over the
// tensor's groups.
#include <string>

#include "cpu_common.h"
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
  const int64_t group = engine_group_size(spec.arith, shape.head_dim);
  FirstBad bad;
  std::atomic<int64_t> overflow{0};
  dispatch(dtype, [&]<class T>(T*) {
    const T* in = static_cast<const T*>(x);
    T* out = static_cast<T*>(y);
    const int64_t step = group * (group < 256 ? 256 / group : 1);  // whole groups per work item
    parallel_for((shape.elements() + step - 1) / step, 64, [&](int64_t begin, int64_t end) {
      int64_t local = 0;
      for (int64_t e = begin * step; e < end * step && e < shape.elements(); e += group) {
        int64_t first_bad = -1;
        local +=
            engine_fake_quant_group(spec.arith, spec.scale, in + e, out + e, group, &first_bad);
        if (first_bad >= 0) bad.report(e + first_bad);
      }
      overflow += local;
    });
  });
  bad.raise_if_any(shape, x, dtype, "fake_quant_engine");
  return overflow.load();
}

}  // namespace cpu
}  // namespace kvtune::kernels
