// The write side of one server stream of ChatChunks, shared by the worker's Generate / Chat
// reactor and the gateway's Chat reactor. Chunks arrive from threads that must not block (the
// engine loop, gRPC client callbacks); Pump lets exactly one thread at a time drive the stream:
// start the next write (chunks queued meanwhile are coalesced per choice index into one write),
// or Finish once everything queued is written. The last chunk and an OK status go out together
// (StartWriteAndFinish).
//
// After Finish the reactor may be deleted (its OnDone), so the writer is held by shared_ptr by
// everything that pushes, and the reactor pointer is only used by the driving thread before
// `finished` is set. Thread-safe.
#ifndef SHARDSERVE_WORKER_RPC_CHUNK_WRITER_H_
#define SHARDSERVE_WORKER_RPC_CHUNK_WRITER_H_

#include <deque>
#include <functional>
#include <optional>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/grpcpp.h"
#include "shardserve/chat/v1/chat.pb.h"

namespace shardserve {

class ChunkWriter {
 public:
  using Reactor = grpc::ServerWriteReactor<chat::v1::ChatChunk>;
  struct Hooks {
    // Runs on the driving thread just before the stream's first write (e.g. to stamp the
    // request id and model on the first chunk).
    std::function<void(chat::v1::ChatChunk*)> before_first_write;
    // Runs on the driving thread just before Finish without a chunk (e.g. trailing metadata).
    std::function<void(const grpc::Status&)> before_finish;
  };

  ChunkWriter(Reactor* reactor, Hooks hooks) : reactor_(reactor), hooks_(std::move(hooks)) {}

  // Queues `chunk` (merged into the last queued chunk of the same index) and, when given, the
  // stream's final status (the first status set wins), then pumps.
  void Push(chat::v1::ChatChunk chunk, std::optional<grpc::Status> final_status = std::nullopt);
  // Sets the final status (the first wins) and pumps: the stream finishes after what is queued.
  void Finish(grpc::Status status);
  // The client is gone (OnCancel) or stopped reading (a failed write): queued chunks are dropped
  // and the stream finishes with `status` unless a status was set before. Call Pump after.
  void Break(grpc::Status status);
  // From the reactor's OnWriteDone: the write in flight ended. False when it failed (the stream
  // is then broken with CANCELLED "the client stopped reading the stream"). Pumps.
  bool WriteDone(bool ok);
  // Starts the next write or finishes, unless another thread is driving the stream.
  void Pump();

 private:
  void BreakLocked(grpc::Status status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Reactor* const reactor_;  // alive until finished_ (see above)
  const Hooks hooks_;
  absl::Mutex mu_;
  std::deque<chat::v1::ChatChunk> pending_ ABSL_GUARDED_BY(mu_);
  std::optional<grpc::Status> finish_status_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;   // a thread drives the stream (a write in flight)
  bool finished_ ABSL_GUARDED_BY(mu_) = false;  // Finish was called
  bool broken_ ABSL_GUARDED_BY(mu_) = false;    // cancelled or a write failed: write no more
  bool first_written_ ABSL_GUARDED_BY(mu_) = false;
  chat::v1::ChatChunk current_;  // the chunk being written (the driving thread's)
};

}  // namespace shardserve

#endif  // SHARDSERVE_WORKER_RPC_CHUNK_WRITER_H_
