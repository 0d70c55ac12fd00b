#include "arena.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>

#include "absl/strings/str_cat.h"

namespace kvstash::storage {
namespace {

Status ErrnoStatus(const char* what, int err) {
  std::string msg = absl::StrCat(what, ": ", std::strerror(err));
  if (err == ENOMEM || err == ENOSPC || err == EFBIG) return absl::ResourceExhaustedError(msg);
  return absl::InternalError(msg);
}

uint64_t RandomGeneration() {
  std::random_device rd;
  uint64_t g = 0;
  while (g == 0) g = (uint64_t{rd()} << 32) ^ rd();
  return g;
}

}  // namespace

Result<std::unique_ptr<Arena>> Arena::Create(uint64_t bytes) {
  bytes -= bytes % 4096;
  if (bytes == 0) return absl::InvalidArgumentError("cpu_capacity_bytes must be at least 4096");
  int fd = memfd_create("kvstash-arena", MFD_CLOEXEC);
  if (fd < 0) return ErrnoStatus("memfd_create", errno);
  if (ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
    int err = errno;
    close(fd);
    return ErrnoStatus("ftruncate arena", err);
  }
  void* base = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (base == MAP_FAILED) {
    int err = errno;
    close(fd);
    return ErrnoStatus("mmap arena", err);
  }
  return std::unique_ptr<Arena>(
      new Arena(fd, static_cast<uint8_t*>(base), bytes, RandomGeneration()));
}

Arena::~Arena() {
  munmap(base_, bytes_);
  close(fd_);
}

}  // namespace kvstash::storage
