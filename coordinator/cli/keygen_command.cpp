// `kvtune keygen`: a new ZeroMQ CURVE key pair for the coordinator <-> worker
// transport (the coordinator's own, or a worker's).
#include <boost/program_options.hpp>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "commands.h"
#include "kvtune/common/error.h"
#include "kvtune/schemas/transport.h"

namespace kvtune::cli {

int keygen_command(const std::vector<std::string>& args) {
  namespace po = boost::program_options;
  std::string out;
  po::options_description opts(
      "kvtune keygen --out PATH\n\n"
      "Writes a new ZeroMQ CURVE key pair for the coordinator <-> worker transport:\n"
      "PATH, the secret key (mode 0600; keep it on the host that uses it), and\n"
      "PATH.pub, the public key (give the coordinator's to every worker, and each\n"
      "worker's to the coordinator's authorized keys). Existing files are never\n"
      "overwritten. Prints the public key.\n\n"
      "options");
  opts.add_options()("help,h", "show this help")(
      "out,o", po::value(&out)->value_name("PATH"),
      "secret key file to create; the public key goes to PATH.pub");
  po::variables_map vm;
  if (!parse_options(args, opts, vm)) return 0;
  if (out.empty()) throw Error("--out PATH is required (see kvtune keygen --help)");

  const transport::CurveKeyPair keys = transport::generate_curve_keypair();
  transport::save_curve_keypair(keys, out);
  std::cerr << "wrote the secret key to " << out << " and the public key to " << out << ".pub\n";
  std::cout << keys.public_key << "\n";
  return 0;
}

}  // namespace kvtune::cli
