// The report's two pictures, written as plain SVG 1.1 text (no plotting
// library, so nothing to install where the report is opened). Styling is in
// presentation attributes, not <style>, so that both pictures can be inlined
// into one HTML page without their rules leaking into each other; every
// piece of text goes through xml_escape (config names hold ',' and ':').
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>

#include "report.h"

namespace kvtune::report {
namespace {

// KL at or below this (KL 0 included) is drawn here: a log axis has no 0.
constexpr double kKlFloor = 1e-6;

std::string f1(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", v);
  return buf;
}

std::string attr(const char* name, double v) {
  return std::string(" ") + name + "=\"" + f1(v) + "\"";
}

std::string text(double x, double y, std::string_view body, const std::string& attrs = "") {
  return "<text" + attr("x", x) + attr("y", y) + attrs + ">" + xml_escape(body) + "</text>\n";
}

std::string line(double x1, double y1, double x2, double y2, const std::string& attrs) {
  return "<line" + attr("x1", x1) + attr("y1", y1) + attr("x2", x2) + attr("y2", y2) + attrs +
         "/>\n";
}

std::string svg_open(double width, double height, const std::string& title) {
  return "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
         "<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\"" +
         attr("width", width) + attr("height", height) + " viewBox=\"0 0 " + f1(width) + " " +
         f1(height) + "\" font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\" " +
         "font-size=\"12\">\n<title>" + xml_escape(title) + "</title>\n<rect" +
         attr("width", width) + attr("height", height) + " fill=\"white\"/>\n";
}

double log_kl(double kl) {
  return std::log10(std::max(kl, kKlFloor));
}

// ---- pareto.svg ----------------------------------------------------------

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
    out.push_back(
        {a.value("avg_bits", 0.0), a.value("predicted_kl", 0.0), a.value("layers", std::string())});
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

// The uniform baselines: squares named beside them, moved down off each other.
std::string baselines_svg(const Frame& f, const std::vector<Point>& baselines) {
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
    Label l{x + 8, y + 4, width, x + 8 + width > f.right()};
    if (l.left) l.x = x - 8;
    // Down past the labels it overlaps (11.99: o.y + 12 - o.y may round below 12).
    for (bool moved = true; moved;) {
      moved = false;
      for (const Label& o : placed) {
        const double lo = l.left ? l.x - l.width : l.x, olo = o.left ? o.x - o.width : o.x;
        if (lo < olo + o.width && olo < lo + l.width && std::abs(l.y - o.y) < 11.99) {
          l.y = o.y + 12;
          moved = true;
        }
      }
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

// ---- sensitivity.svg -----------------------------------------------------

// The profile: KL of each candidate pair on each layer alone.
struct Profile {
  int layers = 0;
  std::vector<std::string> pairs;                    // the columns
  std::map<std::pair<int, std::string>, double> kl;  // (layer, pair) -> KL
};

Profile read_profile(const json& job) {
  Profile p;
  std::vector<std::string> seen;
  for (const json& r : array_at(job, {"results"})) {
    // A profile evaluation quantizes exactly one layer; the others stay KV16.
    const std::string layers = r.value("layers", "");
    int layer = -1, count = 0, at = 0;
    std::string pair;
    for (std::size_t start = 0; start <= layers.size(); ++at) {
      const std::size_t end = std::min(layers.find(',', start), layers.size());
      const std::string name = layers.substr(start, end - start);
      if (name != "KV16") {
        ++count;
        layer = at;
        pair = name;
      }
      start = end + 1;
    }
    p.layers = std::max(p.layers, at);
    if (count != 1 || layers.empty()) continue;
    p.kl[{layer, pair}] = r.value("metrics", json::object()).value("kl", 0.0);
    if (std::find(seen.begin(), seen.end(), pair) == seen.end()) seen.push_back(pair);
  }
  p.layers = job.value("model_info", json::object()).value("layers", p.layers);
  // Columns in the candidates' order (strongest first), then any other pair profiled.
  const json& search_candidates = array_at(job, {"spec", "search", "candidates"});
  const json& candidates =
      search_candidates.empty() ? array_at(job, {"spec", "candidates"}) : search_candidates;
  for (const json& c : candidates) {
    const std::string name = c.is_string() ? c.get<std::string>() : "";
    if (std::find(seen.begin(), seen.end(), name) != seen.end() &&
        std::find(p.pairs.begin(), p.pairs.end(), name) == p.pairs.end()) {
      p.pairs.push_back(name);
    }
  }
  for (const std::string& s : seen) {
    if (std::find(p.pairs.begin(), p.pairs.end(), s) == p.pairs.end()) p.pairs.push_back(s);
  }
  return p;
}

// Sequential colour (light yellow = low KL, dark red = high) for t in [0, 1].
std::string heat_colour(double t) {
  static const double kStops[5][3] = {
      {255, 255, 204}, {254, 217, 118}, {253, 141, 60}, {227, 26, 28}, {128, 0, 38}};
  t = std::clamp(t, 0.0, 1.0) * 4;
  const int i = std::min(3, static_cast<int>(t));
  const double u = t - i;
  char buf[16];
  std::snprintf(
      buf, sizeof buf, "#%02x%02x%02x",
      static_cast<int>(std::lround(kStops[i][0] + u * (kStops[i + 1][0] - kStops[i][0]))),
      static_cast<int>(std::lround(kStops[i][1] + u * (kStops[i + 1][1] - kStops[i][1]))),
      static_cast<int>(std::lround(kStops[i][2] + u * (kStops[i + 1][2] - kStops[i][2]))));
  return buf;
}

// The search's grouping: each layer's group index and its surviving pairs.
struct Grouping {
  std::map<int, int> group_of;  // layer -> index into groups
  std::vector<std::vector<int>> layers;
  std::vector<std::set<std::string>> pairs;
};

Grouping read_grouping(const json& job) {
  Grouping g;
  for (const json& group : array_at(job, {"search", "grouping"})) {
    std::vector<int> members;
    for (const json& l : group.value("layers", json::array())) members.push_back(l.get<int>());
    std::set<std::string> pairs;
    for (const json& p : group.value("pairs", json::array())) pairs.insert(p.get<std::string>());
    for (int l : members) g.group_of[l] = static_cast<int>(g.layers.size());
    g.layers.push_back(std::move(members));
    g.pairs.push_back(std::move(pairs));
  }
  return g;
}

bool pruned(const Grouping& g, int layer, const std::string& pair) {
  const auto it = g.group_of.find(layer);
  return it != g.group_of.end() && !g.pairs[static_cast<std::size_t>(it->second)].contains(pair);
}

std::string no_profile_svg(const json& job) {
  const std::string strategy =
      job.value("search", json::object()).value("strategy", std::string("this"));
  const std::string state = job.value("state", std::string("done"));
  // Running (the live page): a profile may still come (kvtune, skip-layers, first-last, or "this").
  if ((state == "queued" || state == "running") && strategy != "nsga2" && strategy != "random" &&
      strategy != "scan") {
    const std::string id = job.value("id", std::string("?"));
    return svg_open(640, 100, "layer sensitivity: no profile yet") +
           text(20, 40, "No per-layer profile results for job " + id + " yet.",
                " font-size=\"15\"") +
           text(20, 68, "The heat map fills in as the profile's evaluations arrive.",
                " fill=\"#555\"") +
           "</svg>\n";
  }
  std::string out = svg_open(640, 120, "layer sensitivity: no profile");
  out += text(20, 40, "No per-layer profile for job " + job.value("id", std::string("?")) + ".",
              " font-size=\"15\"");
  out += text(20, 68, "The " + strategy + " strategy evaluates whole configurations only,",
              " fill=\"#555\"");
  out += text(20, 88, "so there is no layer-by-pair sensitivity to show.", " fill=\"#555\"");
  return out + "</svg>\n";
}

// Layout of the heat map.
struct HeatLayout {
  double left = 70, top = 0, cell_w = 54, cell_h = 20;
  double x(std::size_t column) const { return left + static_cast<double>(column) * cell_w; }
  double y(int layer) const { return top + layer * cell_h; }
};

// Brackets joining the layers of each cluster (a group of several layers),
// in lanes so that brackets whose layer spans overlap stay apart; a
// "group k" label on each member row. Returns the width used.
double clusters_svg(const Grouping& g, const HeatLayout& h, double x0, std::string& out) {
  static const char* kColours[] = {"#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#17becf", "#555"};
  std::vector<int> lane_end;  // last layer of the bracket in each lane
  std::vector<std::pair<const std::vector<int>*, int>> clusters;  // members, lane
  for (const auto& members : g.layers) {
    if (members.size() < 2) continue;
    const auto [lo, hi] = std::minmax_element(members.begin(), members.end());
    std::size_t lane = 0;
    while (lane < lane_end.size() && lane_end[lane] >= *lo) ++lane;
    if (lane == lane_end.size()) lane_end.push_back(0);
    lane_end[lane] = *hi;
    clusters.emplace_back(&members, static_cast<int>(lane));
  }
  if (clusters.empty()) return 0;
  const double label_x = x0 + 10 * static_cast<double>(lane_end.size()) + 8;
  for (std::size_t k = 0; k < clusters.size(); ++k) {
    const auto& [members, lane] = clusters[k];
    const std::string colour = kColours[k % std::size(kColours)];
    const double lx = x0 + 8 + 10 * lane;
    const auto [lo, hi] = std::minmax_element(members->begin(), members->end());
    const double mid = h.cell_h / 2;
    const std::string stroke = " stroke=\"" + colour + "\" stroke-width=\"2\"";
    out += "<g class=\"cluster\">\n" + line(lx, h.y(*lo) + mid, lx, h.y(*hi) + mid, stroke);
    for (int l : *members) {
      out += line(x0, h.y(l) + mid, lx, h.y(l) + mid, stroke);
      out += text(label_x, h.y(l) + mid + 4, "group " + std::to_string(k + 1),
                  " fill=\"" + colour + "\" font-size=\"11\"");
    }
    out += "</g>\n";
  }
  return label_x - x0 + 52;
}

// A vertical colour bar for log10 KL in [lo, hi], ticks at decades.
std::string colour_bar_svg(double x, double y, double height, double lo, double hi) {
  std::string out = "<g class=\"colour-scale\">\n" +
                    text(x, y - 8, "KL (log scale)", " font-size=\"11\" fill=\"#333\"");
  constexpr int kSteps = 32;
  for (int i = 0; i < kSteps; ++i) {  // top = high KL
    out += "<rect" + attr("x", x) + attr("y", y + height * i / kSteps) + attr("width", 14) +
           attr("height", height / kSteps + 0.5) + " fill=\"" +
           heat_colour(1 - (i + 0.5) / kSteps) + "\"/>\n";
  }
  out += "<rect" + attr("x", x) + attr("y", y) + attr("width", 14) + attr("height", height) +
         " fill=\"none\" stroke=\"#666\"/>\n";
  const auto tick = [&](double value_log, const std::string& label) {
    const double ty = y + (hi - value_log) / (hi - lo) * height;
    out += line(x + 14, ty, x + 18, ty, " stroke=\"#666\"") +
           text(x + 21, ty + 4, label, " font-size=\"11\" fill=\"#333\"");
  };
  const int first = static_cast<int>(std::ceil(lo - 1e-9)),
            last = static_cast<int>(std::floor(hi + 1e-9));
  if (last - first >= 1) {
    const int step = (last - first) > 6 ? 2 : 1;
    for (int e = first; e <= last; e += step) tick(e, decade_label(e));
  } else {  // within one decade: label the ends
    tick(hi, kl_label(std::pow(10.0, hi)));
    tick(lo, kl_label(std::pow(10.0, lo)));
  }
  return out + "</g>\n";
}

// A pruned cell: faded and crossed out, with a white box under its number
// so the number stays readable through the cross.
std::string pruned_mark_svg(double x, double y, const HeatLayout& h, bool numbers) {
  const double x1 = x + 3, x2 = x + h.cell_w - 3, y1 = y + 2, y2 = y + h.cell_h - 2;
  std::string out = "<g class=\"pruned\"><rect" + attr("x", x) + attr("y", y) +
                    attr("width", h.cell_w) + attr("height", h.cell_h) +
                    " fill=\"white\" fill-opacity=\"0.5\"/><path d=\"M" + f1(x1) + "," + f1(y1) +
                    " L" + f1(x2) + "," + f1(y2) + " M" + f1(x1) + "," + f1(y2) + " L" + f1(x2) +
                    "," + f1(y1) + "\" stroke=\"#333\" stroke-width=\"1.2\"/>";
  if (numbers) {
    out += "<rect" + attr("x", x + h.cell_w / 2 - 18) + attr("y", y + h.cell_h / 2 - 6) +
           attr("width", 36) + attr("height", 12) + " fill=\"white\" fill-opacity=\"0.9\"/>";
  }
  return out + "</g>\n";
}

std::string heat_cells_svg(const Profile& p, const Grouping& g, const HeatLayout& h, double lo,
                           double hi) {
  std::string cells, marks, labels;
  const bool numbers = h.cell_h >= 13;
  for (int l = 0; l < p.layers; ++l) {
    for (std::size_t c = 0; c < p.pairs.size(); ++c) {
      const double x = h.x(c), y = h.y(l);
      const auto it = p.kl.find({l, p.pairs[c]});
      if (it == p.kl.end()) {
        cells += "<rect class=\"missing\"" + attr("x", x) + attr("y", y) + attr("width", h.cell_w) +
                 attr("height", h.cell_h) + " fill=\"#f4f4f4\" stroke=\"white\"/>\n";
        continue;
      }
      const double t = (log_kl(it->second) - lo) / (hi - lo);
      cells += "<rect class=\"cell\"" + attr("x", x) + attr("y", y) + attr("width", h.cell_w) +
               attr("height", h.cell_h) + " fill=\"" + heat_colour(t) +
               "\" stroke=\"white\"><title>" +
               xml_escape("layer " + std::to_string(l) + ", " + p.pairs[c] + ": KL " +
                          number_text(it->second)) +
               "</title></rect>\n";
      if (pruned(g, l, p.pairs[c])) {
        marks += pruned_mark_svg(x, y, h, numbers);
      }
      if (numbers) {
        const bool dark = t > 0.6 && !pruned(g, l, p.pairs[c]);
        labels += text(x + h.cell_w / 2, y + h.cell_h / 2 + 4, kl_label(it->second),
                       std::string(" text-anchor=\"middle\" font-size=\"10\" fill=\"") +
                           (dark ? "white" : "#222") + "\"");
      }
    }
  }
  return "<g class=\"heat\">\n" + cells + marks + labels + "</g>\n";
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
  out += baselines_svg(f, baselines) + frontier_svg(f, frontier);
  if (frontier.empty() && baselines.empty() && predicted.empty()) {
    out += text(f.left + f.width / 2, f.top + f.height / 2, "no configs to plot",
                " text-anchor=\"middle\" fill=\"#555\"");
  }
  out += pareto_legend(f, frontier.size(), predicted.size(), baselines.size(), budget, floored);
  return out + "</svg>\n";
}

std::string sensitivity_svg(const json& job) {
  const Profile p = read_profile(job);
  if (p.kl.empty()) return no_profile_svg(job);
  const Grouping g = read_grouping(job);
  double lo = INFINITY, hi = -INFINITY;
  bool floored = false, any_pruned = false, missing = false;
  for (const auto& [key, kl] : p.kl) {
    lo = std::min(lo, log_kl(kl));
    hi = std::max(hi, log_kl(kl));
    floored = floored || kl < kKlFloor;
    any_pruned = any_pruned || pruned(g, key.first, key.second);
  }
  missing = p.kl.size() < static_cast<std::size_t>(p.layers) * p.pairs.size();
  if (hi - lo < 1e-9) hi = lo + 1;

  HeatLayout h;
  std::size_t longest = 0;
  for (const std::string& name : p.pairs) longest = std::max(longest, name.size());
  h.top = 48 + 7.0 * 0.71 * static_cast<double>(longest) + 8;
  h.cell_h = std::clamp(520.0 / std::max(1, p.layers), 11.0, 26.0);
  const double heat_right = h.x(p.pairs.size()), heat_bottom = h.y(p.layers);

  std::string body = heat_cells_svg(p, g, h, lo, hi);
  for (std::size_t c = 0; c < p.pairs.size(); ++c) {
    const double cx = h.x(c) + h.cell_w / 2;
    body += text(0, 0, p.pairs[c],
                 " class=\"pair\" font-size=\"11\" transform=\"translate(" + f1(cx - 2) + "," +
                     f1(h.top - 6) + ") rotate(-45)\"");
  }
  const double row_font = std::min(11.0, h.cell_h - 1);
  for (int l = 0; l < p.layers; ++l) {
    body += text(h.left - 6, h.y(l) + h.cell_h / 2 + row_font / 3, "layer " + std::to_string(l),
                 " text-anchor=\"end\" font-size=\"" + f1(row_font) + "\"");
  }
  const double clusters_width = clusters_svg(g, h, heat_right + 4, body);
  const double bar_x = heat_right + 4 + clusters_width + 20;
  const double bar_height = std::clamp(heat_bottom - h.top, 120.0, 280.0);
  body += colour_bar_svg(bar_x, h.top, bar_height, lo, hi);

  std::vector<std::string> notes = {
      "Each cell: KL of that pair on that layer alone, every other layer unquantized (KV16)."};
  if (any_pruned) notes.push_back("Faded and crossed out: pruned, not searched on that layer.");
  if (clusters_width > 0)
    notes.push_back("group k: layers clustered to share one pair in the search.");
  if (missing) notes.push_back("Grey: not profiled.");
  if (floored) notes.push_back("KL below 1e-6 (or 0) is coloured as 1e-6.");
  const double notes_top = std::max(heat_bottom, h.top + bar_height) + 28;
  for (std::size_t i = 0; i < notes.size(); ++i) {
    body += text(h.left, notes_top + 16 * static_cast<double>(i), notes[i],
                 " class=\"note\" font-size=\"11\" fill=\"#444\"");
  }
  const double width = std::max(bar_x + 100, h.left + 6.2 * 86);
  const double height = notes_top + 16 * static_cast<double>(notes.size()) + 4;
  std::string out = svg_open(width, height, "layer sensitivity");
  out += text(h.left, 26, "Layer sensitivity: " + job.value("model", std::string("?")),
              " class=\"title\" font-size=\"15\" font-weight=\"bold\"");
  return out + body + "</svg>\n";
}

}  // namespace kvtune::report
