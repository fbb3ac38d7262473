// Validation, layouts and storage costs shared by the CPU and CUDA paths.
#include <sstream>
#include <stdexcept>

#include "kvtune/kernels/quant.h"

namespace kvtune::kernels {
namespace {

[[noreturn]] void fail(const std::string& message) {
  throw std::invalid_argument(message);
}

// Channels per value group under kivi: G, or head_dim when head_dim < G.
int64_t kivi_value_group(const IntSpec& spec, const CacheShape& shape) {
  return spec.group_size < shape.head_dim ? spec.group_size : shape.head_dim;
}

constexpr double kMetadataBits = 16.0;  // fp16 scale and zero point per group
constexpr double kFullPrecisionBits = 16.0;

}  // namespace

void validate_shape(const CacheShape& shape, const char* what) {
  if (shape.tokens <= 0 || shape.heads <= 0 || shape.head_dim <= 0) {
    fail(std::string(what) + ": KV tensor shape " + shape.str() +
         " must have at least one token, head and channel");
  }
}

size_t dtype_size(DType dtype) {
  return dtype == DType::F32 ? 4 : 2;
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F32:
      return "float32";
    case DType::F16:
      return "float16";
    case DType::BF16:
      return "bfloat16";
  }
  return "?";
}

std::string CacheShape::str() const {
  std::ostringstream out;
  out << "[tokens=" << tokens << ", heads=" << heads << ", head_dim=" << head_dim << "]";
  return out.str();
}

IntLayout int_layout(const IntSpec& spec, const CacheShape& shape) {
  validate_shape(shape, "KV format");
  if (spec.bits != 1 && spec.bits != 2 && spec.bits != 3 && spec.bits != 4 && spec.bits != 8) {
    fail("bits " + std::to_string(spec.bits) + " is not supported (use 1, 2, 3, 4 or 8)");
  }
  IntLayout layout;
  const int64_t row = shape.heads * shape.head_dim;
  layout.groups.row = row;
  if (spec.grouping == Grouping::PerToken) {
    layout.quantized_tokens = shape.tokens;
    layout.groups.size = shape.head_dim;
  } else {
    if (spec.group_size <= 0) {
      fail("kivi group_size " + std::to_string(spec.group_size) + " must be positive");
    }
    if (spec.residual <= 0 || spec.residual % spec.group_size != 0) {
      fail("kivi residual " + std::to_string(spec.residual) +
           " must be a positive multiple of group_size " + std::to_string(spec.group_size));
    }
    layout.quantized_tokens = (shape.tokens / spec.residual) * spec.residual;
    if (spec.role == Role::Key) {
      layout.groups.size = spec.group_size;
      layout.groups.stride = row;
      layout.groups.token_group = spec.group_size;
    } else {
      const int64_t g = kivi_value_group(spec, shape);
      if (shape.head_dim % g != 0) {
        fail("kivi value group_size " + std::to_string(g) + " does not divide head_dim " +
             std::to_string(shape.head_dim));
      }
      layout.groups.size = g;
    }
  }
  layout.residual_tokens = shape.tokens - layout.quantized_tokens;
  layout.code_elements = layout.quantized_tokens * row;
  layout.groups.count = layout.code_elements / layout.groups.size;
  layout.codes_per_word = spec.bits == 3 ? 4 : 32 / spec.bits;
  layout.code_words = (layout.code_elements + layout.codes_per_word - 1) / layout.codes_per_word;
  return layout;
}

double int_storage_bits(const IntSpec& spec, const CacheShape& shape) {
  const IntLayout layout = int_layout(spec, shape);
  const double quantized = static_cast<double>(layout.code_elements);
  const double total = static_cast<double>(shape.elements());
  const double bits = quantized * spec.bits +
                      static_cast<double>(layout.groups.count) * 2.0 * kMetadataBits +
                      (total - quantized) * kFullPrecisionBits;
  return bits / total;
}

int64_t kvtuner_group(const KvtunerSpec& spec, const CacheShape& shape) {
  validate_shape(shape, "KVTuner quantizer");
  if (spec.bits != 2 && spec.bits != 4 && spec.bits != 8) {
    fail("KVTuner's quantizer takes 2, 4 or 8 bits, not " + std::to_string(spec.bits));
  }
  if (spec.group_size < 0) {
    fail("KVTuner group size " + std::to_string(spec.group_size) + " must be positive or 0");
  }
  if (spec.group_size == 0 && spec.axis == KvtunerAxis::Channel) {
    fail("KVTuner's per-channel quantization needs a group size (q_group_size -1 is per-token)");
  }
  const int64_t group = spec.group_size == 0 ? shape.head_dim : spec.group_size;
  if (shape.elements() % group != 0) {
    fail("KVTuner groups " + std::to_string(group) + " consecutive elements, but a KV tensor " +
         shape.str() + " has " + std::to_string(shape.elements()) +
         " elements (KVTuner's reshape(-1, " + std::to_string(group) + ") fails there)");
  }
  return group;
}

double kvtuner_storage_bits(const KvtunerSpec& spec, const CacheShape& shape, int residual) {
  // Over the whole cache the group count is elements / group (checked per quantization).
  const int64_t group =
      kvtuner_group(spec, {1, 1, spec.group_size == 0 ? shape.head_dim : spec.group_size});
  validate_shape(shape, "KV format");
  const int64_t cycle = residual > 2 ? residual : 2;
  const int64_t flushed = 1 + cycle * ((shape.tokens - 1) / cycle);
  const double tokens = static_cast<double>(shape.tokens);
  const double code_bits = spec.bits + 2.0 * kMetadataBits / static_cast<double>(group);
  return (static_cast<double>(flushed) * code_bits +
          (tokens - static_cast<double>(flushed)) * kFullPrecisionBits) /
         tokens;
}

float fp8_head_scale(float amax) {
  return amax > 0.0f ? amax / kE4M3Max : 1.0f;
}

float nvfp4_head_scale(float amax) {
  return amax > 0.0f ? amax / (kE2M1Max * kE4M3Max) : 1.0f;
}

int nvfp4_block(int64_t head_dim) {
  if (head_dim <= 0) fail("head_dim " + std::to_string(head_dim) + " must be positive");
  if (head_dim < 16) return static_cast<int>(head_dim);
  if (head_dim % 16 != 0) {
    fail("nvfp4 needs head_dim to be a multiple of its 16-element block, got " +
         std::to_string(head_dim));
  }
  return 16;
}

double fp8_storage_bits(const CacheShape& shape) {
  validate_shape(shape, "KV format");
  const double per_head = static_cast<double>(shape.tokens * shape.head_dim);
  return 8.0 + 32.0 / per_head;
}

double nvfp4_storage_bits(const CacheShape& shape) {
  validate_shape(shape, "KV format");
  const double per_head = static_cast<double>(shape.tokens * shape.head_dim);
  return 4.0 + 8.0 / nvfp4_block(shape.head_dim) + 32.0 / per_head;
}

}  // namespace kvtune::kernels
