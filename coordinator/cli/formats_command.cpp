// `kvtune formats`: what each KV format costs and how much it distorts a
// cache, measured on a synthetic one whose keys have outlier channels (as real
// models' keys do) and whose values do not.
#include <algorithm>
#include <boost/program_options.hpp>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>

#include "commands.h"
#include "kvtune/common/error.h"
#include "kvtune/common/precision.h"
#include "kvtune/common/scheme.h"
#include "kvtune/kernels/engine.h"
#include "kvtune/kernels/quant.h"

namespace kvtune::cli {
namespace {

namespace po = boost::program_options;
namespace kk = kvtune::kernels;

struct SyntheticCache {
  kk::CacheShape shape;
  std::vector<float> keys, values;
};

SyntheticCache make_cache(const kk::CacheShape& shape, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t row = shape.heads * shape.head_dim;
  std::vector<float> channel_scale(static_cast<size_t>(row)),
      channel_shift(static_cast<size_t>(row));
  for (int64_t c = 0; c < row; ++c) {
    channel_scale[c] = std::exp(0.5f * normal(rng)) * (c % 16 == 3 ? 8.0f : 1.0f);
    channel_shift[c] = 0.5f * normal(rng);
  }
  SyntheticCache cache{shape, {}, {}};
  cache.keys.resize(static_cast<size_t>(shape.elements()));
  cache.values.resize(cache.keys.size());
  for (size_t i = 0; i < cache.keys.size(); ++i) {
    const size_t c = i % static_cast<size_t>(row);
    cache.keys[i] = normal(rng) * channel_scale[c] + channel_shift[c];
    cache.values[i] = normal(rng);
  }
  return cache;
}

double relative_error(const std::vector<float>& ref, const std::vector<float>& q) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = static_cast<double>(q[i]) - ref[i];
    num += d * d;
    den += static_cast<double>(ref[i]) * ref[i];
  }
  return den > 0.0 ? std::sqrt(num / den) : 0.0;
}

struct Measured {
  double bits;
  double rel_err;
};

Measured measure(const KvFormat& format, const Scheme& scheme, kk::Role role,
                 const kk::CacheShape& shape, const std::vector<float>& x) {
  std::vector<float> y(x.size());
  if (format.kind == KvFormat::Kind::Int) {
    const kk::IntSpec spec = scheme.int_spec(role, format.bits);
    kk::cpu::fake_quant_int(spec, shape, kk::DType::F32, x.data(), y.data());
    return {kk::int_storage_bits(spec, shape), relative_error(x, y)};
  }
  std::vector<float> amax(static_cast<size_t>(shape.heads), 0.0f);
  kk::cpu::accumulate_head_amax(shape, kk::DType::F32, x.data(), amax.data());
  if (format.kind == KvFormat::Kind::Engine) {  // its per-layer scale from the layer's amax
    const kk::EngineSpec spec = scheme.engine_spec(
        format, role, *std::max_element(amax.begin(), amax.end()), shape.head_dim);
    kk::cpu::fake_quant_engine(spec, shape, kk::DType::F32, x.data(), y.data());
    return {kk::engine_storage_bits(spec, shape), relative_error(x, y)};
  }
  std::vector<float> scales;
  for (float a : amax) {
    scales.push_back(format.kind == KvFormat::Kind::Fp8 ? kk::fp8_head_scale(a)
                                                        : kk::nvfp4_head_scale(a));
  }
  if (format.kind == KvFormat::Kind::Fp8) {
    kk::cpu::fake_quant_fp8(shape, kk::DType::F32, x.data(), scales.data(), y.data());
    return {kk::fp8_storage_bits(shape), relative_error(x, y)};
  }
  if (format.kind == KvFormat::Kind::Nvfp4) {
    kk::cpu::fake_quant_nvfp4(shape, kk::DType::F32, x.data(), scales.data(), y.data());
    return {kk::nvfp4_storage_bits(shape), relative_error(x, y)};
  }
  return {16.0, 0.0};
}

}  // namespace

int formats_command(const std::vector<std::string>& args) {
  int64_t tokens = 0, heads = 0, head_dim = 0;
  int group_size = 0, residual = 0;
  uint32_t seed = 0;
  std::string scheme_name, zero_point, formats_list, kv_scales;
  po::options_description opts("kvtune formats [options]");
  opts.add_options()("help,h", "show this help")("tokens", po::value(&tokens)->default_value(4096),
                                                 "cached tokens")(
      "heads", po::value(&heads)->default_value(8), "KV heads")(
      "head-dim", po::value(&head_dim)->default_value(128), "channels per head")(
      "scheme", po::value(&scheme_name)->default_value("per-token-asym"),
      "integer scheme: per-token-asym or kivi")(
      "group-size", po::value(&group_size)->default_value(32), "kivi group size G")(
      "residual", po::value(&residual)->default_value(32), "kivi residual window R")(
      "zero-point", po::value(&zero_point)->default_value("int"), "int (KVTuner) or float (KIVI)")(
      "formats", po::value(&formats_list)->default_value("8,4,3,2,1,fp8,nvfp4"),
      "comma-separated KV formats, engine dtypes too (vllm:fp8, sglang:fp4_e2m1, ...)")(
      "kv-scales", po::value(&kv_scales)->default_value("calibrated"),
      "engine dtypes' per-layer scales: one, calculated or calibrated (from this cache's amax)")(
      "seed", po::value(&seed)->default_value(0), "random seed")("json", "print one JSON object");
  po::variables_map vm;
  if (!parse_options(args, opts, vm)) return 0;

  Scheme scheme = Scheme::parse(scheme_name, group_size, residual, zero_point);
  scheme.kv_scales = parse_kv_scales(kv_scales);
  const kk::CacheShape shape{tokens, heads, head_dim};
  std::vector<KvFormat> formats;
  for (size_t start = 0; start <= formats_list.size();) {
    const size_t comma = std::min(formats_list.find(',', start), formats_list.size());
    formats.push_back(KvFormat::parse(formats_list.substr(start, comma - start)));
    if (const std::string why = scheme.refusal(formats.back()); !why.empty()) throw Error(why);
    start = comma + 1;
  }
  if (tokens <= 0 || heads <= 0 || head_dim <= 0) {
    throw Error("--tokens, --heads and --head-dim must be positive, got shape " + shape.str());
  }
  const SyntheticCache cache = make_cache(shape, seed);

  nlohmann::json rows = nlohmann::json::array();
  for (const KvFormat& f : formats) {
    const Measured k = measure(f, scheme, kk::Role::Key, shape, cache.keys);
    const Measured v = measure(f, scheme, kk::Role::Value, shape, cache.values);
    rows.push_back({{"format", f.name()},
                    {"key_bits", k.bits},
                    {"key_rel_err", k.rel_err},
                    {"value_bits", v.bits},
                    {"value_rel_err", v.rel_err}});
  }
  const std::string scheme_desc =
      scheme_name +
      (scheme.grouping == kk::Grouping::Kivi
           ? " (G=" + std::to_string(group_size) + ", R=" + std::to_string(residual) + ")"
           : "") +
      ", zero-point " + zero_point;
  if (vm.count("json")) {
    nlohmann::json out = {{"synthetic", true},    {"tokens", tokens},      {"heads", heads},
                          {"head_dim", head_dim}, {"scheme", scheme_desc}, {"seed", seed},
                          {"formats", rows}};
    std::cout << out.dump() << "\n";
    return 0;
  }
  std::cout << "Synthetic KV cache " << shape.str()
            << " (keys with outlier channels), integer scheme " << scheme_desc << ", seed " << seed
            << "\n"
            << "bits = storage per element incl. scales/zero points (fp16) and residual tokens\n\n";
  std::printf("%-25s %10s %14s %12s %14s\n", "format", "key bits", "key rel.err", "value bits",
              "value rel.err");
  for (const auto& r : rows) {
    std::printf("%-25s %10.3f %14.5f %12.3f %14.5f\n", r["format"].get<std::string>().c_str(),
                r["key_bits"].get<double>(), r["key_rel_err"].get<double>(),
                r["value_bits"].get<double>(), r["value_rel_err"].get<double>());
  }
  return 0;
}

}  // namespace kvtune::cli
