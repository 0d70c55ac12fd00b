// A one-line progress bar for long CLI work (reading and writing large files in put/get, bench,
// the turns of workload, codec encode):
// "label  [#####-----]  50%  48.0 MiB of 96.0 MiB  12.0 MiB/s  ETA 0:04". It draws only on a
// terminal, and only once the work has taken longer than `delay`: when the stream is not a TTY
// (a pipe, a file, CI logs) it writes nothing, so scripted output stays what it was. A command
// that prints while a bar is up calls Clear() first, so that no piece of the bar is left on the
// printed line; the next Update() draws it again below.
//
// Threading: one Progress is used by one thread at a time (RunBusy's helper thread is the only
// one drawing while it runs). Errors: none; drawing failures are ignored.
#ifndef KVSTASH_CLI_PROGRESS_H_
#define KVSTASH_CLI_PROGRESS_H_

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>

namespace kvstash::cli {

enum class ProgressUnit { kBytes, kItems };

class Progress {
 public:
  // `total` 0: unknown (no percentage, no ETA). Enabled only when `out` is a terminal; draws
  // nothing before `delay` has passed, so quick work shows no bar at all.
  Progress(std::string label, uint64_t total, ProgressUnit unit = ProgressUnit::kBytes,
           std::FILE* out = stderr,
           std::chrono::milliseconds delay = std::chrono::milliseconds(500));
  ~Progress();  // Finish()
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  bool enabled() const { return enabled_; }
  // Sets the amount done (not an increment); redraws at most every 100 ms.
  void Update(uint64_t done);
  void Add(uint64_t n) { Update(done_ + n); }
  // Erases the bar from its line if it is drawn (cursor back at the start of an empty line), so
  // the caller can print; the next Update() draws it again. No-op when nothing is drawn.
  void Clear();
  // Draws the final state and ends the line if the bar is on screen (so after Clear() and an
  // error message, nothing more is drawn). Idempotent.
  void Finish();

  // For work that reports no progress of its own (one library call): runs `work` on the calling
  // thread while a helper thread redraws the bar with the time elapsed (FormatBusy), then sets
  // done to total. The rate shows once the work has ended; there is no ETA. `work` must not use
  // this Progress. Off a terminal it just runs `work`.
  void RunBusy(const std::function<void()>& work);

  // The line for `done` of `total` after `seconds` (pure; what Update draws, without the \r).
  // `width` is the bar's width in characters.
  static std::string Format(const std::string& label, uint64_t done, uint64_t total,
                            ProgressUnit unit, double seconds, int width = 24);
  // The line of RunBusy while the work runs: a marker that moves with time instead of a fill,
  // `total` and the time elapsed: "label  [------<=>-------]  96.0 MiB  0:04".
  static std::string FormatBusy(const std::string& label, uint64_t total, ProgressUnit unit,
                                double seconds, int width = 24);

 private:
  void Draw(bool final);
  void DrawLine(const std::string& line, bool final);

  std::string label_;
  uint64_t total_;
  ProgressUnit unit_;
  std::FILE* out_;
  bool enabled_;
  std::chrono::milliseconds delay_;
  bool on_screen_ = false;  // the bar is on the current line (drawn, not cleared or finished)
  bool finished_ = false;
  uint64_t done_ = 0;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
};

}  // namespace kvstash::cli

#endif  // KVSTASH_CLI_PROGRESS_H_
