// The report's sensitivity picture (sensitivity.svg): the profile's KL of
// each pair on each layer alone as a heat map, with the pruned cells and the
// layer groups of the search.
#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "report_svg.h"

namespace kvtune::report {
namespace {

using namespace svg;

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
