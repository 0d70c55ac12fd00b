#include "progress.h"

#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <condition_variable>
#include <mutex>
#include <thread>
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

// Items per second keep two decimals below 10 (a turn every 4 s is 0.25 /s, not 0).
std::string Rate(double v, ProgressUnit unit) {
  if (unit == ProgressUnit::kBytes) return Amount(v, unit) + "/s";
  char buf[32];
  std::snprintf(buf, sizeof(buf), v > 0 && v < 10 ? "%.2f /s" : "%.0f /s", v);
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
  if (total > 0) {
    const double frac = std::min(1.0, static_cast<double>(done) / static_cast<double>(total));
    const int filled = static_cast<int>(frac * width);
    line += "  [" + std::string(filled, '#') + std::string(width - filled, '-') + "]";
    char pct[16];
    std::snprintf(pct, sizeof(pct), " %3d%%", static_cast<int>(frac * 100.0));
    line += pct;
    line += "  " + Amount(static_cast<double>(done), unit) + " of " +
            Amount(static_cast<double>(total), unit);
    line += "  " + Rate(rate, unit);
    if (done >= total) {
      line += "  in " + Duration(seconds);
    } else if (rate > 0) {
      line += "  ETA " + Duration(static_cast<double>(total - done) / rate);
    } else {
      line += "  ETA --:--";
    }
  } else {
    line += "  " + Amount(static_cast<double>(done), unit) + "  " + Rate(rate, unit);
  }
  return line;
}

std::string Progress::FormatBusy(const std::string& label, uint64_t total, ProgressUnit unit,
                                 double seconds, int width) {
  // A 3-character marker sweeping across the bar and back, one step per 100 ms.
  const int span = std::max(1, width - 3);
  const int64_t step = static_cast<int64_t>(std::max(0.0, seconds) * 10.0) % (2 * span);
  const int pos = static_cast<int>(step < span ? step : 2 * span - step);
  std::string bar(width, '-');
  bar.replace(pos, std::min(3, width), std::string("<=>").substr(0, std::min(3, width)));
  std::string line = label + "  [" + bar + "]";
  if (total > 0) line += "  " + Amount(static_cast<double>(total), unit);
  return line + "  " + Duration(seconds);
}

void Progress::Update(uint64_t done) {
  done_ = done;
  if (!enabled_ || finished_) return;
  const auto now = std::chrono::steady_clock::now();
  if (now - start_ < delay_) return;
  if (on_screen_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
  last_draw_ = now;
  Draw(false);
}

void Progress::Clear() {
  if (!on_screen_) return;
  std::fputs("\r\033[K", out_);
  std::fflush(out_);
  on_screen_ = false;
}

void Progress::Finish() {
  if (finished_) return;
  finished_ = true;
  if (enabled_ && on_screen_) Draw(true);
}

void Progress::RunBusy(const std::function<void()>& work) {
  if (!enabled_ || finished_) {
    work();
    done_ = total_;
    return;
  }
  std::mutex mu;
  std::condition_variable cv;
  bool stop = false;
  std::thread ticker([&] {
    std::unique_lock<std::mutex> lock(mu);
    auto next = start_ + delay_;
    while (!cv.wait_until(lock, next, [&] { return stop; })) {
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
      DrawLine(FormatBusy(label_, total_, unit_, seconds), false);
      next = std::chrono::steady_clock::now() + std::chrono::milliseconds(100);
    }
  });
  work();
  {
    std::lock_guard<std::mutex> lock(mu);
    stop = true;
  }
  cv.notify_one();
  ticker.join();
  done_ = total_;
  if (on_screen_) Draw(false);
}

void Progress::Draw(bool final) {
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  DrawLine(Format(label_, done_, total_, unit_, seconds), final);
}

void Progress::DrawLine(const std::string& line, bool final) {
  // \r and clear-to-end-of-line: redraw in place; the final state keeps its line.
  std::fprintf(out_, "\r%s\033[K%s", line.c_str(), final ? "\n" : "");
  std::fflush(out_);
  on_screen_ = !final;
}

}  // namespace kvstash::cli
