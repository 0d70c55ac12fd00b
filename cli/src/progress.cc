#include "progress.h"

#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <utility>

namespace kvstash::cli {
namespace {

std::string Amount(double v, ProgressUnit unit) {
  char buf[32];
  if (unit == ProgressUnit::kItems) {
    std::snprintf(buf, sizeof(buf), "%.0f", v);
    return buf;
  }
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (v >= 1024.0 && u < 4) {
    v /= 1024.0;
    ++u;
  }
  std::snprintf(buf, sizeof(buf), u == 0 ? "%.0f %s" : "%.1f %s", v, kUnits[u]);
  return buf;
}

std::string Duration(double seconds) {
  const uint64_t s = static_cast<uint64_t>(std::llround(std::max(0.0, seconds)));
  char buf[32];
  if (s >= 3600) {
    std::snprintf(buf, sizeof(buf), "%" PRIu64 ":%02" PRIu64 ":%02" PRIu64, s / 3600, s / 60 % 60,
                  s % 60);
  } else {
    std::snprintf(buf, sizeof(buf), "%" PRIu64 ":%02" PRIu64, s / 60, s % 60);
  }
  return buf;
}

}  // namespace

Progress::Progress(std::string label, uint64_t total, ProgressUnit unit, std::FILE* out,
                   std::chrono::milliseconds delay)
    : label_(std::move(label)),
      total_(total),
      unit_(unit),
      out_(out),
      enabled_(out != nullptr && isatty(fileno(out)) == 1),
      delay_(delay),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

Progress::~Progress() { Finish(); }

std::string Progress::Format(const std::string& label, uint64_t done, uint64_t total,
                             ProgressUnit unit, double seconds, int width) {
  std::string line = label;
  const double rate = seconds > 0 ? static_cast<double>(done) / seconds : 0.0;
  const std::string per = unit == ProgressUnit::kBytes ? "/s" : " /s";
  if (total > 0) {
    const double frac = std::min(1.0, static_cast<double>(done) / static_cast<double>(total));
    const int filled = static_cast<int>(frac * width);
    line += "  [" + std::string(filled, '#') + std::string(width - filled, '-') + "]";
    char pct[16];
    std::snprintf(pct, sizeof(pct), " %3d%%", static_cast<int>(frac * 100.0));
    line += pct;
    line += "  " + Amount(static_cast<double>(done), unit) + " of " +
            Amount(static_cast<double>(total), unit);
    line += "  " + Amount(rate, unit) + per;
    if (done >= total) {
      line += "  in " + Duration(seconds);
    } else if (rate > 0) {
      line += "  ETA " + Duration(static_cast<double>(total - done) / rate);
    } else {
      line += "  ETA --:--";
    }
  } else {
    line += "  " + Amount(static_cast<double>(done), unit) + "  " + Amount(rate, unit) + per;
  }
  return line;
}

void Progress::Update(uint64_t done) {
  done_ = done;
  if (!enabled_ || finished_) return;
  const auto now = std::chrono::steady_clock::now();
  if (now - start_ < delay_) return;
  if (drawn_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
  last_draw_ = now;
  Draw(false);
}

void Progress::Finish() {
  if (finished_) return;
  finished_ = true;
  if (enabled_ && drawn_) Draw(true);
}

void Progress::Draw(bool final) {
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const std::string line = Format(label_, done_, total_, unit_, seconds);
  // \r and clear-to-end-of-line: redraw in place; the final state keeps its line.
  std::fprintf(out_, "\r%s\033[K%s", line.c_str(), final ? "\n" : "");
  std::fflush(out_);
  drawn_ = true;
}

}  // namespace kvstash::cli
