#include "kvstash/common/byte_size.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <map>
#include <stdexcept>
#include <string>

#include "absl/strings/str_cat.h"

namespace kvstash {

Result<uint64_t> ParseByteSize(std::string_view text) {
  std::string s;
  for (char c : text) {
    if (!std::isspace(static_cast<unsigned char>(c))) s.push_back(c);
  }
  auto bad = [&] {
    return absl::InvalidArgumentError(absl::StrCat("'", std::string(text),
                                                   "' is not a byte size (e.g. 4096, 512MiB, "
                                                   "4GiB)"));
  };
  size_t i = 0;
  while (i < s.size() && (std::isdigit(static_cast<unsigned char>(s[i])) || s[i] == '.')) ++i;
  if (i == 0) return bad();
  std::string number = s.substr(0, i);
  std::string unit = s.substr(i);
  for (char& c : unit) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  static const std::map<std::string, double> kUnits = {
      {"", 1.0},       {"b", 1.0},     {"k", 0x1p10},   {"kib", 0x1p10}, {"m", 0x1p20},
      {"mib", 0x1p20}, {"g", 0x1p30},  {"gib", 0x1p30}, {"t", 0x1p40},   {"tib", 0x1p40},
      {"kb", 1e3},     {"mb", 1e6},    {"gb", 1e9},     {"tb", 1e12},    {"ki", 0x1p10},
      {"mi", 0x1p20},  {"gi", 0x1p30}, {"ti", 0x1p40}};
  auto it = kUnits.find(unit);
  if (it == kUnits.end()) return bad();
  if (std::count(number.begin(), number.end(), '.') > 1) return bad();
  if (number.find('.') == std::string::npos && it->second == 1.0) {
    // Exact path for plain integers (doubles lose precision above 2^53).
    try {
      return static_cast<uint64_t>(std::stoull(number));
    } catch (const std::out_of_range&) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", std::string(text), "' overflows 64 bits"));
    } catch (const std::exception&) {
      return bad();
    }
  }
  double value;
  try {
    value = std::stod(number) * it->second;
  } catch (const std::exception&) {
    return bad();
  }
  if (!(value >= 0) || value >= 0x1p64) {
    return absl::InvalidArgumentError(absl::StrCat("'", std::string(text), "' overflows 64 bits"));
  }
  return static_cast<uint64_t>(std::llround(value));
}

std::string FormatByteSize(uint64_t bytes) {
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 6) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), u == 0 ? "%.0f %s" : "%.1f %s", v, kUnits[u]);
  return buf;
}

}  // namespace kvstash
