// Torch-free facts about the built-in demo model (make_demo_model in llama.h).
#pragma once

#include <string>
#include <string_view>

namespace kvtune::worker {

// builtin:demo (head_dim 16) or builtin:demo-hd64 (the same recipe at
// head_dim 64, where llama.cpp's Hadamard rotation applies).
bool is_demo_model(std::string_view spec);

// The recipe (generator version and parameters) of make_demo_model(spec): its
// content identity, hashed by model_fingerprint(spec). Throws
// std::invalid_argument unless is_demo_model(spec).
std::string demo_model_recipe(std::string_view spec);

}  // namespace kvtune::worker
