// WriteReservation and ReadLease: RAII handles over arena bytes.
#include "client_core.h"
#include "kvstash/common/crc32c.h"

namespace kvstash::client {

// ---- WriteReservation -------------------------------------------------------

WriteReservation::WriteReservation(WriteReservation&& other) noexcept { *this = std::move(other); }

WriteReservation& WriteReservation::operator=(WriteReservation&& other) noexcept {
  if (this != &other) {
    if (!done_) (void)Abort();
    core_ = std::move(other.core_);
    mapping_ = std::move(other.mapping_);
    name_ = std::move(other.name_);
    info_ = other.info_;
    id_ = other.id_;
    data_ = other.data_;
    done_ = other.done_;
    other.Reset();
  }
  return *this;
}

WriteReservation::~WriteReservation() {
  if (!done_) (void)Abort();
}

void WriteReservation::Reset() {
  core_.reset();
  mapping_.reset();
  id_ = 0;
  data_ = {};
  done_ = true;
}

Status WriteReservation::Commit(bool durable) {
  if (done_) return absl::FailedPreconditionError("reservation already committed or aborted");
  return CommitWithCrc(Crc32c(data_.data(), data_.size()), durable);
}

Status WriteReservation::CommitWithCrc(uint32_t payload_crc32c, bool durable) {
  if (done_) return absl::FailedPreconditionError("reservation already committed or aborted");
  Status s = core_->CommitReservation(id_, payload_crc32c, durable);
  // This handle is spent either way. A failed Commit usually settles the reservation already;
  // where it does not (transport errors, durable without an SSD tier) the Abort frees the space
  // now instead of at expiry, and is harmless otherwise.
  if (!s.ok()) (void)core_->AbortReservation(id_);
  Reset();
  return s;
}

Status WriteReservation::Abort() {
  if (done_) return absl::FailedPreconditionError("reservation already committed or aborted");
  Status s = core_->AbortReservation(id_);
  Reset();
  return s;
}

// ---- ReadLease --------------------------------------------------------------

ReadLease::ReadLease(ReadLease&& other) noexcept { *this = std::move(other); }

ReadLease& ReadLease::operator=(ReadLease&& other) noexcept {
  if (this != &other) {
    if (!done_) {
      if (id_ != 0) core_->ReleaseLeaseAsync(id_);
      Reset();
    }
    core_ = std::move(other.core_);
    mapping_ = std::move(other.mapping_);
    info_ = other.info_;
    served_from_ = other.served_from_;
    id_ = other.id_;
    // A moved vector keeps its buffer, so data_ still points into copy_ when it did before.
    copy_ = std::move(other.copy_);
    data_ = other.data_;
    expires_at_ = other.expires_at_;
    done_ = other.done_;
    other.Reset();
  }
  return *this;
}

ReadLease::~ReadLease() {
  if (!done_) {
    if (id_ != 0) core_->ReleaseLeaseAsync(id_);
    Reset();
  }
}

void ReadLease::Reset() {
  core_.reset();
  mapping_.reset();
  id_ = 0;
  data_ = {};
  copy_ = {};
  done_ = true;
}

Status ReadLease::Release() {
  if (done_) return absl::FailedPreconditionError("lease already released");
  // id_ 0: a streamed copy (KvClient::AcquireMany), which the service holds no lease for.
  Status s = id_ != 0 ? core_->ReleaseLease(id_) : OkStatus();
  Reset();
  return s;
}

}  // namespace kvstash::client
