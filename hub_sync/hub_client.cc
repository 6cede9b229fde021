#include "hub_sync/hub_client.h"

#include <curl/curl.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "common/json.h"
#include "common/status_macros.h"

namespace shardserve::hub {

namespace {

using json = nlohmann::json;

constexpr size_t kMaxApiBody = size_t{64} << 20;  // a tree page or model info
constexpr size_t kMaxErrorBody = size_t{64} << 10;
constexpr size_t kMaxServerMessage = 500;
constexpr int kMaxPages = 100000;
constexpr int kMaxRedirects = 10;
constexpr int64_t kProgressChunk = int64_t{256} << 10;  // progress granularity
constexpr absl::Duration kCancelPoll = absl::Milliseconds(50);
constexpr size_t kCopyChunk = size_t{1} << 20;

absl::Status CurlGlobalInit() {
  static const CURLcode code = curl_global_init(CURL_GLOBAL_DEFAULT);
  if (code != CURLE_OK) {
    return absl::InternalError(absl::StrCat("curl_global_init failed: ", curl_easy_strerror(code)));
  }
  return absl::OkStatus();
}

bool HasControlCharacter(absl::string_view s) {
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) return true;
  }
  return false;
}

// A remote string made safe to quote in a message.
std::string Quoted(absl::string_view s) { return absl::StrCat("\"", absl::CHexEscape(s), "\""); }

// curl_easy_escape: everything but ALPHA / DIGIT / "-._~" percent-encoded (Python's quote with
// safe="").
std::string Escape(absl::string_view s) {
  char* out = curl_easy_escape(nullptr, s.data(), static_cast<int>(s.size()));
  if (out == nullptr) return std::string();
  std::string result(out);
  curl_free(out);
  return result;
}

// Each segment of a repo path escaped, '/' kept (Python's quote(path), safe="/").
std::string EscapePath(absl::string_view path) {
  std::vector<std::string> segments;
  for (absl::string_view segment : absl::StrSplit(path, '/')) segments.push_back(Escape(segment));
  return absl::StrJoin(segments, "/");
}

// --- URLs through curl's URL API ---

struct CurlUrl {
  CURLU* u = curl_url();
  ~CurlUrl() { curl_url_cleanup(u); }
  std::optional<std::string> Get(CURLUPart part, unsigned flags = 0) const {
    char* value = nullptr;
    if (curl_url_get(u, part, &value, flags) != CURLUE_OK || value == nullptr) return std::nullopt;
    std::string result(value);
    curl_free(value);
    return result;
  }
};

struct Origin {
  std::string scheme;
  std::string host;
  std::string port;
  friend bool operator==(const Origin&, const Origin&) = default;
};

std::optional<Origin> OriginOf(const std::string& url) {
  CurlUrl parsed;
  if (parsed.u == nullptr || curl_url_set(parsed.u, CURLUPART_URL, url.c_str(), 0) != CURLUE_OK) {
    return std::nullopt;
  }
  std::optional<std::string> scheme = parsed.Get(CURLUPART_SCHEME);
  std::optional<std::string> host = parsed.Get(CURLUPART_HOST);
  std::optional<std::string> port = parsed.Get(CURLUPART_PORT, CURLU_DEFAULT_PORT);
  if (!scheme || !host || !port) return std::nullopt;
  return Origin{absl::AsciiStrToLower(*scheme), absl::AsciiStrToLower(*host), *port};
}

// `reference` (absolute, or relative to `base`) as an absolute URL.
std::optional<std::string> ResolveUrl(const std::string& base, const std::string& reference) {
  CurlUrl parsed;
  if (parsed.u == nullptr || curl_url_set(parsed.u, CURLUPART_URL, base.c_str(), 0) != CURLUE_OK ||
      curl_url_set(parsed.u, CURLUPART_URL, reference.c_str(), 0) != CURLUE_OK) {
    return std::nullopt;
  }
  return parsed.Get(CURLUPART_URL);
}

bool IsAbsoluteUrl(absl::string_view url) {
  return absl::StartsWithIgnoreCase(url, "http://") || absl::StartsWithIgnoreCase(url, "https://");
}

// --- Files ---

absl::Status ErrnoError(int error, absl::string_view what, absl::string_view path) {
  const std::string message = absl::StrCat(what, " ", path, ": ", std::strerror(error));
  if (error == ENOSPC || error == EDQUOT) return absl::ResourceExhaustedError(message);
  if (error == ENOENT) return absl::NotFoundError(message);
  return absl::InternalError(message);
}

// Size of the file at `path`; 0 when it does not exist.
absl::StatusOr<uint64_t> FileSizeOrZero(const std::string& path) {
  struct stat info;
  if (stat(path.c_str(), &info) != 0) {
    if (errno == ENOENT) return uint64_t{0};
    return ErrnoError(errno, "cannot stat", path);
  }
  if (!S_ISREG(info.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat(path, " is not a regular file"));
  }
  return static_cast<uint64_t>(info.st_size);
}

absl::Status TruncateFile(const std::string& path, uint64_t size) {
  if (truncate(path.c_str(), static_cast<off_t>(size)) != 0) {
    return ErrnoError(errno, "cannot truncate", path);
  }
  return absl::OkStatus();
}

absl::Status RemoveFile(const std::string& path) {
  if (unlink(path.c_str()) != 0 && errno != ENOENT) return ErrnoError(errno, "cannot remove", path);
  return absl::OkStatus();
}

absl::StatusOr<int> OpenForWriting(const std::string& path) {
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError(errno, "cannot open", path);
  return fd;
}

absl::Status WriteAll(int fd, const char* data, size_t size, uint64_t offset,
                      const std::string& path) {
  while (size > 0) {
    const ssize_t n = pwrite(fd, data, size, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(errno, "cannot write", path);
    }
    data += n;
    size -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

// Appends `length` bytes of `from` (from its start) to `to` at `offset`: copy_file_range, or
// read/write where the file system cannot.
absl::Status AppendFile(const std::string& from, const std::string& to, uint64_t offset,
                        uint64_t length) {
  const int in = open(from.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) return ErrnoError(errno, "cannot open", from);
  const int out = open(to.c_str(), O_WRONLY | O_CLOEXEC);
  if (out < 0) {
    const int error = errno;
    close(in);
    return ErrnoError(error, "cannot open", to);
  }
  absl::Status status;
  loff_t in_offset = 0;
  auto out_offset = static_cast<loff_t>(offset);
  uint64_t left = length;
  bool fallback = false;
  while (left > 0 && status.ok()) {
    if (!fallback) {
      const ssize_t n = copy_file_range(in, &in_offset, out, &out_offset,
                                        static_cast<size_t>(std::min<uint64_t>(left, 1u << 30)), 0);
      if (n > 0) {
        left -= static_cast<uint64_t>(n);
        continue;
      }
      if (n == 0) {
        status = absl::DataLossError(absl::StrCat(from, " ended ", left, " bytes early"));
        break;
      }
      if (errno == EINTR) continue;
      if (errno == EXDEV || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP) {
        fallback = true;
        continue;
      }
      status = ErrnoError(errno, "cannot append to", to);
      break;
    }
    std::string buffer(static_cast<size_t>(std::min<uint64_t>(left, kCopyChunk)), '\0');
    const ssize_t n = pread(in, buffer.data(), buffer.size(), in_offset);
    if (n < 0) {
      if (errno == EINTR) continue;
      status = ErrnoError(errno, "cannot read", from);
    } else if (n == 0) {
      status = absl::DataLossError(absl::StrCat(from, " ended ", left, " bytes early"));
    } else {
      status = WriteAll(out, buffer.data(), static_cast<size_t>(n),
                        static_cast<uint64_t>(out_offset), to);
      in_offset += n;
      out_offset += n;
      left -= static_cast<uint64_t>(n);
    }
  }
  close(in);
  if (close(out) != 0 && status.ok()) status = ErrnoError(errno, "cannot close", to);
  return status;
}

std::pair<std::string, std::string> SplitDirBase(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return {".", path};
  return {slash == 0 ? "/" : path.substr(0, slash), path.substr(slash + 1)};
}

// Start offsets of the existing part files of `dest_path`, sorted.
absl::StatusOr<std::vector<uint64_t>> ListPartStarts(const std::string& dest_path) {
  const auto [dir, base] = SplitDirBase(dest_path);
  const std::string prefix = base + ".part";
  std::vector<uint64_t> starts;
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) {
    if (errno == ENOENT) return starts;
    return ErrnoError(errno, "cannot list", dir);
  }
  while (const dirent* entry = readdir(d)) {
    absl::string_view name(entry->d_name);
    if (!absl::ConsumePrefix(&name, prefix) || name.empty() || name.size() > 20) continue;
    if (!std::all_of(name.begin(), name.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      continue;
    }
    uint64_t start = 0;
    if (absl::SimpleAtoi(name, &start) && absl::StrCat(start) == name) starts.push_back(start);
  }
  closedir(d);
  std::sort(starts.begin(), starts.end());
  return starts;
}

// --- HTTP helpers ---

// The Hub's explanation of an error: X-Error-Message and the JSON body's "error" (a string or a
// list), else a short non-HTML body; control characters replaced, bounded.
std::string ServerMessage(const std::map<std::string, std::string>& headers,
                          const std::string& body) {
  std::vector<std::string> parts;
  auto add = [&](std::string text) {
    text = std::string(absl::StripAsciiWhitespace(text));
    if (text.empty() || std::find(parts.begin(), parts.end(), text) != parts.end()) return;
    parts.push_back(std::move(text));
  };
  if (auto it = headers.find("x-error-message"); it != headers.end()) add(it->second);
  bool parsed = false;
  if (!body.empty()) {
    try {
      json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
      if (j.is_object()) {
        parsed = true;
        if (auto it = j.find("error"); it != j.end()) {
          if (it->is_string()) add(it->get<std::string>());
          if (it->is_array()) {
            for (const json& e : *it) {
              if (e.is_string()) add(e.get<std::string>());
            }
          }
        }
      }
    } catch (const json::exception&) {
    }
    auto type = headers.find("content-type");
    const bool html =
        type != headers.end() && absl::StrContains(absl::AsciiStrToLower(type->second), "html");
    if (!parsed && !html) add(body);
  }
  std::string message = absl::StrJoin(parts, "; ");
  for (char& c : message) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = ' ';
  }
  if (message.size() > kMaxServerMessage) message = message.substr(0, kMaxServerMessage) + "...";
  return message;
}

bool IsRetriableCurlCode(CURLcode code) {
  switch (code) {
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_PARTIAL_FILE:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_HTTP3:
    case CURLE_QUIC_CONNECT_ERROR:
      return true;
    default:
      return false;
  }
}

bool IsRetriableHttpStatus(long status) {
  return status == 408 || status == 429 || (status >= 500 && status <= 599);
}

// Writes progress deltas to the caller's callback, one call at a time.
class Progress {
 public:
  explicit Progress(ProgressFn fn) : fn_(std::move(fn)) {}
  void Add(int64_t delta) {
    if (!fn_ || delta == 0) return;
    absl::MutexLock lock(&mu_);
    fn_(delta);
  }

 private:
  absl::Mutex mu_;
  ProgressFn fn_;
};

}  // namespace

absl::Duration RetryDelay(const RetryPolicy& policy, int retry, double unit_random,
                          std::optional<absl::Duration> retry_after) {
  if (retry_after.has_value()) {
    return std::min(std::max(*retry_after, absl::ZeroDuration()), policy.max_retry_after);
  }
  const int exponent = std::clamp(retry - 1, 0, 64);
  const double factor = std::pow(std::max(policy.multiplier, 1.0), exponent);
  absl::Duration delay = std::min(policy.initial_backoff * factor, policy.max_backoff);
  const double jitter = std::clamp(policy.jitter, 0.0, 1.0);
  delay = delay * (1.0 + jitter * (2.0 * std::clamp(unit_random, 0.0, 1.0) - 1.0));
  return std::clamp(delay, absl::ZeroDuration(), policy.max_backoff);
}

// ------------------------------------------------------------------------------------------------
// Listing parsing.

absl::Status ParseTreePage(absl::string_view body, const RepoId& repo,
                           std::vector<RepoFile>* files) {
  const std::string what = absl::StrCat("the tree listing of repo ", repo.ToString());
  ASSIGN_OR_RETURN(json page, ParseJson(body, what));
  if (!page.is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(what, " is not a JSON array"));
  }
  for (size_t i = 0; i < page.size(); ++i) {
    const json& entry = page[i];
    std::string path_note;
    auto bad = [&](absl::string_view why) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": entry ", i, path_note, " ", why, "; the listing is refused"));
    };
    if (!entry.is_object()) return bad("is not an object");
    auto type = entry.find("type");
    if (type == entry.end() || !type->is_string()) return bad("has no \"type\"");
    auto path = entry.find("path");
    if (path == entry.end() || !path->is_string()) return bad("has no \"path\"");
    const std::string path_string = path->get<std::string>();
    path_note = absl::StrCat(" (", Quoted(path_string), ")");
    const std::string type_string = type->get<std::string>();
    if (type_string == "directory") continue;
    if (type_string != "file") return bad(absl::StrCat("has unknown type ", Quoted(type_string)));
    if (absl::Status valid = ValidateRepoPath(path_string); !valid.ok()) {
      return bad(absl::StrCat("has an unsafe path: ", valid.message()));
    }
    RepoFile file;
    file.path = path_string;
    auto size = entry.find("size");
    if (size == entry.end() || !size->is_number_unsigned()) {
      return bad("has no valid \"size\" (a non-negative integer)");
    }
    file.size = size->get<uint64_t>();
    auto lfs = entry.find("lfs");
    if (lfs != entry.end() && !lfs->is_null()) {
      if (!lfs->is_object()) return bad("has an \"lfs\" that is not an object");
      auto oid = lfs->find("oid");
      if (oid == lfs->end() || !oid->is_string() || oid->get<std::string>().size() != 64 ||
          !IsValidEtag(oid->get<std::string>())) {
        return bad("has no valid \"lfs.oid\" (64 lowercase hex digits)");
      }
      auto lfs_size = lfs->find("size");
      if (lfs_size == lfs->end() || !lfs_size->is_number_unsigned()) {
        return bad("has no valid \"lfs.size\"");
      }
      file.etag = oid->get<std::string>();
      file.size = lfs_size->get<uint64_t>();
      file.lfs = true;
    } else {
      auto oid = entry.find("oid");
      if (oid == entry.end() || !oid->is_string() || oid->get<std::string>().size() != 40 ||
          !IsValidEtag(oid->get<std::string>())) {
        return bad("has no valid \"oid\" (40 lowercase hex digits)");
      }
      file.etag = oid->get<std::string>();
    }
    files->push_back(std::move(file));
  }
  return absl::OkStatus();
}

absl::Status FinishListing(const RepoId& repo, std::vector<RepoFile>* files) {
  std::sort(files->begin(), files->end(),
            [](const RepoFile& a, const RepoFile& b) { return a.path < b.path; });
  std::set<absl::string_view> paths;
  for (const RepoFile& file : *files) {
    if (!paths.insert(file.path).second) {
      return absl::InvalidArgumentError(absl::StrCat("the tree listing of repo ", repo.ToString(),
                                                     " names ", Quoted(file.path),
                                                     " twice; the listing is refused"));
    }
  }
  for (const RepoFile& file : *files) {
    for (size_t slash = file.path.find('/'); slash != std::string::npos;
         slash = file.path.find('/', slash + 1)) {
      const absl::string_view folder = absl::string_view(file.path).substr(0, slash);
      if (paths.count(folder) > 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("the tree listing of repo ", repo.ToString(), " has ", Quoted(folder),
                         " both as a file and as the folder of ", Quoted(file.path),
                         "; the listing is refused"));
      }
    }
  }
  return absl::OkStatus();
}

std::optional<std::string> NextPageUrl(absl::string_view header) {
  size_t i = 0;
  const size_t n = header.size();
  auto skip_spaces = [&] {
    while (i < n && (header[i] == ' ' || header[i] == '\t')) ++i;
  };
  while (i < n) {
    const size_t open = header.find('<', i);
    if (open == absl::string_view::npos) return std::nullopt;
    const size_t close = header.find('>', open + 1);
    if (close == absl::string_view::npos) return std::nullopt;
    const absl::string_view url = header.substr(open + 1, close - open - 1);
    i = close + 1;
    bool is_next = false;
    // Parameters: *( ";" name [ "=" ( token / quoted-string ) ] ), up to the next ','.
    while (i < n) {
      skip_spaces();
      if (i >= n) break;
      if (header[i] == ',') {
        ++i;
        break;
      }
      if (header[i] != ';') {  // malformed: skip to the next link-value
        while (i < n && header[i] != ',') ++i;
        continue;
      }
      ++i;
      skip_spaces();
      const size_t name_start = i;
      while (i < n && header[i] != '=' && header[i] != ';' && header[i] != ',' &&
             header[i] != ' ' && header[i] != '\t') {
        ++i;
      }
      const absl::string_view name = header.substr(name_start, i - name_start);
      skip_spaces();
      std::string value;
      if (i < n && header[i] == '=') {
        ++i;
        skip_spaces();
        if (i < n && header[i] == '"') {
          ++i;
          while (i < n && header[i] != '"') {
            if (header[i] == '\\' && i + 1 < n) ++i;
            value.push_back(header[i]);
            ++i;
          }
          if (i < n) ++i;  // the closing quote
        } else {
          const size_t value_start = i;
          while (i < n && header[i] != ';' && header[i] != ',' && header[i] != ' ' &&
                 header[i] != '\t') {
            ++i;
          }
          value = std::string(header.substr(value_start, i - value_start));
        }
      }
      if (absl::EqualsIgnoreCase(name, "rel")) {
        for (absl::string_view rel : absl::StrSplit(value, ' ', absl::SkipEmpty())) {
          if (absl::EqualsIgnoreCase(rel, "next")) is_next = true;
        }
      }
    }
    if (is_next) return std::string(url);
  }
  return std::nullopt;
}

std::string PartFilePath(const std::string& dest_path, uint64_t start) {
  return absl::StrCat(dest_path, ".part", start);
}

absl::Status RemovePartialDownload(const std::string& dest_path) {
  ASSIGN_OR_RETURN(std::vector<uint64_t> starts, ListPartStarts(dest_path));
  for (uint64_t start : starts) RETURN_IF_ERROR(RemoveFile(PartFilePath(dest_path, start)));
  return RemoveFile(dest_path);
}

// ------------------------------------------------------------------------------------------------
// The client.

namespace {

// What a request is about, for error messages.
struct Target {
  const RepoId* repo = nullptr;
  std::string revision;  // as asked (RevisionNotFound)
  std::string path;      // a file (EntryNotFound), or ""
  std::string what;      // "the revision main", "the file x at commit c"
};

struct Request {
  std::string url;
  bool head = false;
  bool follow_redirects = true;
  bool send_token = true;
  bool api = true;    // small answer: total timeout, compression, body kept in memory
  std::string range;  // CURLOPT_RANGE ("N-", "N-M"), or ""
  const std::atomic<bool>* cancelled = nullptr;
  const std::atomic<bool>* aborted = nullptr;
};

struct Response {
  CURLcode code = CURLE_OK;
  std::string curl_error;
  long status = 0;
  std::string body;  // API answers and error bodies (bounded)
  bool body_too_large = false;
  std::map<std::string, std::string> headers;  // of the last response, lowercase names
  std::optional<absl::Duration> retry_after;
};

// Receives the body of a 2xx response of a download.
class Sink {
 public:
  virtual ~Sink() = default;
  // Headers of a 2xx response are in; its body follows. False aborts the transfer.
  virtual bool Begin(CURL* curl, long status) = 0;
  // False aborts the transfer.
  virtual bool Write(const char* data, size_t size) = 0;
};

// What one failed attempt means.
struct Failure {
  absl::Status status;  // the error to return when no retry is left
  bool retriable = false;
  std::optional<absl::Duration> retry_after;
};

// One range of a download: bytes [start, end) of the file, stored in `path` at offset
// (start - base): dest_path holds range 0 (base 0), a part file its range from its first byte.
struct Range {
  uint64_t start = 0;
  uint64_t end = 0;
  std::string path;
  uint64_t base = 0;
  uint64_t done = 0;  // bytes present
  uint64_t length() const { return end - start; }
};

}  // namespace

struct HubClient::Impl {
  explicit Impl(HubClientOptions o) : options(std::move(o)) {}
  ~Impl() {
    for (void* handle : free_handles) curl_easy_cleanup(static_cast<CURL*>(handle));
  }

  // --- Handle pool: one curl easy handle per transfer, kept for its live connections ---

  CURL* AcquireHandle() {
    absl::MutexLock lock(&pool_mu);
    pool_mu.Await(absl::Condition(this, &Impl::SlotFree));
    ++in_use;
    if (!free_handles.empty()) {
      CURL* handle = static_cast<CURL*>(free_handles.back());
      free_handles.pop_back();
      return handle;
    }
    return curl_easy_init();  // nullptr when out of memory: Perform reports it
  }

  bool SlotFree() const ABSL_SHARED_LOCKS_REQUIRED(pool_mu) { return in_use < options.connections; }

  void ReleaseHandle(CURL* handle) {
    absl::MutexLock lock(&pool_mu);
    --in_use;
    if (handle != nullptr) free_handles.push_back(handle);
  }

  // --- One exchange ---

  struct TransferState {
    CURL* curl = nullptr;
    const Request* request = nullptr;
    Sink* sink = nullptr;
    Response* response = nullptr;
    enum class Mode { kUndecided, kDiscard, kSink, kBuffer } mode = Mode::kUndecided;
    size_t buffer_limit = 0;
  };

  static size_t OnHeader(char* data, size_t size, size_t count, void* user) {
    auto* state = static_cast<TransferState*>(user);
    const size_t n = size * count;
    if (absl::StartsWith(absl::string_view(data, n), "HTTP/")) {
      state->mode = TransferState::Mode::kUndecided;  // a new response (after a redirect)
    }
    return n;
  }

  static size_t OnBody(char* data, size_t size, size_t count, void* user) {
    auto* state = static_cast<TransferState*>(user);
    const size_t n = size * count;
    if (state->mode == TransferState::Mode::kUndecided) {
      long status = 0;
      curl_easy_getinfo(state->curl, CURLINFO_RESPONSE_CODE, &status);
      if (status >= 300 && status < 400 && state->request->follow_redirects) {
        state->mode = TransferState::Mode::kDiscard;
      } else if (status >= 200 && status < 300 && state->sink != nullptr) {
        state->mode = TransferState::Mode::kSink;
        if (!state->sink->Begin(state->curl, status)) return 0;
      } else {
        state->mode = TransferState::Mode::kBuffer;
        state->buffer_limit = status >= 200 && status < 300 ? kMaxApiBody : kMaxErrorBody;
        state->response->body.clear();
      }
    }
    switch (state->mode) {
      case TransferState::Mode::kSink:
        return state->sink->Write(data, n) ? n : 0;
      case TransferState::Mode::kBuffer: {
        std::string& body = state->response->body;
        if (body.size() + n > state->buffer_limit) {
          if (state->buffer_limit == kMaxApiBody) {
            state->response->body_too_large = true;
            return 0;
          }
          body.append(data, state->buffer_limit - body.size());
          return n;
        }
        body.append(data, n);
        return n;
      }
      default:
        return n;
    }
  }

  static int OnProgress(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
    auto* state = static_cast<TransferState*>(user);
    const Request& request = *state->request;
    if (request.cancelled != nullptr && request.cancelled->load()) return 1;
    if (request.aborted != nullptr && request.aborted->load()) return 1;
    return 0;
  }

  static std::optional<std::string> Header(CURL* curl, const char* name) {
    curl_header* header = nullptr;
    if (curl_easy_header(curl, name, 0, CURLH_HEADER, -1, &header) != CURLHE_OK ||
        header == nullptr) {
      return std::nullopt;
    }
    std::string value = header->value;
    // Repeated headers (Link): every value, comma-joined as RFC 9110 allows.
    for (size_t i = 1; i < header->amount; ++i) {
      curl_header* more = nullptr;
      if (curl_easy_header(curl, name, i, CURLH_HEADER, -1, &more) == CURLHE_OK &&
          more != nullptr) {
        absl::StrAppend(&value, ", ", more->value);
      }
    }
    return value;
  }

  void Perform(const Request& request, Sink* sink, Response* response) {
    CURL* curl = AcquireHandle();
    if (curl == nullptr) {
      ReleaseHandle(nullptr);
      response->code = CURLE_OUT_OF_MEMORY;
      response->curl_error = "cannot create a curl handle";
      return;
    }
    curl_easy_reset(curl);
    TransferState state;
    state.curl = curl;
    state.request = &request;
    state.sink = sink;
    state.response = response;
    char error_buffer[CURL_ERROR_SIZE] = {0};
    curl_slist* headers = nullptr;
    if (request.send_token && !options.token.empty()) {
      headers =
          curl_slist_append(headers, absl::StrCat("Authorization: Bearer ", options.token).c_str());
    }
    curl_easy_setopt(curl, CURLOPT_URL, request.url.c_str());
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(curl, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, error_buffer);
    curl_easy_setopt(curl, CURLOPT_HTTP_VERSION, static_cast<long>(CURL_HTTP_VERSION_1_1));
    curl_easy_setopt(curl, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(curl, CURLOPT_USERAGENT, options.user_agent.c_str());
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS,
                     static_cast<long>(absl::ToInt64Milliseconds(options.connect_timeout)));
    curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT,
                     static_cast<long>(options.low_speed_limit_bytes));
    curl_easy_setopt(
        curl, CURLOPT_LOW_SPEED_TIME,
        static_cast<long>(std::max<int64_t>(1, absl::ToInt64Seconds(options.low_speed_time))));
    if (headers != nullptr) curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    // Custom Authorization headers are sent to the first host only: curl drops it on a redirect
    // to another host, port or scheme, as huggingface_hub does.
    curl_easy_setopt(curl, CURLOPT_UNRESTRICTED_AUTH, 0L);
    curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, request.follow_redirects ? 1L : 0L);
    curl_easy_setopt(curl, CURLOPT_MAXREDIRS, static_cast<long>(kMaxRedirects));
    if (request.head) curl_easy_setopt(curl, CURLOPT_NOBODY, 1L);
    if (!request.range.empty()) curl_easy_setopt(curl, CURLOPT_RANGE, request.range.c_str());
    if (request.api) {
      curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS,
                       static_cast<long>(absl::ToInt64Milliseconds(options.api_timeout)));
      curl_easy_setopt(curl, CURLOPT_ACCEPT_ENCODING, "");  // whatever curl can decode
    }
    curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, &Impl::OnHeader);
    curl_easy_setopt(curl, CURLOPT_HEADERDATA, &state);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, &Impl::OnBody);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &state);
    curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, &Impl::OnProgress);
    curl_easy_setopt(curl, CURLOPT_XFERINFODATA, &state);
    curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);

    response->code = curl_easy_perform(curl);
    response->curl_error =
        error_buffer[0] != '\0' ? error_buffer : curl_easy_strerror(response->code);
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &response->status);
    for (const char* name :
         {"link", "x-error-code", "x-error-message", "x-repo-commit", "x-linked-etag", "etag",
          "x-linked-size", "content-length", "location", "content-type", "retry-after"}) {
      if (std::optional<std::string> value = Header(curl, name)) response->headers[name] = *value;
    }
    curl_off_t retry_after = -1;
    if (curl_easy_getinfo(curl, CURLINFO_RETRY_AFTER, &retry_after) == CURLE_OK &&
        retry_after >= 0 && response->headers.count("retry-after") > 0) {
      response->retry_after = absl::Seconds(retry_after);
    }
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, nullptr);
    curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, nullptr);
    curl_slist_free_all(headers);
    ReleaseHandle(curl);
  }

  // --- Error mapping ---

  Failure Classify(const Response& response, const Target& target, const Request& request,
                   int attempts) const {
    Failure failure;
    const std::string repo = target.repo->ToString();
    const std::string after =
        attempts > 1 ? absl::StrCat(" (after ", attempts, " attempts)") : std::string();
    if (request.cancelled != nullptr && request.cancelled->load()) {
      failure.status =
          absl::CancelledError(absl::StrCat(target.what, " of repo ", repo, ": cancelled"));
      return failure;
    }
    if (response.body_too_large) {
      failure.status =
          absl::InvalidArgumentError(absl::StrCat(endpoint, " answered more than ", kMaxApiBody,
                                                  " bytes for ", target.what, " of repo ", repo));
      return failure;
    }
    const long status = response.status;
    const bool http_ok = status >= 200 && status < 300;
    const bool redirect_ok = !request.follow_redirects && status >= 300 && status < 400;
    if (response.code != CURLE_OK && (http_ok || (status >= 300 && status < 400) || status == 0)) {
      // A transport failure (no answer, or a broken body).
      failure.retriable = IsRetriableCurlCode(response.code);
      failure.status = absl::UnavailableError(absl::StrCat("cannot get ", target.what, " of repo ",
                                                           repo, " from ", endpoint, ": ",
                                                           response.curl_error, after));
      return failure;
    }
    if (http_ok || redirect_ok) return failure;  // OK
    const std::string server = ServerMessage(response.headers, response.body);
    const std::string hub_says =
        server.empty() ? std::string() : absl::StrCat(" (Hub: ", server, ")");
    auto header = [&](const char* name) -> std::string {
      auto it = response.headers.find(name);
      return it == response.headers.end() ? std::string() : it->second;
    };
    const std::string code = header("x-error-code");
    if (status == 401) {
      if (options.token.empty()) {
        failure.status = absl::UnauthenticatedError(
            absl::StrCat("repo ", repo,
                         " needs a token with access (private or gated repo; set HF_TOKEN), or "
                         "does not exist on ",
                         endpoint, ": 401 for ", target.what, hub_says));
      } else {
        failure.status = absl::UnauthenticatedError(absl::StrCat(
            "repo ", repo,
            " needs a token with access (private or gated repo; set HF_TOKEN): ", endpoint,
            " refused the token given (invalid or expired?), or the repo does not "
            "exist: 401 for ",
            target.what, hub_says));
      }
      return failure;
    }
    if (status == 403) {
      if (code == "GatedRepo") {
        failure.status = absl::PermissionDeniedError(absl::StrCat(
            "repo ", repo, " is gated: request access on the Hub (", endpoint, "/", repo,
            ") and accept its conditions with the account of the token, then retry: 403 for ",
            target.what, hub_says));
      } else {
        failure.status = absl::PermissionDeniedError(
            absl::StrCat("repo ", repo, ": the token has no access to it (403 for ", target.what,
                         "); use a token of an account that may read it", hub_says));
      }
      return failure;
    }
    if (status == 404) {
      if (code == "RevisionNotFound") {
        failure.status = absl::NotFoundError(absl::StrCat("revision ", Quoted(target.revision),
                                                          " not found in repo ", repo, " on ",
                                                          endpoint, hub_says));
      } else if (code == "EntryNotFound" && !target.path.empty()) {
        failure.status =
            absl::NotFoundError(absl::StrCat("file ", Quoted(target.path), " not found in repo ",
                                             repo, " (", target.what, ") on ", endpoint, hub_says));
      } else if (code == "RepoNotFound") {
        failure.status = absl::NotFoundError(absl::StrCat(
            "repo ", repo, " not found on ", endpoint,
            options.token.empty() ? "" : " (or the token has no access to it)", hub_says));
      } else {
        failure.status = absl::NotFoundError(
            absl::StrCat(endpoint, " answered 404 for ", target.what, " of repo ", repo, hub_says));
      }
      return failure;
    }
    if (IsRetriableHttpStatus(status)) {
      failure.retriable = true;
      failure.retry_after = response.retry_after;
      if (status == 429) {
        failure.status = absl::ResourceExhaustedError(absl::StrCat(
            endpoint, " rate-limited ", target.what, " of repo ", repo, " (429",
            response.retry_after
                ? absl::StrCat(", Retry-After: ", absl::ToInt64Seconds(*response.retry_after), " s")
                : std::string(),
            ")", after, hub_says));
      } else {
        failure.status =
            absl::UnavailableError(absl::StrCat(endpoint, " answered ", status, " for ",
                                                target.what, " of repo ", repo, after, hub_says));
      }
      return failure;
    }
    const std::string message = absl::StrCat(endpoint, " answered ", status, " for ", target.what,
                                             " of repo ", repo, hub_says);
    failure.status = status == 400 ? absl::InvalidArgumentError(message)
                                   : absl::FailedPreconditionError(message);
    return failure;
  }

  // Removes the token from a message (defence in depth: none is ever built with it).
  absl::Status Scrub(absl::Status status) const {
    if (status.ok() || options.token.empty() ||
        !absl::StrContains(status.message(), options.token)) {
      return status;
    }
    return absl::Status(status.code(),
                        absl::StrReplaceAll(status.message(), {{options.token, "<token>"}}));
  }

  // Waits before retry number `retry`; false when cancelled (or aborted) meanwhile.
  bool WaitBeforeRetry(const absl::Status& cause, int attempt, int retry,
                       std::optional<absl::Duration> retry_after, const Request& request) {
    thread_local std::mt19937_64 random(std::random_device{}());
    const double unit = std::uniform_real_distribution<double>(0.0, 1.0)(random);
    const absl::Duration delay = RetryDelay(options.retry, retry, unit, retry_after);
    if (options.on_retry) options.on_retry(Scrub(cause), attempt, delay);
    const absl::Time until = absl::Now() + delay;
    while (true) {
      if (request.cancelled != nullptr && request.cancelled->load()) return false;
      if (request.aborted != nullptr && request.aborted->load()) return false;
      const absl::Duration left = until - absl::Now();
      if (left <= absl::ZeroDuration()) return true;
      absl::SleepFor(std::min(left, kCancelPoll));
    }
  }

  // A small answer with retries.
  absl::StatusOr<Response> Fetch(const Request& request, const Target& target) {
    for (int attempt = 1;; ++attempt) {
      Response response;
      Perform(request, nullptr, &response);
      Failure failure = Classify(response, target, request, attempt);
      if (failure.status.ok()) return response;
      if (!failure.retriable || attempt >= options.retry.max_attempts) {
        return Scrub(failure.status);
      }
      if (!WaitBeforeRetry(failure.status, attempt, attempt, failure.retry_after, request)) {
        return absl::CancelledError(
            absl::StrCat(target.what, " of repo ", target.repo->ToString(), ": cancelled"));
      }
    }
  }

  // --- Downloads ---

  struct FileTransfer {
    const RepoId* repo = nullptr;
    const RepoFile* file = nullptr;
    Target target;
    std::string url;
    const std::atomic<bool>* cancelled = nullptr;
    std::atomic<bool> aborted{false};  // a range failed for good: the others stop
    Progress* progress = nullptr;
  };

  // Writes the body of one ranged response into its range's file. Bytes before the range's next
  // missing byte are skipped (a server that ignored Range); the transfer is stopped once the range
  // is complete.
  class FileSink : public Sink {
   public:
    FileSink(FileTransfer* transfer, Range* range) : transfer_(transfer), range_(range) {}
    ~FileSink() override {
      Flush();
      if (fd_ >= 0) close(fd_);
    }

    bool Begin(CURL* curl, long status) override {
      next_ = range_->start + range_->done;
      const uint64_t size = transfer_->file->size;
      if (status == 206) {
        std::optional<std::string> content_range = Header(curl, "Content-Range");
        uint64_t first = 0, last = 0, total = 0;
        if (!content_range || !ParseContentRange(*content_range, &first, &last, &total)) {
          return Fail(absl::StrCat("a 206 answer without a valid Content-Range (",
                                   content_range ? Quoted(*content_range) : "none", ")"));
        }
        if (total != size) {
          return Fail(absl::StrCat("the server has ", total, " bytes but the listing says ", size));
        }
        if (first > next_) {
          return Fail(
              absl::StrCat("asked for bytes from ", next_, ", the server sent from ", first));
        }
        body_position_ = first;
      } else {
        curl_off_t length = -1;
        if (curl_easy_getinfo(curl, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &length) == CURLE_OK &&
            length >= 0 && static_cast<uint64_t>(length) != size) {
          return Fail(absl::StrCat("the server sent ", length,
                                   " bytes for the whole file but the listing says ", size));
        }
        body_position_ = 0;
      }
      if (fd_ < 0) {
        absl::StatusOr<int> fd = OpenForWriting(range_->path);
        if (!fd.ok()) {
          local_error_ = fd.status();
          return false;
        }
        fd_ = *fd;
      }
      return true;
    }

    bool Write(const char* data, size_t size) override {
      while (size > 0) {
        if (body_position_ < next_) {  // before what we need
          const uint64_t skip = std::min<uint64_t>(size, next_ - body_position_);
          body_position_ += skip;
          data += skip;
          size -= static_cast<size_t>(skip);
          continue;
        }
        if (next_ >= range_->end) return false;  // complete: stop the transfer
        const size_t take = static_cast<size_t>(std::min<uint64_t>(size, range_->end - next_));
        if (absl::Status written = WriteAll(fd_, data, take, next_ - range_->base, range_->path);
            !written.ok()) {
          local_error_ = written;
          return false;
        }
        next_ += take;
        body_position_ += take;
        range_->done += take;
        gained_ += take;
        unreported_ += static_cast<int64_t>(take);
        if (unreported_ >= kProgressChunk) Flush();
        data += take;
        size -= take;
      }
      return true;
    }

    void Flush() {
      if (unreported_ > 0) transfer_->progress->Add(unreported_);
      unreported_ = 0;
    }

    uint64_t gained() const { return gained_; }
    const absl::Status& local_error() const { return local_error_; }
    const std::string& protocol_error() const { return protocol_error_; }

   private:
    static bool ParseContentRange(absl::string_view value, uint64_t* first, uint64_t* last,
                                  uint64_t* total) {
      value = absl::StripAsciiWhitespace(value);
      if (!absl::ConsumePrefix(&value, "bytes ")) return false;
      std::vector<absl::string_view> parts = absl::StrSplit(value, absl::MaxSplits('/', 1));
      if (parts.size() != 2) return false;
      std::vector<absl::string_view> bounds = absl::StrSplit(parts[0], absl::MaxSplits('-', 1));
      return bounds.size() == 2 && absl::SimpleAtoi(bounds[0], first) &&
             absl::SimpleAtoi(bounds[1], last) && absl::SimpleAtoi(parts[1], total) &&
             *first <= *last && *last < *total;
    }

    bool Fail(std::string why) {
      protocol_error_ = std::move(why);
      return false;
    }

    FileTransfer* const transfer_;
    Range* const range_;
    int fd_ = -1;
    uint64_t next_ = 0;           // file offset of the next byte the range needs
    uint64_t body_position_ = 0;  // file offset of the next body byte
    uint64_t gained_ = 0;
    int64_t unreported_ = 0;
    absl::Status local_error_;
    std::string protocol_error_;
  };

  // Fills `range`, retrying; attempts that made progress do not use up the budget.
  absl::Status FetchRange(FileTransfer& transfer, Range* range) {
    const uint64_t size = transfer.file->size;
    int failures_in_a_row = 0;
    for (int attempt = 1; range->done < range->length(); ++attempt) {
      if (transfer.cancelled != nullptr && transfer.cancelled->load()) {
        return absl::CancelledError(absl::StrCat(transfer.target.what, " of repo ",
                                                 transfer.repo->ToString(), ": cancelled"));
      }
      if (transfer.aborted.load()) return absl::AbortedError("another range failed");
      Request request;
      request.url = transfer.url;
      request.api = false;
      request.cancelled = transfer.cancelled;
      request.aborted = &transfer.aborted;
      const uint64_t want = range->start + range->done;
      if (range->end == size) {
        if (want > 0) request.range = absl::StrCat(want, "-");
      } else {
        request.range = absl::StrCat(want, "-", range->end - 1);
      }
      Response response;
      uint64_t gained = 0;
      {
        FileSink sink(&transfer, range);
        Perform(request, &sink, &response);
        gained = sink.gained();
        if (!sink.local_error().ok()) return sink.local_error();
        if (!sink.protocol_error().empty()) {
          return absl::FailedPreconditionError(absl::StrCat(
              "cannot download ", transfer.target.what, " of repo ", transfer.repo->ToString(),
              " from ", endpoint, ": ", sink.protocol_error()));
        }
      }
      if (range->done >= range->length()) break;  // complete (even if we stopped the transfer)
      Failure failure = Classify(response, transfer.target, request, attempt);
      if (failure.status.code() == absl::StatusCode::kCancelled) return failure.status;
      if (transfer.aborted.load()) return absl::AbortedError("another range failed");
      if (failure.status.ok()) {
        // A complete answer that ended before the range did.
        failure.retriable = true;
        failure.status = absl::UnavailableError(absl::StrCat(
            "short read of ", transfer.target.what, " of repo ", transfer.repo->ToString(),
            " from ", endpoint, ": the answer ended at byte ", range->start + range->done,
            ", the range ends at ", range->end,
            attempt > 1 ? absl::StrCat(" (after ", attempt, " attempts)") : std::string()));
      } else if (response.status == 416) {
        // The server says our offset is past the end: the partial data is not this file's.
        transfer.progress->Add(-static_cast<int64_t>(range->done));
        range->done = 0;
        RETURN_IF_ERROR(TruncateFile(range->path, range->start - range->base));
        failure.retriable = true;
      }
      if (!failure.retriable) return failure.status;
      failures_in_a_row = gained > 0 ? 0 : failures_in_a_row + 1;
      if (failures_in_a_row >= options.retry.max_attempts) return failure.status;
      if (!WaitBeforeRetry(failure.status, attempt, std::max(failures_in_a_row, 1),
                           failure.retry_after, request)) {
        if (transfer.aborted.load()) return absl::AbortedError("another range failed");
        return absl::CancelledError(absl::StrCat(transfer.target.what, " of repo ",
                                                 transfer.repo->ToString(), ": cancelled"));
      }
    }
    return absl::OkStatus();
  }

  // The ranges of a download to `dest_path`, from the files an earlier attempt left.
  absl::StatusOr<std::vector<Range>> PlanRanges(const std::string& dest_path, uint64_t size) {
    ASSIGN_OR_RETURN(std::vector<uint64_t> starts, ListPartStarts(dest_path));
    std::vector<uint64_t> kept;
    for (uint64_t start : starts) {
      if (start == 0 || start >= size) {
        RETURN_IF_ERROR(RemoveFile(PartFilePath(dest_path, start)));
      } else {
        kept.push_back(start);
      }
    }
    ASSIGN_OR_RETURN(uint64_t dest_size, FileSizeOrZero(dest_path));
    std::vector<uint64_t> bounds = {0};
    if (kept.empty()) {
      if (dest_size > size) {
        RETURN_IF_ERROR(TruncateFile(dest_path, 0));
        dest_size = 0;
      }
      const uint64_t remaining = size - dest_size;
      uint64_t pieces = 1;
      if (options.connections > 1 && remaining > options.range_split_bytes) {
        const uint64_t wanted =
            (remaining + options.range_split_bytes - 1) / options.range_split_bytes;
        pieces = std::min<uint64_t>(static_cast<uint64_t>(options.connections), wanted);
      }
      // pieces <= remaining here, so the bounds strictly increase.
      for (uint64_t i = 1; i < pieces; ++i) {
        bounds.push_back(dest_size + static_cast<uint64_t>(
                                         (static_cast<unsigned __int128>(remaining) * i) / pieces));
      }
    } else {
      bounds.insert(bounds.end(), kept.begin(), kept.end());
    }
    bounds.push_back(size);
    std::vector<Range> ranges;
    for (size_t i = 0; i + 1 < bounds.size(); ++i) {
      Range range;
      range.start = bounds[i];
      range.end = bounds[i + 1];
      range.path = i == 0 ? dest_path : PartFilePath(dest_path, range.start);
      range.base = range.start;
      if (i == 0) {
        range.base = 0;
        if (dest_size > range.end) {
          // An interrupted append of the parts: range 0 was complete, the rest is re-appended.
          RETURN_IF_ERROR(TruncateFile(dest_path, range.end));
          dest_size = range.end;
        }
        range.done = dest_size;
      } else {
        ASSIGN_OR_RETURN(uint64_t part_size, FileSizeOrZero(range.path));
        if (part_size > range.length()) {
          RETURN_IF_ERROR(TruncateFile(range.path, 0));
          part_size = 0;
        }
        range.done = part_size;
      }
      ranges.push_back(std::move(range));
    }
    return ranges;
  }

  // Brings dest_path to the whole file (not yet verified).
  absl::Status FetchFile(const std::string& dest_path, FileTransfer* transfer) {
    const uint64_t size = transfer->file->size;
    if (size == 0) {  // nothing to fetch; otherwise the first bytes received create dest_path
      ASSIGN_OR_RETURN(int fd, OpenForWriting(dest_path));
      close(fd);
    }
    ASSIGN_OR_RETURN(std::vector<Range> ranges, PlanRanges(dest_path, size));
    int64_t present = 0;
    std::vector<Range*> missing;
    for (Range& range : ranges) {
      present += static_cast<int64_t>(range.done);
      if (range.done < range.length()) missing.push_back(&range);
    }
    transfer->progress->Add(present);
    if (missing.size() == 1) {
      RETURN_IF_ERROR(FetchRange(*transfer, missing[0]));
    } else if (missing.size() > 1) {
      std::vector<absl::Status> results(missing.size());
      std::vector<std::thread> threads;
      threads.reserve(missing.size());
      for (size_t i = 0; i < missing.size(); ++i) {
        threads.emplace_back([this, transfer, &missing, &results, i] {
          results[i] = FetchRange(*transfer, missing[i]);
          if (!results[i].ok()) transfer->aborted.store(true);
        });
      }
      for (std::thread& thread : threads) thread.join();
      // The first real error (not a range stopped because another one failed).
      for (const absl::Status& result : results) {
        if (!result.ok() && result.code() != absl::StatusCode::kAborted) return result;
      }
      for (const absl::Status& result : results) RETURN_IF_ERROR(result);
    }
    // Append the parts to dest_path in order.
    for (size_t i = 1; i < ranges.size(); ++i) {
      RETURN_IF_ERROR(AppendFile(ranges[i].path, dest_path, ranges[i].start, ranges[i].length()));
      RETURN_IF_ERROR(RemoveFile(ranges[i].path));
    }
    return absl::OkStatus();
  }

  const HubClientOptions options;
  std::string endpoint;  // no trailing '/'
  std::optional<Origin> endpoint_origin;
  absl::Mutex pool_mu;
  std::vector<void*> free_handles ABSL_GUARDED_BY(pool_mu);
  int in_use ABSL_GUARDED_BY(pool_mu) = 0;
};

// ------------------------------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<HubClient>> HubClient::Create(HubClientOptions options) {
  RETURN_IF_ERROR(CurlGlobalInit());
  std::string endpoint = options.endpoint;
  while (absl::EndsWith(endpoint, "/")) endpoint.pop_back();
  auto invalid = [](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("hub client: ", why));
  };
  std::optional<Origin> origin = OriginOf(endpoint);
  if (!IsAbsoluteUrl(endpoint) || HasControlCharacter(endpoint) || !origin.has_value() ||
      absl::StrContains(endpoint, '?') || absl::StrContains(endpoint, '#')) {
    return invalid(absl::StrCat("endpoint ", Quoted(options.endpoint),
                                " is not an http(s) URL without query or fragment"));
  }
  if (HasControlCharacter(options.token) || absl::StrContains(options.token, ' ')) {
    return invalid("the token contains a space or a control character");
  }
  if (HasControlCharacter(options.user_agent)) {
    return invalid("the user agent contains a control character");
  }
  if (options.connections < 1 || options.connections > 256) {
    return invalid(absl::StrCat("connections must be 1 to 256, not ", options.connections));
  }
  if (options.range_split_bytes < 1) return invalid("range_split_bytes must be at least 1");
  const RetryPolicy& retry = options.retry;
  if (retry.max_attempts < 1 || retry.multiplier < 1.0 || !(retry.jitter >= 0.0) ||
      retry.jitter > 1.0 || retry.initial_backoff < absl::ZeroDuration() ||
      retry.max_backoff < absl::ZeroDuration() || retry.max_retry_after < absl::ZeroDuration()) {
    return invalid(
        "retry policy: max_attempts >= 1, multiplier >= 1, jitter in [0, 1] and non-negative "
        "durations are required");
  }
  if (options.connect_timeout <= absl::ZeroDuration() ||
      options.api_timeout <= absl::ZeroDuration() || options.low_speed_limit_bytes < 0) {
    return invalid("timeouts must be positive and low_speed_limit_bytes non-negative");
  }
  auto impl = std::make_unique<Impl>(std::move(options));
  impl->endpoint = std::move(endpoint);
  impl->endpoint_origin = std::move(origin);
  return std::unique_ptr<HubClient>(new HubClient(std::move(impl)));
}

HubClient::HubClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HubClient::~HubClient() = default;

const HubClientOptions& HubClient::options() const { return impl_->options; }

absl::StatusOr<RepoSnapshot> HubClient::Resolve(const RepoId& repo, absl::string_view revision) {
  RETURN_IF_ERROR(ValidateRevision(revision));
  Impl& impl = *impl_;
  const std::string repo_url =
      absl::StrCat(impl.endpoint, "/api/models/", Escape(repo.org), "/", Escape(repo.name));
  Target target;
  target.repo = &repo;
  target.revision = std::string(revision);
  target.what = absl::StrCat("revision ", Quoted(revision));
  Request request;
  request.url = absl::StrCat(repo_url, "/revision/", Escape(revision));
  ASSIGN_OR_RETURN(Response info, impl.Fetch(request, target));
  ASSIGN_OR_RETURN(json info_json,
                   ParseJson(info.body, absl::StrCat("the model info of repo ", repo.ToString(),
                                                     " at revision ", Quoted(revision))));
  RepoSnapshot snapshot;
  snapshot.repo = repo;
  snapshot.revision = std::string(revision);
  if (info_json.is_object()) {
    auto sha = info_json.find("sha");
    if (sha != info_json.end() && sha->is_string()) snapshot.commit = sha->get<std::string>();
  }
  if (!IsCommitSha(snapshot.commit)) {
    return absl::InvalidArgumentError(absl::StrCat(
        impl.endpoint, " answered no valid commit (\"sha\": 40 lowercase hex digits) for revision ",
        Quoted(revision), " of repo ", repo.ToString(), ": ", Quoted(snapshot.commit)));
  }
  std::string page_url = absl::StrCat(repo_url, "/tree/", snapshot.commit, "?recursive=true");
  std::set<std::string> seen;
  for (int page = 1;; ++page) {
    if (page > kMaxPages || !seen.insert(page_url).second) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the tree listing of repo ", repo.ToString(), " at ", snapshot.commit, " does not end (",
          page > kMaxPages ? "too many pages" : "a page links to itself", ")"));
    }
    Request page_request;
    page_request.url = page_url;
    page_request.send_token = OriginOf(page_url) == impl.endpoint_origin;
    target.what = absl::StrCat("page ", page, " of the file listing at commit ", snapshot.commit);
    ASSIGN_OR_RETURN(Response listing, impl.Fetch(page_request, target));
    RETURN_IF_ERROR(ParseTreePage(listing.body, repo, &snapshot.files));
    auto link = listing.headers.find("link");
    if (link == listing.headers.end()) break;
    std::optional<std::string> next = NextPageUrl(link->second);
    if (!next.has_value()) break;
    std::optional<std::string> resolved = ResolveUrl(page_url, *next);
    if (!resolved.has_value() || !IsAbsoluteUrl(*resolved) || HasControlCharacter(*resolved)) {
      return absl::InvalidArgumentError(absl::StrCat("the tree listing of repo ", repo.ToString(),
                                                     " links to an invalid next page ",
                                                     Quoted(*next)));
    }
    page_url = *resolved;
  }
  RETURN_IF_ERROR(FinishListing(repo, &snapshot.files));
  return snapshot;
}

absl::Status HubClient::Download(const RepoId& repo, absl::string_view commit, const RepoFile& file,
                                 const std::string& dest_path, ProgressFn on_bytes,
                                 const std::atomic<bool>* cancelled) {
  Impl& impl = *impl_;
  if (!IsCommitSha(commit)) {
    return absl::InvalidArgumentError(absl::StrCat("download of ", Quoted(file.path), " of repo ",
                                                   repo.ToString(), ": ", Quoted(commit),
                                                   " is not a commit (40 lowercase hex digits)"));
  }
  RETURN_IF_ERROR(ValidateRepoPath(file.path));
  if (!IsValidEtag(file.etag) || (file.etag.size() == 64) != file.lfs) {
    return absl::InvalidArgumentError(absl::StrCat(
        "download of ", Quoted(file.path), " of repo ", repo.ToString(), ": etag ",
        Quoted(file.etag), " is not a ", file.lfs ? "sha256 (LFS file)" : "git blob sha1"));
  }
  if (dest_path.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("download of ", Quoted(file.path), ": no destination path"));
  }
  Progress progress(std::move(on_bytes));
  Impl::FileTransfer transfer;
  transfer.repo = &repo;
  transfer.file = &file;
  transfer.target.repo = &repo;
  transfer.target.revision = std::string(commit);
  transfer.target.path = file.path;
  transfer.target.what = absl::StrCat("file ", Quoted(file.path), " at commit ", commit);
  transfer.url = absl::StrCat(impl.endpoint, "/", Escape(repo.org), "/", Escape(repo.name),
                              "/resolve/", commit, "/", EscapePath(file.path));
  transfer.cancelled = cancelled;
  transfer.progress = &progress;
  for (int round = 1;; ++round) {
    transfer.aborted.store(false);
    RETURN_IF_ERROR(impl.Scrub(impl.FetchFile(dest_path, &transfer)));
    absl::Status verified = VerifyFile(dest_path, file);
    if (verified.ok()) return absl::OkStatus();
    if (verified.code() != absl::StatusCode::kDataLoss) return verified;
    RETURN_IF_ERROR(RemovePartialDownload(dest_path));
    progress.Add(-static_cast<int64_t>(file.size));
    if (round == 2) {
      return absl::DataLossError(absl::StrCat(
          "file ", Quoted(file.path), " of repo ", repo.ToString(), " at commit ", commit,
          " downloaded from ", impl.endpoint,
          " twice and its content did not match the listing either time: ", verified.message()));
    }
    if (impl.options.on_retry) impl.options.on_retry(verified, round, absl::ZeroDuration());
  }
}

absl::StatusOr<FileMetadata> HubClient::HeadFile(const RepoId& repo, absl::string_view revision,
                                                 absl::string_view path) {
  RETURN_IF_ERROR(ValidateRevision(revision));
  RETURN_IF_ERROR(ValidateRepoPath(path));
  Impl& impl = *impl_;
  Target target;
  target.repo = &repo;
  target.revision = std::string(revision);
  target.path = std::string(path);
  target.what = absl::StrCat("file ", Quoted(path), " at revision ", Quoted(revision));
  std::string url = absl::StrCat(impl.endpoint, "/", Escape(repo.org), "/", Escape(repo.name),
                                 "/resolve/", Escape(revision), "/", EscapePath(path));
  for (int redirects = 0;; ++redirects) {
    Request request;
    request.url = url;
    request.head = true;
    request.follow_redirects = false;
    request.send_token = OriginOf(url) == impl.endpoint_origin;
    ASSIGN_OR_RETURN(Response response, impl.Fetch(request, target));
    auto header = [&](const char* name) -> std::string {
      auto it = response.headers.find(name);
      return it == response.headers.end() ? std::string() : it->second;
    };
    const bool redirect = response.status >= 300 && response.status < 400;
    const std::string location = header("location");
    if (redirect && !location.empty() && !IsAbsoluteUrl(location)) {
      if (redirects >= kMaxRedirects) {
        return absl::UnavailableError(
            absl::StrCat("too many redirects for ", target.what, " of repo ", repo.ToString()));
      }
      std::optional<std::string> next = ResolveUrl(url, location);
      if (!next.has_value()) {
        return absl::InvalidArgumentError(absl::StrCat(impl.endpoint, " redirected ", target.what,
                                                       " to an invalid URL ", Quoted(location)));
      }
      url = *next;
      continue;
    }
    FileMetadata metadata;
    auto bad = [&](absl::string_view why) {
      return absl::InvalidArgumentError(absl::StrCat(
          "HEAD of ", target.what, " of repo ", repo.ToString(), " on ", impl.endpoint, ": ", why));
    };
    metadata.commit = header("x-repo-commit");
    if (!IsCommitSha(metadata.commit)) {
      return bad(absl::StrCat("no valid X-Repo-Commit (", Quoted(metadata.commit), ")"));
    }
    std::string etag = header("x-linked-etag");
    if (etag.empty()) etag = header("etag");
    absl::string_view etag_view = absl::StripAsciiWhitespace(etag);
    absl::ConsumePrefix(&etag_view, "W/");
    absl::ConsumePrefix(&etag_view, "\"");
    absl::ConsumeSuffix(&etag_view, "\"");
    metadata.etag = std::string(etag_view);
    if (!IsValidEtag(metadata.etag)) {
      return bad(absl::StrCat("no valid ETag (", Quoted(etag), ")"));
    }
    metadata.lfs = metadata.etag.size() == 64;
    std::string size = header("x-linked-size");
    if (size.empty() && !redirect) size = header("content-length");
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(size), &metadata.size)) {
      return bad(absl::StrCat("no valid X-Linked-Size or Content-Length (", Quoted(size), ")"));
    }
    metadata.location = redirect && !location.empty() ? location : url;
    return metadata;
  }
}

}  // namespace shardserve::hub
