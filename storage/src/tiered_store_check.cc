// TieredStore: checking committed payloads against their crc32c after Commit (object_store.h,
// "Checksums of new objects").
//
// Why after: over shared memory the writer copies the payload into the arena itself and already
// computed its crc32c while copying; a second pass in Commit doubled the bytes a put reads and
// kept the writer waiting for it. The check still has to happen, because the arena is writable by
// every client, but nobody needs its answer before the first reader or the first SSD write.
#include <sched.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kvstash/common/crc32c.h"
#include "spdlog/spdlog.h"
#include "tiered_store.h"

namespace kvstash::storage {
namespace {
constexpr int kCheckerNice = 10;
// The background checker yields its CPU after each piece: a thread that answers clients and polls
// for their next call yields to the checker, and must get the CPU back within microseconds, not
// after the checker's whole timeslice.
constexpr uint64_t kCheckPiece = 64 << 10;
}  // namespace

Status TieredStore::CheckArenaBytes(ObjectRec& rec, bool yielding) {
  ArenaCheck state = rec.arena_check.load(std::memory_order_acquire);
  if (state == ArenaCheck::kPending) {
    std::call_once(rec.arena_check_once, [&] {
      // Stable without the shard lock: the caller's lease or io_ref keeps the rec in the arena,
      // and info.payload_crc32c changes only for recs that left it.
      const uint8_t* bytes = arena_->base() + rec.arena_offset;
      uint32_t crc = 0;
      if (yielding) {
        for (uint64_t off = 0; off < rec.info.payload_bytes; off += kCheckPiece) {
          crc = Crc32cExtend(crc, bytes + off, std::min(kCheckPiece, rec.info.payload_bytes - off));
          ::sched_yield();
        }
      } else {
        crc = Crc32c(bytes, rec.info.payload_bytes);
      }
      const bool ok = crc == rec.info.payload_crc32c;
      if (!ok) {
        metrics_.checksum_failures->Increment();
        spdlog::error(
            "kvstash storage: object {} does not match the crc32c it was committed with; "
            "removed before anyone read it",
            rec.name.storage_key.ToHex());
      }
      rec.arena_check.store(ok ? ArenaCheck::kPassed : ArenaCheck::kFailed,
                            std::memory_order_release);
    });
    state = rec.arena_check.load(std::memory_order_acquire);
  }
  if (state == ArenaCheck::kFailed) {
    return absl::DataLossError(absl::StrCat("object ", rec.name.storage_key.ToHex(),
                                            " does not match its committed crc32c"));
  }
  return OkStatus();
}

void TieredStore::QueueCheck(std::shared_ptr<ObjectRec> rec) {
  {
    MutexLock lock(&check_mu_);
    check_queue_.push_back(std::move(rec));
  }
  check_cv_.Signal();
}

void TieredStore::DropFailedLease(const std::shared_ptr<ObjectRec>& rec) {
  Deferred later;
  {
    Shard& shard = ShardFor(rec->name.storage_key);
    MutexLock lock(&shard.mu);
    --rec->leases;
    if (rec->visible) HideLocked(shard, rec, later);
    UpdatePoliciesLocked(shard, *rec);
    MaybeFreeArenaLocked(shard, *rec);
  }
  RunDeferred(later);
}

void TieredStore::CheckerLoop() {
  // The check is never urgent (a reader that comes first checks by itself), so the checker yields
  // the CPU to the threads that answer clients: on a machine without an idle core it otherwise
  // delays their replies by whole scheduler slices. Best effort; Linux applies nice per thread.
  (void)::setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), kCheckerNice);
  for (;;) {
    std::shared_ptr<ObjectRec> rec;
    {
      MutexLock lock(&check_mu_);
      while (!checker_stop_ && check_queue_.empty()) check_cv_.Wait(&check_mu_);
      if (check_queue_.empty()) return;  // stopping, and every queued check is done
      rec = std::move(check_queue_.front());
      check_queue_.pop_front();
    }
    Shard& shard = ShardFor(rec->name.storage_key);
    {
      // An io_ref keeps the bytes in the arena while they are read. A rec evicted, deleted or
      // checked by a reader meanwhile needs nothing more.
      MutexLock lock(&shard.mu);
      if (!rec->visible || !rec->in_cpu ||
          rec->arena_check.load(std::memory_order_acquire) != ArenaCheck::kPending) {
        continue;
      }
      ++rec->io_refs;
      UpdatePoliciesLocked(shard, *rec);
    }
    const bool passed = CheckArenaBytes(*rec, /*yielding=*/true).ok();
    Deferred later;
    {
      MutexLock lock(&shard.mu);
      --rec->io_refs;
      if (!passed && rec->visible) HideLocked(shard, rec, later);
      UpdatePoliciesLocked(shard, *rec);
      MaybeFreeArenaLocked(shard, *rec);
    }
    RunDeferred(later);
    SignalArena();  // the rec may have become evictable, or its bytes were freed
  }
}

}  // namespace kvstash::storage
