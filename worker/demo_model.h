// Torch-free facts about the built-in demo model (make_demo_model in llama.h).
#pragma once

#include <string>

namespace kvtune::worker {

// The recipe (generator version and parameters) of make_demo_model(): its
// content identity, hashed by model_fingerprint("builtin:demo").
std::string demo_model_recipe();

}  // namespace kvtune::worker
