// The web page's files and job views (web.h).
#include "web.h"

#include <span>
#include <string>

#include "report.h"

namespace kvtune::coord::web {
namespace {

std::string_view content_type(std::string_view name) {
  if (name.ends_with(".html")) return "text/html; charset=utf-8";
  if (name.ends_with(".js")) return "text/javascript; charset=utf-8";
  if (name.ends_with(".css")) return "text/css; charset=utf-8";
  return "application/octet-stream";
}

http::Response json_response(const nlohmann::json& body) {
  return {200, body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n",
          "application/json"};
}

}  // namespace

std::optional<Asset> web_asset(std::string_view path) {
  if (path == "/") path = "/index.html";
  if (!path.starts_with('/')) return std::nullopt;
  path.remove_prefix(1);
  for (const auto& file : std::span(detail::kEmbeddedFiles, detail::kEmbeddedFileCount)) {
    if (file.name == path) {
      return Asset{{reinterpret_cast<const char*>(file.data), file.size}, content_type(file.name)};
    }
  }
  return std::nullopt;
}

std::vector<std::string> asset_paths() {
  std::vector<std::string> paths{"/"};
  for (const auto& file : std::span(detail::kEmbeddedFiles, detail::kEmbeddedFileCount)) {
    paths.push_back("/" + std::string(file.name));
  }
  return paths;
}

std::optional<http::Response> job_view(std::string_view view, const nlohmann::json& job) {
  if (view == "pareto.svg") {
    return http::Response{200, report::pareto_svg(job), "image/svg+xml; charset=utf-8"};
  }
  if (view == "sensitivity.svg") {
    return http::Response{200, report::sensitivity_svg(job), "image/svg+xml; charset=utf-8"};
  }
  if (view == "exports") {
    nlohmann::json list = nlohmann::json::array();
    for (const report::ExportFile& e : report::recommended_exports(job)) {
      list.push_back(
          {{"format", e.format}, {"file", e.file}, {"text", e.text}, {"deploy", e.deploy}});
    }
    const nlohmann::json* best = report::recommended(job);
    return json_response({{"recommended", best != nullptr ? (*best)["layers"] : nlohmann::json()},
                          {"exports", list}});
  }
  return std::nullopt;
}

}  // namespace kvtune::coord::web
