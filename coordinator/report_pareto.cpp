// The report's Pareto picture (pareto.svg): KL against average bits, the
// measured frontier, the additive model's predictions, the uniform baselines
// and the budget.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "report_svg.h"

namespace kvtune::report {
namespace {

using namespace svg;

struct Point {
  double bits = 0, kl = 0;
  std::string name;
};

// Entries with metrics (frontier, baselines) as points, in bits order.
std::vector<Point> measured_points(const json& list) {
  std::vector<Point> out;
  for (const json& e : list) {
    const json m = e.value("metrics", json::object());
    out.push_back({m.value("avg_bits", 0.0), m.value("kl", 0.0),
                   short_config_name(e.value("layers", e.value("config", "")))});
  }
  std::sort(out.begin(), out.end(), [](const Point& a, const Point& b) { return a.bits < b.bits; });
  return out;
}

// The additive model's frontier: its predicted KL of each config.
std::vector<Point> predicted_points(const json& job) {
  std::vector<Point> out;
  for (const json& a : array_at(job, {"search", "additive_frontier"})) {
    out.push_back({a.value("avg_bits", 0.0), a.value("predicted_kl", 0.0),
                   short_config_name(a.value("layers", std::string()))});
  }
  return out;
}

// The plot frame and its scales: bits on x, log10 KL on y.
struct Frame {
  double left = 80, top = 46, width = 540, height = 380;
  double bits_lo = 2, bits_hi = 16, bits_step = 2;
  int decade_lo = -4, decade_hi = 0;
  static constexpr double kPad = 12;  // keeps markers off the axes

  double x(double bits) const {
    return left + kPad + (bits - bits_lo) / (bits_hi - bits_lo) * (width - 2 * kPad);
  }
  double y(double kl) const {
    return top + kPad + (decade_hi - log_kl(kl)) / (decade_hi - decade_lo) * (height - 2 * kPad);
  }
  double right() const { return left + width; }
  double bottom() const { return top + height; }
};

Frame fit_frame(const std::vector<double>& bits, const std::vector<double>& kls) {
  Frame f;
  if (!bits.empty()) {
    const auto [lo, hi] = std::minmax_element(bits.begin(), bits.end());
    f.bits_lo = std::floor(*lo);
    f.bits_hi = std::ceil(*hi);
    if (f.bits_hi - f.bits_lo < 2) {  // one point, or all within a bit: widen around them
      f.bits_lo = std::max(0.0, f.bits_lo - 1);
      f.bits_hi = f.bits_lo + std::max(2.0, std::ceil(*hi) + 1 - f.bits_lo);
    }
    const double span = f.bits_hi - f.bits_lo;
    f.bits_step = span <= 3 ? 0.5 : span <= 8 ? 1 : span <= 16 ? 2 : 4;
  }
  if (!kls.empty()) {
    const auto [lo, hi] = std::minmax_element(kls.begin(), kls.end());
    f.decade_lo = static_cast<int>(std::floor(log_kl(*lo)));
    f.decade_hi = static_cast<int>(std::ceil(log_kl(*hi)));
    if (f.decade_hi == f.decade_lo) ++f.decade_hi;
  }
  return f;
}

std::string axes_svg(const Frame& f) {
  std::string out = "<g class=\"axes\" stroke=\"#999\" stroke-width=\"1\">\n";
  const std::string grid = " stroke=\"#e6e6e6\"";
  for (double b = f.bits_lo; b <= f.bits_hi + 1e-9; b += f.bits_step) {
    out += line(f.x(b), f.top, f.x(b), f.bottom(), grid);
    out += line(f.x(b), f.bottom(), f.x(b), f.bottom() + 5, "");
  }
  const int decades = f.decade_hi - f.decade_lo;
  for (int e = f.decade_lo; e <= f.decade_hi; ++e) {
    const double y = f.y(std::pow(10.0, e));
    out += line(f.left, y, f.right(), y, grid);
    out += line(f.left - 6, y, f.left, y, "");
    for (int m = 2; m <= 9 && e < f.decade_hi && decades <= 8; ++m) {  // minor ticks
      const double ym = f.y(m * std::pow(10.0, e));
      out += line(f.left - 3, ym, f.left, ym, "");
    }
  }
  out += "<rect" + attr("x", f.left) + attr("y", f.top) + attr("width", f.width) +
         attr("height", f.height) + " fill=\"none\" stroke=\"#444\"/>\n</g>\n";
  out += "<g class=\"tick-labels\" fill=\"#333\" font-size=\"11\">\n";
  for (double b = f.bits_lo; b <= f.bits_hi + 1e-9; b += f.bits_step) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "%g", b);
    out += text(f.x(b), f.bottom() + 18, buf, " text-anchor=\"middle\"");
  }
  for (int e = f.decade_lo; e <= f.decade_hi; ++e) {
    out += text(f.left - 9, f.y(std::pow(10.0, e)) + 4, decade_label(e), " text-anchor=\"end\"");
  }
  out += "</g>\n";
  out += text(f.left + f.width / 2, f.bottom() + 40, "average bits per cached key/value element",
              " class=\"axis-title\" text-anchor=\"middle\" font-size=\"13\"");
  const double cy = f.top + f.height / 2;
  out +=
      text(0, 0, "KL(fp \u2016 quantized), nats/token, log scale",
           " class=\"axis-title\" text-anchor=\"middle\" font-size=\"13\" transform=\"translate(" +
               f1(22) + "," + f1(cy) + ") rotate(-90)\"");
  return out;
}

// The uniform baselines: squares named beside them, right or left, whichever
// needs the name moved down less off the names before it and off the
// measured and predicted markers.
std::string baselines_svg(const Frame& f, const std::vector<Point>& baselines,
                          const std::vector<Point>& markers) {
  struct Label {
    double x, y, width;
    bool left;
  };
  std::vector<Label> placed;
  std::string marks, labels;
  std::vector<Point> by_y = baselines;
  std::sort(by_y.begin(), by_y.end(), [](const Point& a, const Point& b) { return a.kl > b.kl; });
  for (const Point& p : by_y) {
    const double x = f.x(p.bits), y = f.y(p.kl);
    marks +=
        "<rect class=\"baseline\"" + attr("x", x - 4) + attr("y", y - 4) + attr("width", 8) +
        attr("height", 8) + " fill=\"#2ca02c\" fill-opacity=\"0.8\" stroke=\"#1b641b\"><title>" +
        xml_escape(p.name + " on every layer: " + f1(p.bits) + " bits, KL " + number_text(p.kl)) +
        "</title></rect>\n";
    const double width = 6.6 * static_cast<double>(p.name.size());
    // Down past the labels it overlaps (11.99: o.y + 12 - o.y may round below
    // 12) and below the markers (r <= 6) its text (y - 11 to y + 2) covers.
    const auto place = [&](bool left) {
      Label l{left ? x - 8 : x + 8, y + 4, width, left};
      for (bool moved = true; moved;) {
        moved = false;
        const double lo = l.left ? l.x - l.width : l.x;
        for (const Label& o : placed) {
          const double olo = o.left ? o.x - o.width : o.x;
          if (lo < olo + o.width && olo < lo + l.width && std::abs(l.y - o.y) < 11.99) {
            l.y = o.y + 12;
            moved = true;
          }
        }
        for (const Point& q : markers) {
          const double qx = f.x(q.bits), qy = f.y(q.kl);
          if (lo < qx + 7 && qx - 7 < lo + l.width && l.y - 11 < qy + 7 && qy - 7 < l.y + 2) {
            l.y = qy + 19;
            moved = true;
          }
        }
      }
      return l;
    };
    const bool right_fits = x + 8 + width <= f.right(), left_fits = x - 8 - width >= f.left;
    Label l = place(!right_fits);
    if (right_fits && left_fits) {
      const Label other = place(true);
      if (other.y < l.y) l = other;
    }
    placed.push_back(l);
    labels += text(l.x, l.y, p.name,
                   std::string(" class=\"baseline-label\" font-size=\"11\" fill=\"#1b641b\"") +
                       (l.left ? " text-anchor=\"end\"" : ""));
  }
  return marks + labels;
}

// The measured frontier: a step line (what is attainable at each budget)
// under one filled circle per config.
std::string frontier_svg(const Frame& f, const std::vector<Point>& frontier) {
  std::string out;
  if (frontier.size() > 1) {
    std::string d = "M" + f1(f.x(frontier[0].bits)) + "," + f1(f.y(frontier[0].kl));
    for (std::size_t i = 1; i < frontier.size(); ++i) {
      d += " H" + f1(f.x(frontier[i].bits)) + " V" + f1(f.y(frontier[i].kl));
    }
    out += "<path class=\"frontier-step\" d=\"" + d +
           "\" fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\"/>\n";
  }
  for (const Point& p : frontier) {
    out += "<circle class=\"frontier\"" + attr("cx", f.x(p.bits)) + attr("cy", f.y(p.kl)) +
           attr("r", 4.5) + " fill=\"#1f77b4\" stroke=\"white\" stroke-width=\"1\"><title>" +
           xml_escape(p.name + ": " + f1(p.bits) + " bits, KL " + number_text(p.kl)) +
           "</title></circle>\n";
  }
  return out;
}

std::string pareto_legend(const Frame& f, std::size_t frontier, std::size_t predicted,
                          std::size_t baselines, double budget, bool floored) {
  const double x = f.right() + 18;
  double y = f.top + 14;
  std::string out = "<g class=\"legend\" font-size=\"12\">\n";
  const auto entry = [&](const std::string& mark, const std::string& label) {
    out += mark + text(x + 22, y + 4, label);
    y += 22;
  };
  entry("<circle class=\"legend-frontier\"" + attr("cx", x + 8) + attr("cy", y) + attr("r", 4.5) +
            " fill=\"#1f77b4\"/>\n",
        "measured frontier (" + std::to_string(frontier) + ")");
  if (predicted > 0) {
    entry("<circle class=\"legend-predicted\"" + attr("cx", x + 8) + attr("cy", y) + attr("r", 6) +
              " fill=\"none\" stroke=\"#ff7f0e\" stroke-width=\"1.5\"/>\n",
          "additive model, predicted (" + std::to_string(predicted) + ")");
  }
  if (baselines > 0) {
    entry("<rect class=\"legend-baseline\"" + attr("x", x + 4) + attr("y", y - 4) +
              attr("width", 8) + attr("height", 8) + " fill=\"#2ca02c\"/>\n",
          "uniform baselines (" + std::to_string(baselines) + ")");
  }
  if (budget < 16) {
    entry(
        line(x, y, x + 16, y, " stroke=\"#d62728\" stroke-dasharray=\"5,3\" stroke-width=\"1.5\""),
        "budget: " + number_text(budget) + " bits");
  }
  y += 6;
  out += text(x, y, "frontier: the lowest KL", " fill=\"#555\" font-size=\"11\"");
  out += text(x, y + 14, "at each number of bits", " fill=\"#555\" font-size=\"11\"");
  if (floored) {
    out += text(x, y + 34, "KL below 1e-6 (or 0)", " fill=\"#555\" font-size=\"11\"");
    out += text(x, y + 48, "is drawn at 1e-6", " fill=\"#555\" font-size=\"11\"");
  }
  return out + "</g>\n";
}

}  // namespace

std::string pareto_svg(const json& job) {
  const std::vector<Point> frontier = measured_points(array_at(job, {"frontier"}));
  const std::vector<Point> baselines = measured_points(array_at(job, {"baselines"}));
  const std::vector<Point> predicted = predicted_points(job);
  const double budget = max_bits(job);
  std::vector<double> bits, kls;
  for (const auto* set : {&frontier, &baselines, &predicted}) {
    for (const Point& p : *set) {
      bits.push_back(p.bits);
      kls.push_back(p.kl);
    }
  }
  const bool floored = std::any_of(kls.begin(), kls.end(), [](double v) { return v < kKlFloor; });
  if (budget < 16) bits.push_back(budget);
  const Frame f = fit_frame(bits, kls);

  std::string out = svg_open(f.right() + 250, f.bottom() + 56, "Pareto frontier");
  out += text(f.left, 26,
              "KL against average bits: " + job.value("model", std::string("?")) + " (target " +
                  job.value("spec", json::object()).value("target", std::string("kvtune")) + ")",
              " class=\"title\" font-size=\"15\" font-weight=\"bold\"");
  out += axes_svg(f);
  if (budget < 16) {
    out += "<g class=\"budget\">" +
           line(f.x(budget), f.top, f.x(budget), f.bottom(),
                " stroke=\"#d62728\" stroke-width=\"1.5\" stroke-dasharray=\"6,4\"") +
           text(f.x(budget) + 4, f.top + 14, "budget", " fill=\"#d62728\" font-size=\"11\"") +
           "</g>\n";
  }
  for (const Point& p : predicted) {
    out +=
        "<circle class=\"predicted\"" + attr("cx", f.x(p.bits)) + attr("cy", f.y(p.kl)) +
        attr("r", 6) + " fill=\"none\" stroke=\"#ff7f0e\" stroke-width=\"1.5\"><title>" +
        xml_escape("predicted " + p.name + ": " + f1(p.bits) + " bits, KL " + number_text(p.kl)) +
        "</title></circle>\n";
  }
  std::vector<Point> markers = frontier;
  markers.insert(markers.end(), predicted.begin(), predicted.end());
  out += baselines_svg(f, baselines, markers) + frontier_svg(f, frontier);
  if (frontier.empty() && baselines.empty() && predicted.empty()) {
    out += text(f.left + f.width / 2, f.top + f.height / 2, "no configs to plot",
                " text-anchor=\"middle\" fill=\"#555\"");
  }
  out += pareto_legend(f, frontier.size(), predicted.size(), baselines.size(), budget, floored);
  return out + "</svg>\n";
}

}  // namespace kvtune::report
