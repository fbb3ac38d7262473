// `kvtune fake-quant`: the values the emulated cache holds for one layer's
// keys or values under one format, from a raw float32 tensor, for debugging a
// format against an engine or a hand computation.
#include <algorithm>
#include <boost/program_options.hpp>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "commands.h"
#include "kvtune/common/engine_dtype.h"
#include "kvtune/common/error.h"
#include "kvtune/common/int_list.h"
#include "kvtune/common/precision.h"
#include "kvtune/common/scheme.h"
#include "kvtune/kernels/engine.h"
#include "kvtune/kernels/quant.h"

namespace kvtune::cli {
namespace {

namespace po = boost::program_options;
namespace kk = kvtune::kernels;

kk::CacheShape parse_shape(const std::string& text) {
  const std::vector<int64_t> dims = parse_int_list(text, 1, [&text](const std::string& part) {
    return "--shape '" + text + "': '" + part + "' is not a positive integer (give T,H,D)";
  });
  if (dims.size() != 3) {
    throw Error("--shape '" + text + "' must be T,H,D (tokens, heads, head_dim)");
  }
  return {dims[0], dims[1], dims[2]};
}

std::vector<float> read_floats(const std::string& path, const kk::CacheShape& shape) {
  std::error_code ec;
  const auto bytes = std::filesystem::file_size(path, ec);
  if (ec) throw Error("--in " + path + ": " + ec.message());
  const auto want = static_cast<uintmax_t>(shape.elements()) * sizeof(float);
  if (bytes != want) {
    throw Error("--in " + path + " has " + std::to_string(bytes) + " bytes; a float32 tensor " +
                shape.str() + " has " + std::to_string(want));
  }
  std::vector<float> x(static_cast<size_t>(shape.elements()));
  std::ifstream in(path, std::ios::binary);
  if (!in.read(reinterpret_cast<char*>(x.data()), static_cast<std::streamsize>(want))) {
    throw Error("--in " + path + ": read failed");
  }
  return x;
}

// Each head's max |x| over this tensor: the calibration kvtune does, on this tensor.
std::vector<float> head_amax(const kk::CacheShape& shape, const std::vector<float>& x) {
  std::vector<float> amax(static_cast<size_t>(shape.heads), 0.0f);
  kk::cpu::accumulate_head_amax(shape, kk::DType::F32, x.data(), amax.data());
  return amax;
}

// Per-head fp8/nvfp4 scales: a per-layer scalar when given, else each head's amax-based one.
std::vector<float> head_scales(const kk::CacheShape& shape, const std::vector<float>& x,
                               const KvFormat& format, double scale) {
  if (scale > 0)
    return std::vector<float>(static_cast<size_t>(shape.heads), static_cast<float>(scale));
  std::vector<float> scales = head_amax(shape, x);
  for (float& a : scales) {
    a = format.kind == KvFormat::Kind::Nvfp4 ? kk::nvfp4_head_scale(a) : kk::fp8_head_scale(a);
  }
  return scales;
}

}  // namespace

int fake_quant_command(const std::vector<std::string>& args) {
  std::string format_name, role_name = "key", shape_text, in_path, out_path, target = "kvtune",
                           scheme_name = "per-token-asym", zero_point = "int", kv_scales = "one",
                           rotate = "auto";
  int group_size = 0, residual = 0;
  double scale = 0;
  po::options_description opts(
      "kvtune fake-quant [options]: dequantize(quantize(x)) of one layer's keys or values, as the "
      "emulated cache holds them");
  opts.add_options()("help,h", "show this help")(
      "format", po::value(&format_name)->required(),
      "KV format: 1, 2, 3, 4, 8, fp8, nvfp4, 16, or an engine dtype (vllm:fp8, sglang:fp4_e2m1, "
      "llama.cpp:q4_0, ... see kvtune formats)")(
      "role", po::value(&role_name)->default_value(role_name), "key or value")(
      "shape", po::value(&shape_text)->required(), "T,H,D: tokens, KV heads, head_dim")(
      "in", po::value(&in_path)->required(), "raw little-endian float32, row-major [T, H, D]")(
      "out", po::value(&out_path)->required(), "where to write the result, same layout")(
      "scale", po::value(&scale)->default_value(0),
      "fp8/nvfp4: one scale for every head (a per-layer scalar); default each head's amax-based. "
      "Engine dtypes with a per-layer scale: its k_scale/v_scale (default --kv-scales)")(
      "kv-scales", po::value(&kv_scales)->default_value(kv_scales),
      "engine dtypes without --scale: one (1.0), or calculated / calibrated from this tensor's "
      "amax")("rotate", po::value(&rotate)->default_value(rotate),
              "llama.cpp types: the Hadamard rotation, auto (llama.cpp's rule), on or off")(
      "target", po::value(&target)->default_value(target), "kvtune or kvtuner")(
      "scheme", po::value(&scheme_name)->default_value(scheme_name),
      "integer scheme: per-token-asym or kivi; kvtuner: per-token-asym or per-channel-asym")(
      "group-size", po::value(&group_size), "kivi G (default 32); kvtuner: its setting's")(
      "residual", po::value(&residual), "kivi R (default G); kvtuner: its setting's")(
      "zero-point", po::value(&zero_point)->default_value(zero_point), "int or float");
  po::variables_map vm;
  if (!parse_options(args, opts, vm)) return 0;
  if (role_name != "key" && role_name != "value") {
    throw Error("--role '" + role_name + "' is not one of key, value");
  }
  const kk::Role role = role_name == "key" ? kk::Role::Key : kk::Role::Value;
  const KvFormat format = KvFormat::parse(format_name);
  const kk::CacheShape shape = parse_shape(shape_text);
  const auto given = [&vm](const char* option, int v) {
    return vm.count(option) > 0 ? std::optional<int>(v) : std::nullopt;
  };
  Scheme scheme = Scheme::from_options(target, scheme_name, given("group-size", group_size),
                                       given("residual", residual), zero_point);
  scheme.kv_scales = parse_kv_scales(kv_scales);
  scheme.rotation = parse_rotation(rotate);
  if (const std::string why = scheme.refusal(format); !why.empty()) throw Error(why);
  if (scale < 0) throw Error("--scale " + std::to_string(scale) + " must be positive");
  if (format.kind == KvFormat::Kind::Engine && vm.count("scale") > 0 && !vm["scale"].defaulted() &&
      !format.takes_layer_scale()) {
    throw Error("--scale: " + format.name() +
                (format.engine_dtype().scale == EngineDtype::Scale::AlwaysOne
                     ? " always applies a scale of 1.0 (the checkpoint's is ignored)"
                     : " takes no per-layer scale (its scales are per token or per block)"));
  }

  const std::vector<float> x = read_floats(in_path, shape);
  std::vector<float> y = x;
  switch (format.kind) {
    case KvFormat::Kind::Int:
      if (scheme.target == Scheme::Target::Kvtuner) {
        // The cache after a prefill of T tokens: every token quantized.
        kk::cpu::fake_quant_kvtuner(scheme.kvtuner_spec(role, format.bits), shape, kk::DType::F32,
                                    x.data(), y.data());
      } else {  // kivi leaves its last T mod R tokens in full precision
        kk::cpu::fake_quant_int(scheme.int_spec(role, format.bits), shape, kk::DType::F32, x.data(),
                                y.data());
      }
      break;
    case KvFormat::Kind::Fp8:
      kk::cpu::fake_quant_fp8(shape, kk::DType::F32, x.data(),
                              head_scales(shape, x, format, scale).data(), y.data());
      break;
    case KvFormat::Kind::Nvfp4:
      kk::cpu::fake_quant_nvfp4(shape, kk::DType::F32, x.data(),
                                head_scales(shape, x, format, scale).data(), y.data());
      break;
    case KvFormat::Kind::Engine: {
      // The layer's amax is its heads' largest, as in an evaluation.
      const std::vector<float> amax = head_amax(shape, x);
      kk::EngineSpec spec = scheme.engine_spec(
          format, role, *std::max_element(amax.begin(), amax.end()), shape.head_dim);
      if (scale > 0) spec.scale = static_cast<float>(scale);
      const int64_t overflow =
          kk::cpu::fake_quant_engine(spec, shape, kk::DType::F32, x.data(), y.data());
      if (overflow > 0) {  // written as the engine's cache holds them
        std::cerr << "kvtune fake-quant: " << overflow << " values overflow " << format.name()
                  << " at scale " << spec.scale << " and are NaN or inf in " << out_path << "\n";
      }
      break;
    }
    case KvFormat::Kind::Full:
      break;
  }
  std::ofstream out(out_path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(y.data()),
            static_cast<std::streamsize>(y.size() * sizeof(float)));
  out.close();
  if (!out) throw Error("--out " + out_path + ": cannot write");
  return 0;
}

}  // namespace kvtune::cli
