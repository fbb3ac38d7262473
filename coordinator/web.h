// The coordinator's web page (coordinator/web/: index.html, app.js,
// style.css), compiled into the binary (coordinator/web/embed.cmake), and
// the views of a job the page shows that the JSON API does not already
// return: its report's two plots and the recommended config's exports,
// computed on demand from the job's JSON (coordinator/report.h). The page
// reads everything else from the JSON API; nothing here keeps state.
#pragma once

#include <cstddef>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "http.h"

namespace kvtune::coord::web {

// A static file of the page.
struct Asset {
  std::string_view body;
  std::string_view content_type;  // e.g. "text/html; charset=utf-8"
};

// The file served at `path`: "/" and "/index.html" (the page), "/app.js",
// "/style.css"; nullopt for any other path. These hold no data and are
// served without the API token (http.cpp), so the page can ask for it.
std::optional<Asset> web_asset(std::string_view path);
// Every path web_asset() serves: what http::ServerOptions::public_paths lets
// through without the token.
std::vector<std::string> asset_paths();

// GET /v1/jobs/{id}/{view} for the page, from the job's full JSON:
//   pareto.svg, sensitivity.svg  report::pareto_svg / sensitivity_svg, also
//                                of a job still running (what it has so far)
//   exports                      {"recommended": layers or null, "exports":
//                                [{"format", "file", "text", "deploy"}]}:
//                                report::recommended_exports
// nullopt for another view name.
std::optional<http::Response> job_view(std::string_view view, const nlohmann::json& job);

namespace detail {
// One embedded file (the generated web_assets.cpp defines the table).
struct EmbeddedFile {
  std::string_view name;  // its name in coordinator/web/, e.g. "app.js"
  const unsigned char* data;
  std::size_t size;
};
extern const EmbeddedFile kEmbeddedFiles[];
extern const std::size_t kEmbeddedFileCount;
}  // namespace detail

}  // namespace kvtune::coord::web
