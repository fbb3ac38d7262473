// Private to the CPU reference: llama.cpp's cache types over a range of a
// tensor, sixteen 32-element blocks at a time (cpu_ggml.cpp).
#pragma once

#include <cstdint>

#include "cpu_common.h"
#include "kvtune/kernels/engine.h"

namespace kvtune::kernels::cpu::detail {

// Elements per batch of the fast path: sixteen blocks (two vectors of eight
// lanes, or one of sixteen with AVX-512).
inline constexpr int64_t kGgmlBatch = 16 * kGgmlBlock;

// Fake-quantizes the units (engine_unit_size) in [begin, end), which are
// whole units, of a llama.cpp type; y may alias x. Non-finite input is
// reported to `bad`; returns the values the cache stores as NaN or inf.
// Bit-identical to ggml_fake_quant_unit (engine_math.h) unit by unit.
template <class T>
int64_t ggml_fake_quant_range(const EngineSpec& spec, const T* x, T* y, int64_t begin, int64_t end,
                              int64_t unit, FirstBad& bad);

}  // namespace kvtune::kernels::cpu::detail
