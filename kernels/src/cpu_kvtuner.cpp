// The CPU reference of KVTuner's vanilla quantizer (cpu::fake_quant_kvtuner):
// each group gathered from KVTuner's flattened order, its bf16 min and max,
// then its elements, with format_math.h's per-group arithmetic.
#include <vector>

#include "cpu_common.h"
#include "kvtune/kernels/quant.h"

namespace kvtune::kernels::cpu {
using namespace detail;

void fake_quant_kvtuner(const KvtunerSpec& spec, const CacheShape& shape, DType dtype,
                        const void* x, void* y) {
  const int64_t group = kvtuner_group(spec, shape);
  check_pointers(x, y, "fake_quant_kvtuner");
  FirstBad bad;
  dispatch(dtype, [&]<class T>(T*) {
    const T* in = static_cast<const T*>(x);
    T* out = static_cast<T*>(y);
    parallel_for(shape.elements() / group, 256 / group + 1, [&](int64_t begin, int64_t end) {
      std::vector<int64_t> offsets(static_cast<size_t>(group));
      std::vector<float> values(offsets.size());
      for (int64_t g = begin; g < end; ++g) {
        float mn = 0, mx = 0;
        bool any_bad = false;
        for (int64_t i = 0; i < group; ++i) {
          const int64_t off =
              kvtuner_offset(g * group + i, shape.tokens, shape.heads, shape.head_dim, spec.axis);
          const float v = bf16_round(to_float(in[off]));
          offsets[static_cast<size_t>(i)] = off;
          values[static_cast<size_t>(i)] = v;
          mn = i == 0 ? v : min_f(mn, v);
          mx = i == 0 ? v : max_f(mx, v);
          any_bad |= is_nonfinite(v);
        }
        if (any_bad) {
          for (int64_t i = 0; i < group; ++i) {
            if (is_nonfinite(values[static_cast<size_t>(i)]))
              bad.report(offsets[static_cast<size_t>(i)]);
          }
          continue;
        }
        const KvtunerParams p = kvtuner_params(mn, mx, spec.bits);
        for (int64_t i = 0; i < group; ++i) {
          out[offsets[static_cast<size_t>(i)]] =
              from_float<T>(kvtuner_fake_quant(values[static_cast<size_t>(i)], p, spec.bits));
        }
      }
    });
  });
  bad.raise_if_any(shape, x, dtype, "fake_quant_kvtuner");
}

}  // namespace kvtune::kernels::cpu
