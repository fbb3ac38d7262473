// Private to the CPU reference: the AVX-512 path of iq4_nl (cpu_ggml_avx512.cpp).
#pragma once

#include <cstdint>

namespace kvtune::kernels::cpu::detail {

// Whether this CPU has AVX-512F and KVTUNE_CPU_NO_AVX512 is unset (or "0");
// decided once per process.
bool use_avx512();

// ggml_iq4_nl on the sixteen consecutive 32-element blocks of src into dst
// (may alias); returns the values stored non-finite, or -1, having written
// nothing, if an input is NaN or inf. Only where use_avx512().
int64_t iq4_nl16_avx512(const float* src, float* dst);

}  // namespace kvtune::kernels::cpu::detail
