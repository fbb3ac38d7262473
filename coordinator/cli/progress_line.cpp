// The progress of a running job as the CLI shows it: one live line on a
// terminal, plain lines (one per phase) when stderr is a file or a pipe.
#include <cstdio>
#include <iostream>

#include "commands.h"

namespace kvtune::cli {

ProgressLine::ProgressLine(bool terminal)
    : terminal_(terminal), start_(std::chrono::steady_clock::now()) {}

void ProgressLine::update(const nlohmann::json& summary) {
  const nlohmann::json& p = summary.value("progress", nlohmann::json::object());
  const int done = p.value("done", 0), total = p.value("total", 0);
  const std::string phase = p.value("phase", summary.value("state", ""));
  const auto now = std::chrono::steady_clock::now();
  if (first_done_ < 0) first_done_ = done;
  const double seconds = std::chrono::duration<double>(now - start_).count();
  const double rate = seconds > 0.5 ? (done - first_done_) / seconds : 0.0;
  char text[128];
  std::snprintf(text, sizeof text, ", %d/%d evaluations", done, total);
  std::string line = phase + text;
  if (rate > 0) {
    std::snprintf(text, sizeof text, ", %.1f/s, ETA %.0f s", rate,
                  total > done ? (total - done) / rate : 0.0);
    line += text;
  }
  if (p.contains("best")) {
    const nlohmann::json& b = p["best"];
    std::string layers = config_display_name(b.value("layers", ""));
    if (terminal_ && layers.size() > 40) layers = layers.substr(0, 37) + "...";
    std::snprintf(text, sizeof text, " (%.2f bits) KL %.5f", b.value("avg_bits", 0.0),
                  b.value("kl", 0.0));
    line += "; best within budget " + layers + text;  // layers may be long: not in `text`
  }
  if (terminal_) {
    if (line == last_line_) return;
    // Pad over what the previous line left.
    std::cerr << "\r" << line
              << std::string(last_line_.size() > line.size() ? last_line_.size() - line.size() : 0,
                             ' ')
              << std::flush;
    last_line_ = line;
    return;
  }
  if (phase == last_phase_) return;
  std::cerr << "kvtune: " << line << "\n";
  last_phase_ = phase;
}

void ProgressLine::finish(const nlohmann::json& summary) {
  if (terminal_ && !last_line_.empty()) {
    std::cerr << "\r" << std::string(last_line_.size(), ' ') << "\r" << std::flush;
  }
  last_line_.clear();
  // A job can finish between two polls: its final state (the phase of a
  // finished job's summary) and best config would go unsaid in a log.
  if (!terminal_ && summary.is_object()) update(summary);
}

}  // namespace kvtune::cli
