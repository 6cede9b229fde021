// `shardserve pull` and `shardserve models`: hub_sync's clients (HubSync.Sync, List, Delete).
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "cli/commands.h"
#include "grpcpp/grpcpp.h"
#include "shardserve/hub/v1/hub_sync.grpc.pb.h"

namespace shardserve::cli {
namespace {

namespace hubpb = ::shardserve::hub::v1;

std::string Bytes(double bytes) {
  const char* units[] = {"B", "kB", "MB", "GB", "TB"};
  int unit = 0;
  while (bytes >= 1000 && unit < 4) {
    bytes /= 1000;
    ++unit;
  }
  return unit == 0 ? absl::StrFormat("%.0f %s", bytes, units[unit])
                   : absl::StrFormat("%.1f %s", bytes, units[unit]);
}

std::string PhaseName(hubpb::SyncPhase phase) {
  switch (phase) {
    case hubpb::SYNC_PHASE_RESOLVING:
      return "resolving";
    case hubpb::SYNC_PHASE_DOWNLOADING:
      return "downloading";
    case hubpb::SYNC_PHASE_VERIFYING:
      return "verifying";
    case hubpb::SYNC_PHASE_QUANTIZING:
      return "quantizing";
    case hubpb::SYNC_PHASE_DONE:
      return "done";
    case hubpb::SYNC_PHASE_FAILED:
      return "failed";
    default:
      return "waiting";
  }
}

std::string SchemeText(hubpb::QuantScheme scheme) {
  switch (scheme) {
    case hubpb::QUANT_SCHEME_INT8:
      return "int8";
    case hubpb::QUANT_SCHEME_INT4:
      return "int4";
    case hubpb::QUANT_SCHEME_NF4:
      return "nf4";
    case hubpb::QUANT_SCHEME_FP8:
      return "fp8";
    default:
      return "";
  }
}

// "downloading  3/15 files  45% |#########           | 120.3 MB/268.0 MB  24.1 MB/s  eta 6s  x"
std::string ProgressLine(const hubpb::SyncProgress& p, int width) {
  std::string phase = PhaseName(p.phase());
  if (p.phase() == hubpb::SYNC_PHASE_QUANTIZING) phase += " " + SchemeText(p.scheme());
  std::string line = absl::StrFormat("%-15s", phase);
  if (p.files_total() > 0 && p.phase() != hubpb::SYNC_PHASE_QUANTIZING) {
    absl::StrAppendFormat(&line, " %u/%u files", p.files_done(), p.files_total());
  }
  if (p.bytes_total() > 0) {
    const double fraction =
        std::min(1.0, static_cast<double>(p.bytes_done()) / static_cast<double>(p.bytes_total()));
    constexpr int kBar = 24;
    const int filled = static_cast<int>(std::floor(fraction * kBar));
    absl::StrAppendFormat(&line, " %3d%% |%s%s| %s/%s", static_cast<int>(fraction * 100),
                          std::string(filled, '#'), std::string(kBar - filled, ' '),
                          Bytes(p.bytes_done()), Bytes(p.bytes_total()));
    if (p.bytes_per_second() > 0 && p.phase() == hubpb::SYNC_PHASE_DOWNLOADING) {
      const double eta = (p.bytes_total() - p.bytes_done()) / p.bytes_per_second();
      absl::StrAppendFormat(&line, " %s/s eta %.0fs", Bytes(p.bytes_per_second()), eta);
    }
  }
  if (!p.current_file().empty()) absl::StrAppend(&line, "  ", p.current_file());
  if (width > 0 && static_cast<int>(line.size()) > width - 1) line.resize(width - 1);
  return line;
}

int TerminalWidth() {
  const char* columns = std::getenv("COLUMNS");
  int width = columns != nullptr ? std::atoi(columns) : 0;
  return width > 20 ? width : 100;
}

std::string CodeName(grpc::StatusCode code) {
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

int Fail(const std::string& command, const grpc::Status& status, const std::string& target) {
  std::string message = status.error_message();
  if (status.error_code() == grpc::StatusCode::UNAVAILABLE &&
      (message.find("connect") != std::string::npos || message.empty())) {
    message = absl::StrCat("hub_sync is not reachable at ", target, " (", message, ")");
  }
  std::fprintf(stderr, "shardserve %s: %s: %s\n", command.c_str(),
               CodeName(status.error_code()).c_str(), message.c_str());
  return 1;
}

}  // namespace

int RunPull(const PullOptions& options) {
  hubpb::SyncRequest request;
  std::string repo = options.repo;
  if (!options.from_file.empty()) {
    if (options.as.empty()) {
      std::fprintf(stderr, "shardserve pull: --from-file needs --as ORG/NAME\n");
      return 2;
    }
    char resolved[PATH_MAX];
    if (realpath(options.from_file.c_str(), resolved) == nullptr) {
      std::fprintf(stderr, "shardserve pull: %s: cannot be read\n", options.from_file.c_str());
      return 1;
    }
    request.set_import_gguf(resolved);
    repo = options.as;
  } else if (repo.empty()) {
    std::fprintf(stderr, "shardserve pull: name a repository (ORG/NAME[@REVISION])\n");
    return 2;
  }
  if (const size_t at = repo.find('@'); at != std::string::npos) {
    request.set_revision(repo.substr(at + 1));
    repo.resize(at);
  }
  request.set_repo(repo);
  for (const std::string& pattern : options.include) request.add_allow_patterns(pattern);
  for (const std::string& pattern : options.exclude) request.add_ignore_patterns(pattern);
  for (const std::string& list : options.quantize) {
    for (absl::string_view name : absl::StrSplit(list, ',', absl::SkipWhitespace())) {
      name = absl::StripAsciiWhitespace(name);
      hubpb::QuantScheme scheme = hubpb::QUANT_SCHEME_UNSPECIFIED;
      for (auto candidate : {hubpb::QUANT_SCHEME_INT8, hubpb::QUANT_SCHEME_INT4,
                             hubpb::QUANT_SCHEME_NF4, hubpb::QUANT_SCHEME_FP8}) {
        if (SchemeText(candidate) == name) scheme = candidate;
      }
      if (scheme == hubpb::QUANT_SCHEME_UNSPECIFIED) {
        std::fprintf(stderr, "shardserve pull: --quantize: '%s' is not int8, int4 or nf4\n",
                     std::string(name).c_str());
        return 2;
      }
      request.add_quantize(scheme);
    }
  }
  request.set_verify_existing(options.verify);

  auto channel = grpc::CreateChannel(options.target, grpc::InsecureChannelCredentials());
  hubpb::HubSync::Stub stub(channel);
  grpc::ClientContext context;
  auto reader = stub.Sync(&context, request);
  const bool tty = isatty(STDERR_FILENO) != 0 && !options.quiet;
  const int width = TerminalWidth();
  hubpb::SyncProgress progress, last;
  hubpb::SyncPhase printed_phase = hubpb::SYNC_PHASE_UNSPECIFIED;
  absl::Time last_line = absl::InfinitePast();
  uint64_t snapshot_bytes = 0;  // bytes_total is the quantizer's while QUANTIZING
  while (reader->Read(&progress)) {
    last = progress;
    if (progress.phase() != hubpb::SYNC_PHASE_QUANTIZING &&
        progress.phase() != hubpb::SYNC_PHASE_DONE) {
      snapshot_bytes = progress.bytes_total();
    }
    if (options.quiet) continue;
    if (tty) {
      std::fprintf(stderr, "\r\033[K%s", ProgressLine(progress, width).c_str());
    } else if (progress.phase() != printed_phase || absl::Now() - last_line > absl::Seconds(2)) {
      // Logs and pipes get a line per phase and one every 2 s, never a carriage return.
      std::fprintf(stderr, "%s\n", ProgressLine(progress, 0).c_str());
      printed_phase = progress.phase();
      last_line = absl::Now();
    }
    std::fflush(stderr);
  }
  if (tty) std::fprintf(stderr, "\n");
  grpc::Status status = reader->Finish();
  if (!status.ok()) return Fail("pull", status, options.target);
  std::string artifacts;
  for (int scheme : request.quantize()) {
    absl::StrAppend(&artifacts, artifacts.empty() ? ", quantized: " : " ",
                    SchemeText(static_cast<hubpb::QuantScheme>(scheme)));
  }
  std::printf("%s@%s %s (%u files, %s%s)\n", repo.c_str(),
              request.revision().empty() ? "main" : request.revision().c_str(),
              last.commit().c_str(), last.files_total(),
              Bytes(static_cast<double>(snapshot_bytes)).c_str(), artifacts.c_str());
  return 0;
}

int RunModels(const ModelsOptions& options) {
  auto channel = grpc::CreateChannel(options.target, grpc::InsecureChannelCredentials());
  hubpb::HubSync::Stub stub(channel);
  if (!options.remove.empty()) {
    hubpb::DeleteRequest request;
    std::string repo = options.remove;
    if (const size_t at = repo.find('@'); at != std::string::npos) {
      request.set_revision(repo.substr(at + 1));
      repo.resize(at);
    }
    request.set_repo(repo);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    hubpb::DeleteResponse response;
    grpc::Status status = stub.Delete(&context, request, &response);
    if (!status.ok()) return Fail("models", status, options.target);
    std::printf("removed %s (%d paths, %s freed)\n", options.remove.c_str(),
                response.removed_size(), Bytes(response.freed_bytes()).c_str());
    return 0;
  }
  hubpb::ListRequest request;
  request.set_repo_prefix(options.prefix);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  hubpb::ListResponse response;
  grpc::Status status = stub.List(&context, request, &response);
  if (!status.ok()) return Fail("models", status, options.target);
  std::printf("%-44s %-12s %-14s %6s %10s  %s\n", "REPOSITORY", "COMMIT", "REFS", "FILES", "SIZE",
              "QUANTIZED");
  for (const hubpb::CachedRepo& repo : response.repos()) {
    for (const hubpb::CachedRevision& revision : repo.revisions()) {
      std::string artifacts;
      for (const hubpb::CachedArtifact& artifact : revision.artifacts()) {
        absl::StrAppend(&artifacts, artifacts.empty() ? "" : " ", SchemeText(artifact.scheme()),
                        " (", Bytes(artifact.size_bytes()), ")");
      }
      std::printf("%-44s %-12s %-14s %6u %10s  %s\n", repo.repo().c_str(),
                  revision.commit().substr(0, 12).c_str(),
                  absl::StrJoin(revision.refs(), ",").c_str(), revision.files(),
                  Bytes(revision.size_bytes()).c_str(), artifacts.c_str());
    }
  }
  return 0;
}

}  // namespace shardserve::cli
