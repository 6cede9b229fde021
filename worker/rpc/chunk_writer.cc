#include "worker/rpc/chunk_writer.h"

#include <utility>

#include "worker/rpc/chat_validation.h"

namespace shardserve {

void ChunkWriter::Push(chat::v1::ChatChunk chunk, std::optional<grpc::Status> final_status) {
  {
    absl::MutexLock lock(&mu_);
    if (finished_ || broken_) return;
    if (!pending_.empty() && pending_.back().index() == chunk.index()) {
      MergeChatChunk(&pending_.back(), std::move(chunk));
    } else {
      pending_.push_back(std::move(chunk));
    }
    if (final_status.has_value() && !finish_status_.has_value()) {
      finish_status_ = std::move(final_status);
    }
  }
  Pump();
}

void ChunkWriter::Finish(grpc::Status status) {
  {
    absl::MutexLock lock(&mu_);
    if (!finish_status_.has_value()) finish_status_ = std::move(status);
  }
  Pump();
}

void ChunkWriter::Break(grpc::Status status) {
  absl::MutexLock lock(&mu_);
  BreakLocked(std::move(status));
}

void ChunkWriter::BreakLocked(grpc::Status status) {
  broken_ = true;
  pending_.clear();
  if (!finish_status_.has_value()) finish_status_ = std::move(status);
}

bool ChunkWriter::WriteDone(bool ok) {
  {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) {
      BreakLocked(
          grpc::Status(grpc::StatusCode::CANCELLED, "the client stopped reading the stream"));
    }
  }
  Pump();
  return ok;
}

void ChunkWriter::Pump() {
  bool write = false, last = false, first = false;
  grpc::Status status;
  {
    absl::MutexLock lock(&mu_);
    if (writing_ || finished_) return;
    if (!pending_.empty() && !broken_) {
      current_ = std::move(pending_.front());
      pending_.pop_front();
      first = !first_written_;
      first_written_ = true;
      writing_ = true;
      write = true;
      last = pending_.empty() && finish_status_.has_value() && finish_status_->ok();
      if (last) finished_ = true;  // written together with the OK status
      status = last ? *finish_status_ : grpc::Status::OK;
    } else if (finish_status_.has_value()) {
      finished_ = true;
      status = *finish_status_;
    } else {
      return;
    }
  }
  // Only this thread drives the stream now, and the reactor lives until Finish is called.
  if (first && hooks_.before_first_write) hooks_.before_first_write(&current_);
  if (write && last) {
    reactor_->StartWriteAndFinish(&current_, grpc::WriteOptions(), status);
  } else if (write) {
    reactor_->StartWrite(&current_);
  } else {
    if (hooks_.before_finish) hooks_.before_finish(status);
    reactor_->Finish(status);
  }
}

}  // namespace shardserve
