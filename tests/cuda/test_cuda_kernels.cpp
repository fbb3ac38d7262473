// The CUDA kernels against the CPU reference: identical codes, scales, zero
// points and amax, and dequantized / fake-quantized values within 1e-6
// relative, over random shapes (with residual tokens, partial groups and
// partial code words), every integer spec, all three dtypes, fp8 and nvfp4.
// Every test skips cleanly on a machine without a CUDA device.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <limits>
#include <memory>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "kvtune/kernels/engine.h"
#include "kvtune/kernels/quant.h"

namespace kvtune::kernels {
namespace {

void check_cuda(cudaError_t status, const char* call) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string(call) + ": " + cudaGetErrorString(status));
  }
}

// Owns `count` elements of T in device memory (at least one, so that empty
// layouts still get a valid, non-null pointer).
template <class T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t count) : count_(count) {
    void* p = nullptr;
    check_cuda(cudaMalloc(&p, std::max<size_t>(count, 1) * sizeof(T)), "cudaMalloc");
    ptr_.reset(static_cast<T*>(p));
  }

  T* get() const { return ptr_.get(); }
  size_t size() const { return count_; }

  void upload(const std::vector<T>& host, cudaStream_t stream) {
    if (host.size() > count_) throw std::length_error("DeviceBuffer::upload: too many elements");
    check_cuda(cudaMemcpyAsync(get(), host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice,
                               stream),
               "cudaMemcpyAsync(upload)");
    check_cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  }

  std::vector<T> download(cudaStream_t stream) const {
    std::vector<T> host(count_);
    check_cuda(
        cudaMemcpyAsync(host.data(), get(), count_ * sizeof(T), cudaMemcpyDeviceToHost, stream),
        "cudaMemcpyAsync(download)");
    check_cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    return host;
  }

 private:
  struct Free {
    void operator()(T* p) const { (void)cudaFree(p); }
  };
  std::unique_ptr<T, Free> ptr_;
  size_t count_;
};

template <class T>
DeviceBuffer<T> to_device(const std::vector<T>& host, cudaStream_t stream) {
  DeviceBuffer<T> buffer(host.size());
  buffer.upload(host, stream);
  return buffer;
}

template <class T>
constexpr DType dtype_of() {
  if constexpr (std::is_same_v<T, float>) return DType::F32;
  if constexpr (std::is_same_v<T, Half>) return DType::F16;
  return DType::BF16;
}

// A tensor shape plus the kivi grouping used with it, and whether its device
// buffers start one element past an aligned address (so the kernels' scalar
// fallback for unaligned data is checked as well as their vector path).
struct Case {
  CacheShape shape;
  int group_size = 32;
  int residual = 32;
  bool misaligned = false;

  std::string str() const {
    return shape.str() + " G=" + std::to_string(group_size) + " R=" + std::to_string(residual) +
           (misaligned ? " misaligned" : "");
  }
};

std::vector<Case> test_cases() {
  std::vector<Case> cases = {
      {{1, 1, 4}, 32, 32, false},   // shorter than the kivi residual: nothing quantized
      {{3, 1, 4}, 4, 4, true},      // 12 elements: partial code words
      {{70, 3, 12}, 4, 8, false},   // nvfp4 blocks of 12 share code words
      {{45, 2, 96}, 16, 32, true},  // 13 residual tokens
      {{33, 5, 8}, 32, 32, false},  // head_dim below G: value groups of head_dim
      {{300, 8, 128}, 32, 32, false},
  };
  std::mt19937 rng(20250214);
  const int64_t dims[] = {4, 8, 16, 32, 64, 96, 128};
  const int groups[] = {4, 8, 16, 32};
  for (int i = 0; i < 30; ++i) {
    Case c;
    c.shape.tokens = std::uniform_int_distribution<int64_t>(1, 300)(rng);
    c.shape.heads = std::uniform_int_distribution<int64_t>(1, 8)(rng);
    c.shape.head_dim = dims[rng() % std::size(dims)];
    c.group_size = groups[rng() % std::size(groups)];
    c.residual = c.group_size * static_cast<int>(1 + rng() % 2);
    c.misaligned = i % 3 == 0;
    cases.push_back(c);
  }
  return cases;
}

// Heads of very different magnitudes, and one constant token vector so that
// constant groups (scale 0 under the float zero point) occur.
template <class T>
std::vector<T> random_cache(const CacheShape& s, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const float head_sigma[] = {1.0f, 0.01f, 100.0f, 3.0f};
  std::vector<T> x(static_cast<size_t>(s.elements()));
  for (int64_t e = 0; e < s.elements(); ++e) {
    const int64_t h = (e / s.head_dim) % s.heads;
    x[static_cast<size_t>(e)] = from_float<T>(normal(rng) * head_sigma[h % 4]);
  }
  const int64_t t = s.tokens / 2;
  for (int64_t d = 0; d < s.head_dim; ++d) {
    x[static_cast<size_t>(t * s.heads * s.head_dim + d)] = from_float<T>(1.5f);
  }
  return x;
}

std::vector<IntSpec> int_specs(const Case& c) {
  std::vector<IntSpec> specs;
  for (Grouping g : {Grouping::PerToken, Grouping::Kivi}) {
    for (Role r : {Role::Key, Role::Value}) {
      for (int bits : {1, 2, 3, 4, 8}) {
        for (ZeroPoint z : {ZeroPoint::Int, ZeroPoint::Float}) {
          IntSpec s;
          s.grouping = g;
          s.role = r;
          s.bits = bits;
          s.zero_point = z;
          s.group_size = c.group_size;
          s.residual = c.residual;
          specs.push_back(s);
        }
      }
    }
  }
  return specs;
}

std::string spec_str(const IntSpec& s) {
  return std::string(s.grouping == Grouping::PerToken ? "per-token" : "kivi") +
         (s.role == Role::Key ? " key " : " value ") + std::to_string(s.bits) + "-bit " +
         (s.zero_point == ZeroPoint::Int ? "int-zero" : "float-zero");
}

template <class T>
::testing::AssertionResult identical(const std::vector<T>& gpu, const std::vector<T>& cpu,
                                     size_t count) {
  for (size_t i = 0; i < count; ++i) {
    if (!(gpu[i] == cpu[i])) {
      return ::testing::AssertionFailure() << "first difference at " << i << " of " << count
                                           << ": gpu " << +gpu[i] << ", cpu " << +cpu[i];
    }
  }
  return ::testing::AssertionSuccess();
}

// Element i is close when |gpu - cpu| <= 1e-6 * max(|cpu|, smallest normal).
template <class T>
::testing::AssertionResult close(const std::vector<T>& gpu, const std::vector<T>& cpu,
                                 size_t count) {
  for (size_t i = 0; i < count; ++i) {
    const float a = to_float(gpu[i]);
    const float b = to_float(cpu[i]);
    const float tolerance = 1e-6f * std::max(std::fabs(b), std::numeric_limits<float>::min());
    if (!(std::fabs(a - b) <= tolerance)) {
      return ::testing::AssertionFailure()
             << "first difference at " << i << " of " << count << ": gpu " << a << ", cpu " << b;
    }
  }
  return ::testing::AssertionSuccess();
}

// Per-head scales for fp8 / nvfp4 from the data's amax, with some heads
// deliberately mis-scaled: too small (values saturate) and far too large
// (nvfp4 block scales round to zero).
std::vector<float> head_scales(const std::vector<float>& amax, float (*scale_of)(float)) {
  std::vector<float> scales(amax.size());
  for (size_t h = 0; h < amax.size(); ++h) {
    const float factor = h % 4 == 1 ? 0.25f : h % 4 == 3 ? 1e6f : 1.0f;
    scales[h] = scale_of(amax[h]) * factor;
  }
  return scales;
}

template <class T>
std::vector<float> cpu_amax(const CacheShape& shape, const std::vector<T>& x) {
  std::vector<float> amax(static_cast<size_t>(shape.heads), 0.0f);
  cpu::accumulate_head_amax(shape, dtype_of<T>(), x.data(), amax.data());
  return amax;
}

class DeviceStream {
 public:
  DeviceStream() { check_cuda(cudaStreamCreate(&stream_), "cudaStreamCreate"); }
  ~DeviceStream() { (void)cudaStreamDestroy(stream_); }
  DeviceStream(const DeviceStream&) = delete;
  DeviceStream& operator=(const DeviceStream&) = delete;
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

template <class T>
class CudaKernels : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cuda_device_available()) {
      GTEST_SKIP() << "no CUDA device: the CUDA kernels are built but cannot run here";
    }
    stream_ = std::make_unique<DeviceStream>();
    flag_ = std::make_unique<DeviceBuffer<int>>(1);
    flag_->upload({0}, stream());
  }

  cudaStream_t stream() const { return stream_->get(); }
  int* flag() const { return flag_->get(); }

  // A device copy of x that starts one element past an aligned address when
  // the case asks for it; the buffer keeps the padding.
  struct Placed {
    DeviceBuffer<T> buffer;
    size_t offset;
    T* get() const { return buffer.get() + offset; }
    std::vector<T> download(cudaStream_t stream) const {
      auto all = buffer.download(stream);
      return std::vector<T>(all.begin() + static_cast<std::ptrdiff_t>(offset), all.end());
    }
  };
  Placed place(const std::vector<T>& host, bool misaligned) const {
    const size_t offset = misaligned ? 1 : 0;
    std::vector<T> padded(offset, from_float<T>(0.0f));
    padded.insert(padded.end(), host.begin(), host.end());
    return Placed{to_device(padded, stream()), offset};
  }

  // The engine format `spec` of x on the device: the CPU reference's values,
  // out of place and in place, and its count of values stored as NaN or inf.
  void expect_engine_matches_cpu(const EngineSpec& spec, const CacheShape& shape, bool misaligned,
                                 const std::vector<T>& x) const;

 private:
  std::unique_ptr<DeviceStream> stream_;
  std::unique_ptr<DeviceBuffer<int>> flag_;
};

class DTypeNames {
 public:
  template <class T>
  static std::string GetName(int) {
    return dtype_name(dtype_of<T>());
  }
};

using StorageTypes = ::testing::Types<float, Half, BFloat16>;
TYPED_TEST_SUITE(CudaKernels, StorageTypes, DTypeNames);

TYPED_TEST(CudaKernels, IntegerFormatsMatchCpu) {
  using T = TypeParam;
  constexpr DType dtype = dtype_of<T>();
  uint32_t seed = 1;
  for (const Case& c : test_cases()) {
    const CacheShape& shape = c.shape;
    const auto x = random_cache<T>(shape, seed++);
    const auto dx = this->place(x, c.misaligned);
    const size_t n = x.size();
    for (const IntSpec& spec : int_specs(c)) {
      SCOPED_TRACE(c.str() + " " + spec_str(spec));
      IntLayout layout;
      try {
        layout = int_layout(spec, shape);
      } catch (const std::invalid_argument&) {
        EXPECT_THROW(cuda::quantize_int(spec, shape, dtype, dx.get(), IntBuffers{}, this->stream()),
                     std::invalid_argument);
        continue;
      }
      const auto words = static_cast<size_t>(layout.code_words);
      const auto groups = static_cast<size_t>(layout.groups.count);
      const auto prefix = static_cast<size_t>(layout.code_elements);

      std::vector<uint32_t> codes(words);
      std::vector<float> scales(groups), zeros(groups);
      cpu::quantize_int(spec, shape, dtype, x.data(), {codes.data(), scales.data(), zeros.data()});

      DeviceBuffer<uint32_t> d_codes(words);
      DeviceBuffer<float> d_scales(groups), d_zeros(groups);
      cuda::quantize_int(spec, shape, dtype, dx.get(),
                         {d_codes.get(), d_scales.get(), d_zeros.get()}, this->stream(),
                         this->flag());
      ASSERT_NO_THROW(cuda::check_flag(this->flag(), this->stream(), "quantize_int"));
      ASSERT_TRUE(identical(d_codes.download(this->stream()), codes, words)) << "codes";
      ASSERT_TRUE(identical(d_scales.download(this->stream()), scales, groups)) << "scales";
      ASSERT_TRUE(identical(d_zeros.download(this->stream()), zeros, groups)) << "zeros";

      // Dequantize the CPU's codes, so a difference points at this kernel alone.
      std::vector<T> y(n);
      cpu::dequantize_int(spec, shape, {codes.data(), scales.data(), zeros.data()}, dtype,
                          y.data());
      const auto d_in_codes = to_device(codes, this->stream());
      const auto d_in_scales = to_device(scales, this->stream());
      const auto d_in_zeros = to_device(zeros, this->stream());
      auto dy = this->place(std::vector<T>(n), c.misaligned);
      cuda::dequantize_int(spec, shape, {d_in_codes.get(), d_in_scales.get(), d_in_zeros.get()},
                           dtype, dy.get(), this->stream());
      ASSERT_TRUE(close(dy.download(this->stream()), y, prefix)) << "dequantize";

      std::vector<T> fake(n);
      cpu::fake_quant_int(spec, shape, dtype, x.data(), fake.data());
      cuda::fake_quant_int(spec, shape, dtype, dx.get(), dy.get(), this->stream());
      ASSERT_TRUE(close(dy.download(this->stream()), fake, n)) << "fake quant";

      auto inplace = this->place(x, c.misaligned);
      cuda::fake_quant_int(spec, shape, dtype, inplace.get(), inplace.get(), this->stream());
      ASSERT_TRUE(close(inplace.download(this->stream()), fake, n)) << "in-place fake quant";
    }
  }
}

TYPED_TEST(CudaKernels, HeadAmaxMatchesCpu) {
  using T = TypeParam;
  constexpr DType dtype = dtype_of<T>();
  uint32_t seed = 100;
  for (const Case& c : test_cases()) {
    SCOPED_TRACE(c.str());
    const CacheShape& shape = c.shape;
    // Two calibration batches accumulated onto a running amax that already
    // dominates some heads.
    std::vector<float> amax(static_cast<size_t>(shape.heads));
    for (size_t h = 0; h < amax.size(); ++h) amax[h] = h % 2 == 0 ? 0.0f : 5.0f;
    DeviceBuffer<float> d_amax = to_device(amax, this->stream());
    for (int batch = 0; batch < 2; ++batch) {
      const auto x = random_cache<T>(shape, seed++);
      cpu::accumulate_head_amax(shape, dtype, x.data(), amax.data());
      const auto dx = this->place(x, c.misaligned);
      cuda::accumulate_head_amax(shape, dtype, dx.get(), d_amax.get(), this->stream(),
                                 this->flag());
      ASSERT_NO_THROW(cuda::check_flag(this->flag(), this->stream(), "accumulate_head_amax"));
    }
    ASSERT_TRUE(identical(d_amax.download(this->stream()), amax, amax.size()));
  }
}

TYPED_TEST(CudaKernels, Fp8MatchesCpu) {
  using T = TypeParam;
  constexpr DType dtype = dtype_of<T>();
  uint32_t seed = 200;
  for (const Case& c : test_cases()) {
    SCOPED_TRACE(c.str());
    const CacheShape& shape = c.shape;
    const auto x = random_cache<T>(shape, seed++);
    const size_t n = x.size();
    const auto scales = head_scales(cpu_amax(shape, x), fp8_head_scale);
    const auto d_scales = to_device(scales, this->stream());
    const auto dx = this->place(x, c.misaligned);

    std::vector<uint8_t> codes(n);
    cpu::quantize_fp8(shape, dtype, x.data(), scales.data(), codes.data());
    DeviceBuffer<uint8_t> d_codes(n + 1);
    uint8_t* d_codes_at = d_codes.get() + (c.misaligned ? 1 : 0);
    cuda::quantize_fp8(shape, dtype, dx.get(), d_scales.get(), d_codes_at, this->stream(),
                       this->flag());
    ASSERT_NO_THROW(cuda::check_flag(this->flag(), this->stream(), "quantize_fp8"));
    auto got_codes = d_codes.download(this->stream());
    if (c.misaligned) got_codes.erase(got_codes.begin());
    ASSERT_TRUE(identical(got_codes, codes, n)) << "codes";

    std::vector<T> y(n);
    cpu::dequantize_fp8(shape, codes.data(), scales.data(), dtype, y.data());
    auto dy = this->place(std::vector<T>(n), c.misaligned);
    cuda::dequantize_fp8(shape, d_codes_at, d_scales.get(), dtype, dy.get(), this->stream());
    ASSERT_TRUE(close(dy.download(this->stream()), y, n)) << "dequantize";

    cpu::fake_quant_fp8(shape, dtype, x.data(), scales.data(), y.data());
    cuda::fake_quant_fp8(shape, dtype, dx.get(), d_scales.get(), dy.get(), this->stream());
    ASSERT_TRUE(close(dy.download(this->stream()), y, n)) << "fake quant";

    auto inplace = this->place(x, c.misaligned);
    cuda::fake_quant_fp8(shape, dtype, inplace.get(), d_scales.get(), inplace.get(),
                         this->stream());
    ASSERT_TRUE(close(inplace.download(this->stream()), y, n)) << "in-place fake quant";
  }
}

template <class T>
std::vector<float> widened(const std::vector<T>& x) {
  std::vector<float> out;
  for (const T& v : x) out.push_back(to_float(v));
  return out;
}

// KVTuner's quantizer: bit-identical to the CPU reference (both round each
// op to bf16 through format_math.h), over every shape whose element count
// its groups divide.
TYPED_TEST(CudaKernels, KvtunerQuantizerMatchesCpu) {
  using T = TypeParam;
  constexpr DType dtype = dtype_of<T>();
  uint32_t seed = 700;
  for (const Case& c : test_cases()) {
    const CacheShape& shape = c.shape;
    for (const KvtunerAxis axis : {KvtunerAxis::Token, KvtunerAxis::Channel}) {
      for (const int group : {0, 32}) {
        for (const int bits : {2, 4, 8}) {
          const KvtunerSpec spec{axis, bits, group};
          if (group == 0 && axis == KvtunerAxis::Channel) continue;
          if (shape.elements() % (group == 0 ? shape.head_dim : group) != 0) continue;
          SCOPED_TRACE(c.str() + " axis " + std::to_string(static_cast<int>(axis)) + " group " +
                       std::to_string(group) + " bits " + std::to_string(bits));
          const auto x = random_cache<T>(shape, seed++);
          const size_t n = x.size();
          std::vector<T> y(n);
          cpu::fake_quant_kvtuner(spec, shape, dtype, x.data(), y.data());
          const auto dx = this->place(x, c.misaligned);
          auto dy = this->place(std::vector<T>(n), c.misaligned);
          cuda::fake_quant_kvtuner(spec, shape, dtype, dx.get(), dy.get(), this->stream(),
                                   this->flag());
          ASSERT_NO_THROW(cuda::check_flag(this->flag(), this->stream(), "fake_quant_kvtuner"));
          ASSERT_TRUE(identical(widened(dy.download(this->stream())), widened(y), n))
              << "fake quant";
          auto inplace = this->place(x, c.misaligned);
          cuda::fake_quant_kvtuner(spec, shape, dtype, inplace.get(), inplace.get(),
                                   this->stream());
          ASSERT_TRUE(identical(widened(inplace.download(this->stream())), widened(y), n))
              << "in place";
        }
      }
    }
  }
}

// Equal values, NaN equal to NaN (the cast formats store NaN on purpose).
::testing::AssertionResult same_values(const std::vector<float>& gpu,
                                       const std::vector<float>& cpu) {
  for (size_t i = 0; i < cpu.size(); ++i) {
    if (!(gpu[i] == cpu[i]) && !(std::isnan(gpu[i]) && std::isnan(cpu[i]))) {
      return ::testing::AssertionFailure() << "first difference at " << i << " of " << cpu.size()
                                           << ": gpu " << gpu[i] << ", cpu " << cpu[i];
    }
  }
  return ::testing::AssertionSuccess();
}

template <class T>
void CudaKernels<T>::expect_engine_matches_cpu(const EngineSpec& spec, const CacheShape& shape,
                                               bool misaligned, const std::vector<T>& x) const {
  constexpr DType dtype = dtype_of<T>();
  std::vector<T> y(x.size());
  const int64_t overflow = cpu::fake_quant_engine(spec, shape, dtype, x.data(), y.data());
  DeviceBuffer<unsigned long long> counts(2);
  counts.upload({0, 0}, stream());
  const auto dx = place(x, misaligned);
  auto dy = place(std::vector<T>(x.size()), misaligned);
  cuda::fake_quant_engine(spec, shape, dtype, dx.get(), dy.get(), stream(), counts.get());
  const auto n = counts.download(stream());
  EXPECT_EQ(n[0], 0u) << "non-finite inputs";
  ASSERT_EQ(n[1], static_cast<unsigned long long>(overflow)) << "values stored as NaN/inf";
  ASSERT_TRUE(same_values(widened(dy.download(stream())), widened(y)));
  auto inplace = place(x, misaligned);
  cuda::fake_quant_engine(spec, shape, dtype, inplace.get(), inplace.get(), stream());
  ASSERT_TRUE(same_values(widened(inplace.download(stream())), widened(y))) << "in place";
}

// The released engines' formats: bit-identical to the CPU reference, with the
// same count of values the engine stores as NaN or inf, on every shape the
// format accepts, at scales that make the cast formats overflow.
TYPED_TEST(CudaKernels, EngineFormatsMatchCpu) {
  using T = TypeParam;
  const EngineArith ariths[] = {EngineArith::E4m3Scaled,      EngineArith::E5m2Scaled,
                                EngineArith::E4m3Cast,        EngineArith::E5m2Cast,
                                EngineArith::Fp8PerTokenHead, EngineArith::Int8PerTokenHead,
                                EngineArith::Nvfp4Layer,      EngineArith::Fp4Pow2};
  uint32_t seed = 900;
  for (const Case& c : test_cases()) {
    for (const EngineArith arith : ariths) {
      for (const float scale : {1.0f, 0.37f, 0.004f}) {
        const EngineSpec spec{arith, scale};
        try {
          validate_engine(spec, c.shape);
        } catch (const std::invalid_argument&) {
          continue;
        }
        SCOPED_TRACE(c.str() + " arith " + std::to_string(static_cast<int>(arith)) + " scale " +
                     std::to_string(scale));
        const auto x = random_cache<T>(c.shape, seed++);
        this->expect_engine_matches_cpu(spec, c.shape, c.misaligned, x);
      }
    }
  }
}

// llama.cpp's types (ggml blocks, fp16, bf16, f32), with and without the
// Hadamard rotation of every chunk size the kernel sizes its scratch for:
// bit-identical to the CPU reference, the same count of values stored as
// NaN or inf; a unit holding non-finite input comes back NaN and is counted.
TYPED_TEST(CudaKernels, GgmlFormatsMatchCpu) {
  using T = TypeParam;
  constexpr DType dtype = dtype_of<T>();
  const EngineArith ariths[] = {
      EngineArith::GgmlQ8_0, EngineArith::GgmlQ4_0, EngineArith::GgmlQ4_1,
      EngineArith::GgmlQ5_0, EngineArith::GgmlQ5_1, EngineArith::GgmlIq4Nl,
      EngineArith::GgmlF16,  EngineArith::GgmlBf16, EngineArith::GgmlF32};
  std::vector<Case> cases = test_cases();
  cases.push_back({{9, 2, 256}, 32, 32, true});
  cases.push_back({{5, 1, 512}, 32, 32, false});
  cases.push_back({{3, 2, 1024}, 32, 32, true});
  cases.push_back({{4, 3, 576}, 32, 32, false});  // keys rotate in chunks of 64
  uint32_t seed = 1900;
  std::set<EngineArith> checked;  // every type meets a shape it runs on
  for (const Case& c : cases) {
    const int64_t hd = c.shape.head_dim;
    for (const EngineArith arith : ariths) {
      for (const int chunk :
           std::set<int>{0, 4, 16, 64, 128, 256, 512, 1024, ggml_rotation_chunk(Role::Key, hd)}) {
        EngineSpec spec{arith, 1.0f};
        spec.rotate_chunk = chunk;
        try {
          validate_engine(spec, c.shape);
        } catch (const std::invalid_argument&) {
          continue;
        }
        SCOPED_TRACE(c.str() + " arith " + std::to_string(static_cast<int>(arith)) + " chunk " +
                     std::to_string(chunk));
        auto x = random_cache<T>(c.shape, seed++);
        if constexpr (!std::is_same_v<T, Half>) {
          if (seed % 3 == 0) x[1] = from_float<T>(1e7f);  // an fp16 overflow (scale or value)
        }
        ASSERT_NO_FATAL_FAILURE(this->expect_engine_matches_cpu(spec, c.shape, c.misaligned, x));
        checked.insert(arith);
      }
    }
  }
  EXPECT_EQ(checked.size(), std::size(ariths));
  // Non-finite input: its unit (here one 64-chunk of two blocks) comes back NaN, counted once.
  const CacheShape shape{4, 2, 64};
  auto x = random_cache<T>(shape, 5);
  x[70] = from_float<T>(std::numeric_limits<float>::infinity());
  EngineSpec spec{EngineArith::GgmlQ4_0, 1.0f};
  spec.rotate_chunk = 64;
  DeviceBuffer<unsigned long long> counts(2);
  counts.upload({0, 0}, this->stream());
  const auto dx = to_device(x, this->stream());
  DeviceBuffer<T> dy(x.size());
  cuda::fake_quant_engine(spec, shape, dtype, dx.get(), dy.get(), this->stream(), counts.get());
  EXPECT_EQ(counts.download(this->stream())[0], 1u);
  const auto y = widened(dy.download(this->stream()));
  for (size_t i = 64; i < 128; ++i) EXPECT_TRUE(std::isnan(y[i])) << i;
  EXPECT_FALSE(std::isnan(y[0]));
  EXPECT_THROW(cuda::fake_quant_engine({EngineArith::GgmlQ8_0, 1.0f}, {2, 1, 16}, dtype, dx.get(),
                                       dy.get(), this->stream()),
               std::invalid_argument);  // 16 values a token: blocks of 32 would straddle tokens
}

TYPED_TEST(CudaKernels, Nvfp4MatchesCpu) {
  using T = TypeParam;
  constexpr DType dtype = dtype_of<T>();
  uint32_t seed = 300;
  for (const Case& c : test_cases()) {
    SCOPED_TRACE(c.str());
    const CacheShape& shape = c.shape;
    const int block = nvfp4_block(shape.head_dim);
    const auto x = random_cache<T>(shape, seed++);
    const size_t n = x.size();
    const size_t words = (n + 7) / 8;
    const size_t blocks = n / static_cast<size_t>(block);
    const auto scales = head_scales(cpu_amax(shape, x), nvfp4_head_scale);
    const auto d_scales = to_device(scales, this->stream());
    const auto dx = this->place(x, c.misaligned);

    std::vector<uint32_t> codes(words);
    std::vector<uint8_t> block_scales(blocks);
    cpu::quantize_nvfp4(shape, dtype, x.data(), scales.data(), {codes.data(), block_scales.data()});
    DeviceBuffer<uint32_t> d_codes(words);
    DeviceBuffer<uint8_t> d_block_scales(blocks);
    cuda::quantize_nvfp4(shape, dtype, dx.get(), d_scales.get(),
                         {d_codes.get(), d_block_scales.get()}, this->stream(), this->flag());
    ASSERT_NO_THROW(cuda::check_flag(this->flag(), this->stream(), "quantize_nvfp4"));
    ASSERT_TRUE(identical(d_codes.download(this->stream()), codes, words)) << "codes";
    ASSERT_TRUE(identical(d_block_scales.download(this->stream()), block_scales, blocks))
        << "block scales";

    std::vector<T> y(n);
    cpu::dequantize_nvfp4(shape, {codes.data(), block_scales.data()}, scales.data(), dtype,
                          y.data());
    const auto d_in_codes = to_device(codes, this->stream());
    const auto d_in_block_scales = to_device(block_scales, this->stream());
    auto dy = this->place(std::vector<T>(n), c.misaligned);
    cuda::dequantize_nvfp4(shape, {d_in_codes.get(), d_in_block_scales.get()}, d_scales.get(),
                           dtype, dy.get(), this->stream());
    ASSERT_TRUE(close(dy.download(this->stream()), y, n)) << "dequantize";

    cpu::fake_quant_nvfp4(shape, dtype, x.data(), scales.data(), y.data());
    cuda::fake_quant_nvfp4(shape, dtype, dx.get(), d_scales.get(), dy.get(), this->stream());
    ASSERT_TRUE(close(dy.download(this->stream()), y, n)) << "fake quant";

    auto inplace = this->place(x, c.misaligned);
    cuda::fake_quant_nvfp4(shape, dtype, inplace.get(), d_scales.get(), inplace.get(),
                           this->stream());
    ASSERT_TRUE(close(inplace.download(this->stream()), y, n)) << "in-place fake quant";
  }
}

// NaN and Inf cannot throw from a kernel: each call that reads raw input must
// raise the flag, check_flag must throw once and leave the flag cleared.
TYPED_TEST(CudaKernels, NonfiniteInputRaisesFlag) {
  using T = TypeParam;
  constexpr DType dtype = dtype_of<T>();
  const CacheShape shape{64, 2, 32};
  const size_t n = static_cast<size_t>(shape.elements());
  IntSpec kivi_key;
  kivi_key.grouping = Grouping::Kivi;
  kivi_key.role = Role::Key;
  const std::vector<float> ones(static_cast<size_t>(shape.heads), 1.0f);
  const auto d_scales = to_device(ones, this->stream());
  const IntLayout layout = int_layout(kivi_key, shape);
  DeviceBuffer<uint32_t> codes(static_cast<size_t>(layout.code_words));
  DeviceBuffer<float> scales(static_cast<size_t>(layout.groups.count));
  DeviceBuffer<float> zeros(static_cast<size_t>(layout.groups.count));
  DeviceBuffer<uint8_t> fp8_codes(n);
  DeviceBuffer<uint32_t> nvfp4_codes((n + 7) / 8);
  DeviceBuffer<uint8_t> block_scales(n / 16);
  DeviceBuffer<T> y(n);
  const auto amax = to_device(std::vector<float>(static_cast<size_t>(shape.heads)), this->stream());
  const IntBuffers int_out{codes.get(), scales.get(), zeros.get()};

  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    auto x = random_cache<T>(shape, 7);
    x[100] = from_float<T>(bad);  // token 1, head 1: inside every quantized prefix
    const auto dx = to_device(x, this->stream());
    const T* p = dx.get();
    cudaStream_t s = this->stream();
    int* flag = this->flag();
    const auto expect_raised = [&](const char* what) {
      SCOPED_TRACE(std::string(what) + " with " + std::to_string(bad));
      EXPECT_THROW(cuda::check_flag(flag, s, what), std::invalid_argument);
      EXPECT_NO_THROW(cuda::check_flag(flag, s, what)) << "flag not cleared";
    };
    cuda::quantize_int({}, shape, dtype, p, int_out, s, flag);
    expect_raised("quantize_int per-token");
    cuda::quantize_int(kivi_key, shape, dtype, p, int_out, s, flag);
    expect_raised("quantize_int kivi key");
    cuda::fake_quant_int({}, shape, dtype, p, y.get(), s, flag);
    expect_raised("fake_quant_int");
    cuda::accumulate_head_amax(shape, dtype, p, amax.get(), s, flag);
    expect_raised("accumulate_head_amax");
    cuda::quantize_fp8(shape, dtype, p, d_scales.get(), fp8_codes.get(), s, flag);
    expect_raised("quantize_fp8");
    cuda::fake_quant_fp8(shape, dtype, p, d_scales.get(), y.get(), s, flag);
    expect_raised("fake_quant_fp8");
    cuda::quantize_nvfp4(shape, dtype, p, d_scales.get(), {nvfp4_codes.get(), block_scales.get()},
                         s, flag);
    expect_raised("quantize_nvfp4");
    cuda::fake_quant_nvfp4(shape, dtype, p, d_scales.get(), y.get(), s, flag);
    expect_raised("fake_quant_nvfp4");
  }
  const auto all_nan = to_device(
      std::vector<T>(n, from_float<T>(std::numeric_limits<float>::quiet_NaN())), this->stream());
  try {
    cuda::quantize_int({}, shape, dtype, all_nan.get(), int_out, this->stream(), this->flag());
    cuda::check_flag(this->flag(), this->stream(), "calibration batch 3");
    FAIL() << "check_flag did not throw";
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(), "calibration batch 3: input contains NaN or Inf");
  }
}

// Invalid specs and shapes are rejected on the host, before anything is
// enqueued, with the same exception type as the CPU reference.
TYPED_TEST(CudaKernels, RejectsInvalidArguments) {
  using T = TypeParam;
  constexpr DType dtype = dtype_of<T>();
  const CacheShape shape{32, 1, 24};
  DeviceBuffer<T> x(static_cast<size_t>(shape.elements()));
  DeviceBuffer<float> scales(1);
  DeviceBuffer<uint32_t> words(64);
  DeviceBuffer<uint8_t> bytes(64);
  cudaStream_t s = this->stream();
  IntSpec five_bits;
  five_bits.bits = 5;
  EXPECT_THROW(cuda::quantize_int(five_bits, shape, dtype, x.get(), {}, s), std::invalid_argument);
  IntSpec bad_residual;
  bad_residual.grouping = Grouping::Kivi;
  bad_residual.residual = 20;
  EXPECT_THROW(cuda::fake_quant_int(bad_residual, shape, dtype, x.get(), x.get(), s),
               std::invalid_argument);
  EXPECT_THROW(cuda::quantize_int({}, shape, dtype, nullptr, {}, s), std::invalid_argument);
  EXPECT_THROW(
      cuda::quantize_nvfp4(shape, dtype, x.get(), scales.get(), {words.get(), bytes.get()}, s),
      std::invalid_argument);  // head_dim 24 is not a multiple of 16
  EXPECT_THROW(cuda::quantize_fp8({0, 1, 8}, dtype, x.get(), scales.get(), bytes.get(), s),
               std::invalid_argument);
  EXPECT_THROW(cuda::accumulate_head_amax({4, 0, 8}, dtype, x.get(), scales.get(), s),
               std::invalid_argument);
}

TEST(CudaBuild, KernelsAreCompiled) {
  EXPECT_TRUE(cuda_compiled());
}

}  // namespace
}  // namespace kvtune::kernels
