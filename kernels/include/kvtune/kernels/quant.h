// Quantize, dequantize and fake-quantize a KV cache tensor.
//
// A tensor is one layer's keys or values, laid out [tokens, heads, head_dim]
// contiguously, in fp32, fp16 or bf16. The API works on raw pointers: the
// functions in `cpu::` take host pointers and are the reference semantics; the
// functions in `cuda::` take device pointers and an explicit stream and give
// the same codes and values. Shapes and options are validated up front and a
// violation throws std::invalid_argument naming the offending value.
//
// Packed codes are stored in the element order of the quantized prefix
// ([quantized_tokens, heads, head_dim] flattened). Widths 1, 2, 4 and 8 pack
// 32/bits codes per 32-bit word, code j of a word at bits [bits*j,
// bits*j+bits) (KIVI's pack_tensor order); 3-bit codes take one byte each.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "kvtune/kernels/format_math.h"

struct CUstream_st;
using cudaStream_t = CUstream_st*;

namespace kvtune::kernels {

enum class DType : uint8_t { F32, F16, BF16 };
size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);

enum class Grouping : uint8_t {
  PerToken,  // KVTuner per-token-asym: one group per (token, head) vector
  Kivi       // KIVI: keys per channel over G tokens, values per token over G channels
};
enum class Role : uint8_t { Key, Value };

struct CacheShape {
  int64_t tokens = 0;
  int64_t heads = 0;
  int64_t head_dim = 0;
  int64_t elements() const { return tokens * heads * head_dim; }
  std::string str() const;  // "[tokens=.., heads=.., head_dim=..]"
};

// Throws std::invalid_argument, prefixed with `what`, unless the shape has at
// least one token, head and channel.
void validate_shape(const CacheShape& shape, const char* what);

// How one integer-quantized tensor is grouped and coded.
struct IntSpec {
  Grouping grouping = Grouping::PerToken;
  Role role = Role::Key;
  int bits = 4;  // 1, 2, 3, 4 or 8
  ZeroPoint zero_point = ZeroPoint::Int;
  int group_size = 32;  // kivi: G
  int residual = 32;    // kivi: R, a positive multiple of G
};

// The groups of the quantized prefix. Contiguous groups (token_group == 0)
// are `size` consecutive channels; channel groups are one channel over
// `token_group` consecutive tokens (kivi keys), `stride` elements apart.
struct GroupGeometry {
  int64_t count = 0;
  int64_t size = 0;
  int64_t stride = 1;
  int64_t row = 0;  // heads * head_dim
  int64_t token_group = 0;

  KVT_HD int64_t group_of(int64_t element) const {
    if (token_group == 0) return element / size;
    return (element / row / token_group) * row + element % row;
  }
  KVT_HD int64_t first_element(int64_t group) const {
    if (token_group == 0) return group * size;
    return (group / row) * token_group * row + group % row;
  }
};

// What quantizing a tensor of a given shape with a given spec produces.
struct IntLayout {
  int64_t quantized_tokens = 0;  // tokens [0, quantized_tokens) are quantized
  int64_t residual_tokens = 0;   // the rest stays full precision
  GroupGeometry groups;
  int64_t code_elements = 0;  // quantized_tokens * heads * head_dim
  int codes_per_word = 0;     // 32 / bits, or 4 one-byte codes for 3 bits
  int64_t code_words = 0;     // 32-bit words of packed codes
};

// Validates spec and shape (throws std::invalid_argument) and derives the layout.
IntLayout int_layout(const IntSpec& spec, const CacheShape& shape);

// Packed code of element e (0-based in the quantized prefix).
KVT_HD uint32_t unpack_code(const uint32_t* words, int64_t e, int bits, int codes_per_word) {
  const int width = bits == 3 ? 8 : bits;
  const int slot = static_cast<int>(e % codes_per_word);
  return (words[e / codes_per_word] >> (width * slot)) & ((1u << bits) - 1u);
}

// Storage cost in bits per element of a deployed cache of `shape` tokens: the
// codes at their nominal width plus an fp16 scale and fp16 zero point per group
// (as KIVI stores them), with residual-window tokens at 16 bits.
double int_storage_bits(const IntSpec& spec, const CacheShape& shape);

struct IntBuffers {
  uint32_t* codes = nullptr;  // layout.code_words
  float* scales = nullptr;    // layout.groups.count
  float* zeros = nullptr;     // layout.groups.count
};
struct ConstIntBuffers {
  const uint32_t* codes = nullptr;
  const float* scales = nullptr;
  const float* zeros = nullptr;
};

// fp8 / nvfp4 per-head static scales from the calibration amax of that head.
// A head whose amax is 0 gets scale 1 (it quantizes to zeros either way).
float fp8_head_scale(float amax);    // amax / 448
float nvfp4_head_scale(float amax);  // amax / (6 * 448): block scales then fit E4M3

// NVFP4 block length along head_dim: 16, or head_dim itself when it is below
// 16. Throws when head_dim > 16 is not a multiple of 16.
int nvfp4_block(int64_t head_dim);

// Storage cost in bits per element including the per-head fp32 scale over
// `shape.tokens` tokens (and nvfp4's E4M3 block scales).
double fp8_storage_bits(const CacheShape& shape);
double nvfp4_storage_bits(const CacheShape& shape);

// KVTuner's own cache (cmd2001/KVTuner, FlexibleVanillaQuantizedCache with
// the vanilla quantizer). It quantizes a sequence's whole [heads, tokens,
// head_dim] tensor (HF layout) at once, in groups of `group_size` consecutive
// elements of its flattened order: (head, token, channel) for per-token
// (axis 0), (head, channel, token) for per-channel (axis 1), so per-channel
// groups straddle channels (and heads) whenever the token count is not a
// multiple of the group. Arithmetic in bf16 (format_math.h).
enum class KvtunerAxis : uint8_t { Token, Channel };
struct KvtunerSpec {
  KvtunerAxis axis = KvtunerAxis::Token;
  int bits = 4;        // 2, 4 or 8
  int group_size = 0;  // elements per group; 0: head_dim (KVTuner's -1), per-token only
};

// Validates spec and shape (throws std::invalid_argument naming the value: a
// tensor KVTuner could not reshape into its groups is refused) and returns
// the group size in elements.
int64_t kvtuner_group(const KvtunerSpec& spec, const CacheShape& shape);

// The offset in the [tokens, heads, head_dim] layout of element f of
// KVTuner's flattened order.
KVT_HD int64_t kvtuner_offset(int64_t f, int64_t tokens, int64_t heads, int64_t head_dim,
                              KvtunerAxis axis) {
  const int64_t per_head = tokens * head_dim;
  const int64_t h = f / per_head, r = f % per_head;
  const int64_t t = axis == KvtunerAxis::Token ? r / head_dim : r % tokens;
  const int64_t d = axis == KvtunerAxis::Token ? r % head_dim : r / tokens;
  return (t * heads + h) * head_dim + d;
}

// Storage bits per element of a KVTuner cache of shape.tokens tokens decoded
// from its first token, with flushes every max(residual, 2) steps: codes at
// `bits` plus a bf16 scale and zero point per group, the unflushed tokens at 16.
double kvtuner_storage_bits(const KvtunerSpec& spec, const CacheShape& shape, int residual);

struct Nvfp4Buffers {
  uint32_t* codes = nullptr;        // elements / 8 words (rounded up), 4-bit codes
  uint8_t* block_scales = nullptr;  // elements / block, E4M3
};
struct ConstNvfp4Buffers {
  const uint32_t* codes = nullptr;
  const uint8_t* block_scales = nullptr;
};

namespace cpu {

// Worker threads of the CPU reference (default: hardware concurrency).
void set_num_threads(int threads);
int num_threads();
// The widest vector instructions the CPU reference uses on this machine:
// "avx512" (iq4_nl), "avx2" or "baseline"; KVTUNE_CPU_NO_AVX512=1 stops at AVX2.
const char* vector_isa();

// Integer formats. `fake_quant_int` writes dequant(quant(x)) for the
// quantized prefix and copies the residual tokens; y may alias x.
// `dequantize_int` writes the quantized prefix of y only.
void quantize_int(const IntSpec& spec, const CacheShape& shape, DType dtype, const void* x,
                  IntBuffers out);
void dequantize_int(const IntSpec& spec, const CacheShape& shape, ConstIntBuffers in, DType dtype,
                    void* y);
void fake_quant_int(const IntSpec& spec, const CacheShape& shape, DType dtype, const void* x,
                    void* y);

// amax[h] = max(amax[h], max |x| over head h): accumulates over calibration batches.
void accumulate_head_amax(const CacheShape& shape, DType dtype, const void* x, float* amax);

// KVTuner's quantizer over every token of x: y = dequantize(quantize(x)),
// with x rounded to bf16 first (KVTuner's model runs in bf16); y may alias x.
void fake_quant_kvtuner(const KvtunerSpec& spec, const CacheShape& shape, DType dtype,
                        const void* x, void* y);

// FP8 E4M3 with one static scale per head; one byte code per element.
void quantize_fp8(const CacheShape& shape, DType dtype, const void* x, const float* head_scales,
                  uint8_t* codes);
void dequantize_fp8(const CacheShape& shape, const uint8_t* codes, const float* head_scales,
                    DType dtype, void* y);
void fake_quant_fp8(const CacheShape& shape, DType dtype, const void* x, const float* head_scales,
                    void* y);

// NVFP4 with per-head fp32 scales (nvfp4_head_scale) and E4M3 block scales.
void quantize_nvfp4(const CacheShape& shape, DType dtype, const void* x, const float* head_scales,
                    Nvfp4Buffers out);
void dequantize_nvfp4(const CacheShape& shape, ConstNvfp4Buffers in, const float* head_scales,
                      DType dtype, void* y);
void fake_quant_nvfp4(const CacheShape& shape, DType dtype, const void* x, const float* head_scales,
                      void* y);

}  // namespace cpu

// Whether this build has the CUDA kernels, and whether a device is usable now.
bool cuda_compiled();
bool cuda_device_available();

namespace cuda {

// The same operations on device pointers, enqueued on `stream`. NaN/Inf input
// cannot throw from the device: when `nonfinite_flag` (a device int, may be
// null) is given, the kernels set it to 1 if they saw any; check_flag() then
// synchronizes the stream and throws std::invalid_argument naming `what`.
void quantize_int(const IntSpec& spec, const CacheShape& shape, DType dtype, const void* x,
                  IntBuffers out, cudaStream_t stream, int* nonfinite_flag = nullptr);
void dequantize_int(const IntSpec& spec, const CacheShape& shape, ConstIntBuffers in, DType dtype,
                    void* y, cudaStream_t stream);
void fake_quant_int(const IntSpec& spec, const CacheShape& shape, DType dtype, const void* x,
                    void* y, cudaStream_t stream, int* nonfinite_flag = nullptr);

void accumulate_head_amax(const CacheShape& shape, DType dtype, const void* x, float* amax,
                          cudaStream_t stream, int* nonfinite_flag = nullptr);

void fake_quant_kvtuner(const KvtunerSpec& spec, const CacheShape& shape, DType dtype,
                        const void* x, void* y, cudaStream_t stream, int* nonfinite_flag = nullptr);

void quantize_fp8(const CacheShape& shape, DType dtype, const void* x, const float* head_scales,
                  uint8_t* codes, cudaStream_t stream, int* nonfinite_flag = nullptr);
void dequantize_fp8(const CacheShape& shape, const uint8_t* codes, const float* head_scales,
                    DType dtype, void* y, cudaStream_t stream);
void fake_quant_fp8(const CacheShape& shape, DType dtype, const void* x, const float* head_scales,
                    void* y, cudaStream_t stream, int* nonfinite_flag = nullptr);

void quantize_nvfp4(const CacheShape& shape, DType dtype, const void* x, const float* head_scales,
                    Nvfp4Buffers out, cudaStream_t stream, int* nonfinite_flag = nullptr);
void dequantize_nvfp4(const CacheShape& shape, ConstNvfp4Buffers in, const float* head_scales,
                      DType dtype, void* y, cudaStream_t stream);
void fake_quant_nvfp4(const CacheShape& shape, DType dtype, const void* x, const float* head_scales,
                      void* y, cudaStream_t stream, int* nonfinite_flag = nullptr);

void check_flag(const int* nonfinite_flag, cudaStream_t stream, const char* what);

}  // namespace cuda
}  // namespace kvtune::kernels
