// The SVG pieces both report pictures (report_pareto.cpp,
// report_sensitivity.cpp) write with: plain SVG 1.1 text (no plotting
// library, so nothing to install where the report is opened). Styling is in
// presentation attributes, not <style>, so that both pictures can be inlined
// into one HTML page without their rules leaking into each other; every
// piece of text goes through xml_escape (config names hold ',' and ':').
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <string_view>

#include "report.h"

namespace kvtune::report::svg {

// KL at or below this (KL 0 included) is drawn here: a log axis has no 0.
constexpr double kKlFloor = 1e-6;

inline std::string f1(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", v);
  return buf;
}

inline std::string attr(const char* name, double v) {
  return std::string(" ") + name + "=\"" + f1(v) + "\"";
}

inline std::string text(double x, double y, std::string_view body, const std::string& attrs = "") {
  return "<text" + attr("x", x) + attr("y", y) + attrs + ">" + xml_escape(body) + "</text>\n";
}

inline std::string line(double x1, double y1, double x2, double y2, const std::string& attrs) {
  return "<line" + attr("x1", x1) + attr("y1", y1) + attr("x2", x2) + attr("y2", y2) + attrs +
         "/>\n";
}

inline std::string svg_open(double width, double height, const std::string& title) {
  return "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
         "<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\"" +
         attr("width", width) + attr("height", height) + " viewBox=\"0 0 " + f1(width) + " " +
         f1(height) + "\" font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\" " +
         "font-size=\"12\">\n<title>" + xml_escape(title) + "</title>\n<rect" +
         attr("width", width) + attr("height", height) + " fill=\"white\"/>\n";
}

inline double log_kl(double kl) {
  return std::log10(std::max(kl, kKlFloor));
}

}  // namespace kvtune::report::svg
