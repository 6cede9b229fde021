#include "worker/weights/safetensors_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <random>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "worker/weights/safetensors.h"

namespace shardserve {
namespace {

absl::string_view SV(std::string_view s) { return absl::string_view(s.data(), s.size()); }

absl::Status ErrnoError(absl::string_view what, const std::string& path, int err) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", std::strerror(err)));
}

// True when `dtype` is one of the plain safetensors element types.
bool IsSafetensorsDType(DType dtype) {
  const DTypeInfo& info = GetDTypeInfo(dtype);
  const std::optional<DType> back = DTypeFromSafetensorsName(info.name);
  return back.has_value() && *back == dtype && info.block_elems == 1;
}

std::string RandomSuffix() {
  std::random_device rd;
  return absl::StrFormat("%08x", static_cast<uint32_t>(rd()));
}

}  // namespace

absl::StatusOr<uint64_t> TensorSpecBytes(const TensorSpec& spec) {
  if (!IsSafetensorsDType(spec.dtype)) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", spec.name, "': dtype ",
                                                   SV(DTypeName(spec.dtype)),
                                                   " is not a safetensors dtype"));
  }
  uint64_t numel = 1;
  for (int64_t d : spec.shape) {
    if (d < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", spec.name, "': negative dimension in ", ShapeString(spec.shape)));
    }
    if (d != 0 && numel > std::numeric_limits<uint64_t>::max() / static_cast<uint64_t>(d)) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", spec.name, "': shape ", ShapeString(spec.shape), " overflows"));
    }
    numel *= static_cast<uint64_t>(d);
  }
  const std::optional<size_t> bytes = BytesForElements(spec.dtype, numel);
  if (!bytes.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", spec.name, "': shape ", ShapeString(spec.shape), " overflows"));
  }
  return static_cast<uint64_t>(*bytes);
}

absl::StatusOr<std::unique_ptr<SafetensorsWriter>> SafetensorsWriter::Create(
    const std::string& final_path, std::vector<TensorSpec> specs,
    const std::map<std::string, std::string>& metadata) {
  std::unique_ptr<SafetensorsWriter> w(new SafetensorsWriter());
  w->final_path_ = final_path;

  // Header: "__metadata__" first, then the tensors in write order (insertion-ordered JSON).
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    header["__metadata__"] = std::move(meta);
  }
  std::set<std::string, std::less<>> names;
  uint64_t offset = 0;
  for (const TensorSpec& spec : specs) {
    if (spec.name.empty() || spec.name == "__metadata__") {
      return absl::InvalidArgumentError(
          absl::StrCat(final_path, ": invalid tensor name '", spec.name, "'"));
    }
    if (!names.insert(spec.name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(final_path, ": duplicate tensor name '", spec.name, "'"));
    }
    ASSIGN_OR_RETURN(uint64_t bytes, TensorSpecBytes(spec));
    if (offset > std::numeric_limits<uint64_t>::max() - bytes) {
      return absl::InvalidArgumentError(absl::StrCat(final_path, ": total size overflows"));
    }
    header[spec.name] = {{"dtype", std::string(DTypeName(spec.dtype))},
                         {"shape", spec.shape},
                         {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    w->sizes_.push_back(bytes);
  }
  std::string text;
  try {
    text = header.dump();  // strict UTF-8: a name that is not UTF-8 is refused here
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(final_path, ": tensor names must be UTF-8: ", e.what()));
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  if (text.size() > kMaxSafetensorsHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat(final_path, ": header of ", text.size(),
                                                   " bytes exceeds the safetensors limit"));
  }
  w->header_bytes_ = text.size();
  w->file_size_ = 8 + text.size() + offset;
  w->specs_ = std::move(specs);

  w->temp_path_ = absl::StrCat(final_path, ".tmp-", getpid(), "-", RandomSuffix());
  w->fd_ = ::open(w->temp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (w->fd_ < 0) return ErrnoError("cannot create", w->temp_path_, errno);

  uint8_t len[8];
  const uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(n >> (8 * i));
  RETURN_IF_ERROR(w->WriteAll(len, sizeof(len)));
  RETURN_IF_ERROR(w->WriteAll(reinterpret_cast<const uint8_t*>(text.data()), text.size()));
  return w;
}

SafetensorsWriter::~SafetensorsWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!finished_ && !temp_path_.empty()) ::unlink(temp_path_.c_str());
}

absl::Status SafetensorsWriter::WriteAll(const uint8_t* data, size_t size) {
  while (size > 0) {
    const ssize_t n = ::write(fd_, data, std::min<size_t>(size, size_t{1} << 30));
    if (n < 0) {
      if (errno == EINTR) continue;
      failed_ = true;
      return ErrnoError("cannot write", temp_path_, errno);
    }
    data += n;
    size -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::Write(absl::string_view name, std::span<const uint8_t> bytes) {
  if (failed_ || finished_ || fd_ < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat(final_path_, ": writer is ", finished_ ? "finished" : "failed"));
  }
  if (next_ >= specs_.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        final_path_, ": tensor '", name, "' written after all ", specs_.size(), " tensors"));
  }
  const TensorSpec& spec = specs_[next_];
  if (name != spec.name) {
    return absl::InvalidArgumentError(absl::StrCat(final_path_, ": tensor '", name,
                                                   "' written where '", spec.name, "' comes next"));
  }
  if (bytes.size() != sizes_[next_]) {
    return absl::InvalidArgumentError(absl::StrCat(final_path_, ": tensor '", name, "' has ",
                                                   bytes.size(), " bytes; its spec needs ",
                                                   sizes_[next_]));
  }
  RETURN_IF_ERROR(WriteAll(bytes.data(), bytes.size()));
  ++next_;
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::Finish() {
  if (failed_ || finished_ || fd_ < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat(final_path_, ": writer is ", finished_ ? "finished" : "failed"));
  }
  if (next_ < specs_.size()) {
    return absl::FailedPreconditionError(
        absl::StrCat(final_path_, ": tensor '", specs_[next_].name, "' was not written"));
  }
  if (::fsync(fd_) != 0) {
    failed_ = true;
    return ErrnoError("cannot fsync", temp_path_, errno);
  }
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) {
    failed_ = true;
    return ErrnoError("cannot close", temp_path_, errno);
  }
  if (::rename(temp_path_.c_str(), final_path_.c_str()) != 0) {
    failed_ = true;
    return ErrnoError(absl::StrCat("cannot rename ", temp_path_, " to"), final_path_, errno);
  }
  finished_ = true;
  const std::filesystem::path parent = std::filesystem::path(final_path_).parent_path();
  const std::string dir = parent.empty() ? std::string(".") : parent.string();
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    const int rc = ::fsync(dfd);
    const int err = errno;
    ::close(dfd);
    if (rc != 0) return ErrnoError("cannot fsync directory", dir, err);
  }
  return absl::OkStatus();
}

}  // namespace shardserve
