#include "commands.h"

#include <boost/program_options.hpp>
#include <iostream>
#include <nlohmann/json.hpp>

#include "kvtune/common/error.h"
#include "llama.h"

namespace kvtune::worker {
namespace po = boost::program_options;

namespace {

std::vector<int64_t> parse_ids(const std::string& text, const char* option) {
  std::vector<int64_t> ids;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t comma = std::min(text.find(',', start), text.size());
    const std::string item = text.substr(start, comma - start);
    size_t used = 0;
    int64_t id = -1;
    try {
      id = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (item.empty() || used != item.size() || id < 0) {
      throw Error(std::string(option) + ": '" + item + "' is not a token id");
    }
    ids.push_back(id);
    start = comma + 1;
  }
  return ids;
}

}  // namespace

int generate_command(const std::vector<std::string>& args) {
  std::string model_path, prompt;
  int64_t steps = 0;
  po::options_description opts("kvtune generate [options]");
  opts.add_options()("help,h", "show this help")("model", po::value(&model_path)->required(),
                                                 "llama2.c checkpoint")(
      "prompt-ids", po::value(&prompt)->default_value("1"), "comma-separated prompt token ids")(
      "steps", po::value(&steps)->default_value(64), "tokens to generate")("json",
                                                                           "print one JSON object");
  po::variables_map vm;
  po::store(po::command_line_parser(args).options(opts).run(), vm);
  if (vm.count("help")) {
    std::cout << opts;
    return 0;
  }
  po::notify(vm);
  if (steps < 0) throw Error("--steps " + std::to_string(steps) + " must not be negative");
  const std::vector<int64_t> prompt_ids = parse_ids(prompt, "--prompt-ids");

  const Model model = load_llama2c(model_path);
  const Transformer transformer(model);
  FullPrecisionCache cache;
  torch::Tensor logits;
  for (int64_t id : prompt_ids) logits = transformer.step(id, cache);
  std::vector<int64_t> generated;
  for (int64_t s = 0; s < steps; ++s) {
    const int64_t next = logits.argmax().item<int64_t>();
    generated.push_back(next);
    if (s + 1 < steps) logits = transformer.step(next, cache);
  }
  if (vm.count("json")) {
    std::cout << nlohmann::json{{"prompt", prompt_ids}, {"generated", generated}}.dump() << "\n";
  } else {
    for (size_t i = 0; i < generated.size(); ++i) std::cout << (i ? " " : "") << generated[i];
    std::cout << "\n";
  }
  return 0;
}

}  // namespace kvtune::worker
