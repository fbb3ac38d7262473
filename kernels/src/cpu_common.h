// Private to the CPU reference (cpu_*.cpp): threading, dtype dispatch and
// the reporting of non-finite input that every format shares.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "kvtune/kernels/quant.h"

namespace kvtune::kernels::cpu::detail {

// The hot loops are also compiled for AVX2 and picked at load time. Contraction
// stays off, so both clones compute the same floats as the baseline.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define KVT_VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define KVT_VECTOR_CLONES
#endif

// Runs fn(begin, end) over [0, n) split across the worker threads; chunks are
// at least `grain` items so that small tensors stay on the calling thread.
template <class Fn>
void parallel_for(int64_t n, int64_t grain, const Fn& fn) {
  const int64_t by_size = std::max<int64_t>(1, n / std::max<int64_t>(1, grain));
  const int64_t threads = std::min<int64_t>(num_threads(), by_size);
  if (threads <= 1) {
    if (n > 0) fn(int64_t{0}, n);
    return;
  }
  const int64_t chunk = (n + threads - 1) / threads;
  std::vector<std::jthread> pool;
  pool.reserve(static_cast<size_t>(threads));
  for (int64_t begin = 0; begin < n; begin += chunk) {
    const int64_t end = std::min(n, begin + chunk);
    pool.emplace_back([&fn, begin, end] { fn(begin, end); });
  }
}

// The lowest flat index of a non-finite input seen by any thread.
class FirstBad {
 public:
  void report(int64_t index) {
    int64_t seen = first_.load(std::memory_order_relaxed);
    while (index < seen && !first_.compare_exchange_weak(seen, index)) {
    }
  }
  // Throws naming the offending element, if any was reported.
  void raise_if_any(const CacheShape& shape, const void* x, DType dtype, const char* what) const {
    const int64_t e = first_.load();
    if (e == kNone) return;
    float value = 0.0f;
    if (dtype == DType::F32) value = static_cast<const float*>(x)[e];
    if (dtype == DType::F16) value = to_float(static_cast<const Half*>(x)[e]);
    if (dtype == DType::BF16) value = to_float(static_cast<const BFloat16*>(x)[e]);
    const int64_t row = shape.heads * shape.head_dim;
    throw std::invalid_argument(
        std::string(what) + ": non-finite input value " + std::to_string(value) + " at token " +
        std::to_string(e / row) + ", head " + std::to_string((e % row) / shape.head_dim) +
        ", channel " + std::to_string(e % shape.head_dim) + " of KV tensor " + shape.str());
  }

 private:
  static constexpr int64_t kNone = std::numeric_limits<int64_t>::max();
  std::atomic<int64_t> first_{kNone};
};

// Calls fn with a typed null pointer selecting the storage type of `dtype`.
template <class Fn>
void dispatch(DType dtype, const Fn& fn) {
  switch (dtype) {
    case DType::F32:
      fn(static_cast<float*>(nullptr));
      return;
    case DType::F16:
      fn(static_cast<Half*>(nullptr));
      return;
    case DType::BF16:
      fn(static_cast<BFloat16*>(nullptr));
      return;
  }
  throw std::invalid_argument("unknown dtype");
}

inline void check_pointers(const void* x, const void* y, const char* what) {
  if (x == nullptr || y == nullptr)
    throw std::invalid_argument(std::string(what) + ": null buffer");
}

}  // namespace kvtune::kernels::cpu::detail
