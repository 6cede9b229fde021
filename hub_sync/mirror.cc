#include "hub_sync/mirror.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/json.h"

namespace shardserve::hub {
namespace {

using json = nlohmann::json;

constexpr size_t kChunkBytes = 256 << 10;  // one pread per chunk; memory per download
constexpr char kJsonType[] = "application/json; charset=utf-8";
constexpr char kOctetStream[] = "application/octet-stream";

// Matched against httplib's percent-decoded path; handlers re-parse the raw target, where an
// encoded '/' ("refs%2Fpr%2F1") still belongs to its segment.
constexpr char kApiPattern[] = R"(/api/models/[\s\S]*)";
constexpr char kResolvePattern[] = R"(/[^/]+/[^/]+/resolve/[\s\S]*)";

// --- Small helpers -------------------------------------------------------------------------------

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Strict RFC 3986 decoding: "%" must be followed by two hex digits; '+' stays '+' (a path).
std::optional<std::string> PercentDecode(absl::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out.push_back(s[i]);
      continue;
    }
    if (i + 2 >= s.size()) return std::nullopt;
    const int hi = HexValue(s[i + 1]);
    const int lo = HexValue(s[i + 2]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out.push_back(static_cast<char>(hi * 16 + lo));
    i += 2;
  }
  return out;
}

// Header values may not carry CR / LF (response splitting) or other control characters.
std::string HeaderSafe(absl::string_view s) {
  std::string out(s.substr(0, 512));
  for (char& c : out) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) c = '?';
  }
  return out;
}

std::string Quoted(absl::string_view etag) { return absl::StrCat("\"", etag, "\""); }

bool IsDirectory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::string Sha1HexOf(absl::string_view data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_Digest(data.data(), data.size(), digest, &length, EVP_sha1(), nullptr);
  return absl::BytesToHexString(absl::string_view(reinterpret_cast<const char*>(digest), length));
}

// The git oid of a file as the Hub lists it: the blob sha1 itself for regular files, the sha1 of
// the LFS pointer for LFS files.
std::string GitOid(const RepoFile& file) {
  return file.lfs ? GitBlobSha1Hex(LfsPointerText(file.etag, file.size)) : file.etag;
}

// An open file descriptor, closed when the last response holding it is gone.
class OpenFile {
 public:
  explicit OpenFile(int fd) : fd_(fd) {}
  ~OpenFile() {
    if (fd_ >= 0) ::close(fd_);
  }
  OpenFile(const OpenFile&) = delete;
  OpenFile& operator=(const OpenFile&) = delete;
  int fd() const { return fd_; }

 private:
  int fd_;
};

// --- Git trees: the "oid" of directories in /tree listings ---------------------------------------

struct TreeNode {
  std::map<std::string, const RepoFile*> files;  // by name
  std::map<std::string, TreeNode> dirs;          // by name
  std::string oid;
};

// Git tree object: entries "<mode> <name>\0<20-byte oid>" sorted by name, a directory's name
// compared as if it ended in '/'; oid = sha1("tree <length>\0" + entries).
void ComputeTreeOids(TreeNode* node) {
  struct Entry {
    std::string key;
    std::string text;
  };
  std::vector<Entry> entries;
  for (auto& [name, child] : node->dirs) {
    ComputeTreeOids(&child);
    entries.push_back({absl::StrCat(name, "/"), absl::StrCat("40000 ", name, std::string(1, '\0'),
                                                             absl::HexStringToBytes(child.oid))});
  }
  for (const auto& [name, file] : node->files) {
    entries.push_back({name, absl::StrCat("100644 ", name, std::string(1, '\0'),
                                          absl::HexStringToBytes(GitOid(*file)))});
  }
  std::sort(entries.begin(), entries.end(),
            [](const Entry& a, const Entry& b) { return a.key < b.key; });
  std::string content;
  for (const Entry& e : entries) content += e.text;
  node->oid = Sha1HexOf(absl::StrCat("tree ", content.size(), std::string(1, '\0'), content));
}

TreeNode BuildTree(const std::vector<RepoFile>& files) {
  TreeNode root;
  for (const RepoFile& file : files) {
    std::vector<std::string> parts = absl::StrSplit(file.path, '/');
    TreeNode* node = &root;
    for (size_t i = 0; i + 1 < parts.size(); ++i) node = &node->dirs[parts[i]];
    node->files[parts.back()] = &file;
  }
  ComputeTreeOids(&root);
  return root;
}

json FileEntry(const RepoFile& file) {
  json entry = {{"type", "file"}, {"oid", GitOid(file)}, {"size", file.size}, {"path", file.path}};
  if (file.lfs) {
    entry["lfs"] = {{"oid", file.etag},
                    {"size", file.size},
                    {"pointerSize", LfsPointerText(file.etag, file.size).size()}};
  }
  return entry;
}

// Appends the entries under `node` (whose path is `prefix`, "" for the root), directories before
// their contents, in name order.
void ListTree(const TreeNode& node, const std::string& prefix, bool recursive,
              std::vector<json>* out) {
  std::map<std::string, std::pair<const TreeNode*, const RepoFile*>> children;
  for (const auto& [name, child] : node.dirs) children[name].first = &child;
  for (const auto& [name, file] : node.files) children[name].second = file;
  for (const auto& [name, child] : children) {
    const std::string path = prefix.empty() ? name : absl::StrCat(prefix, "/", name);
    if (child.first != nullptr) {
      out->push_back(
          {{"type", "directory"}, {"oid", child.first->oid}, {"size", 0}, {"path", path}});
      if (recursive) ListTree(*child.first, path, recursive, out);
    }
    if (child.second != nullptr) out->push_back(FileEntry(*child.second));
  }
}

// --- Requests ------------------------------------------------------------------------------------

// What a route handler learned from the raw request target.
struct Target {
  RepoId repo;
  std::vector<std::string> rest;  // raw (still percent-encoded) segments after org/name
};

// A single byte range of a file of `size` bytes, per RFC 9110 14.1.2.
struct ByteRange {
  enum Kind { kNone, kSatisfiable, kUnsatisfiable } kind = kNone;
  uint64_t first = 0;
  uint64_t last = 0;  // inclusive
};

ByteRange ParseRange(absl::string_view header, uint64_t size) {
  ByteRange range;
  header = absl::StripAsciiWhitespace(header);
  if (header.empty()) return range;
  if (!absl::ConsumePrefix(&header, "bytes=")) return range;  // other units: ignored
  if (absl::StrContains(header, ',')) return range;           // multiple ranges: send it all
  const size_t dash = header.find('-');
  if (dash == absl::string_view::npos) return range;
  const absl::string_view first_text = absl::StripAsciiWhitespace(header.substr(0, dash));
  const absl::string_view last_text = absl::StripAsciiWhitespace(header.substr(dash + 1));
  uint64_t first = 0;
  uint64_t last = 0;
  if (first_text.empty()) {  // suffix: the last N bytes
    if (!absl::SimpleAtoi(last_text, &last)) return range;
    if (last == 0 || size == 0) {
      range.kind = ByteRange::kUnsatisfiable;
      return range;
    }
    range.kind = ByteRange::kSatisfiable;
    range.first = last >= size ? 0 : size - last;
    range.last = size - 1;
    return range;
  }
  if (!absl::SimpleAtoi(first_text, &first)) return range;
  if (last_text.empty()) {
    last = UINT64_MAX;
  } else if (!absl::SimpleAtoi(last_text, &last) || last < first) {
    return range;  // syntactically invalid: ignored
  }
  if (first >= size) {
    range.kind = ByteRange::kUnsatisfiable;
    return range;
  }
  range.kind = ByteRange::kSatisfiable;
  range.first = first;
  range.last = std::min(last, size - 1);
  return range;
}

class Mirror {
 public:
  Mirror(const HubCache* cache, MirrorOptions options)
      : cache_(cache), options_(std::move(options)) {
    if (options_.tree_page_size == 0) options_.tree_page_size = 1;
    if (options_.metrics != nullptr) {
      requests_ =
          options_.metrics->Counter("shardserve_mirror_requests_total",
                                    "Requests answered by the Hub mirror.", {"route", "code"});
      bytes_ = options_.metrics->Counter("shardserve_mirror_bytes_sent_total",
                                         "File bytes sent by the Hub mirror.");
      pulls_ =
          options_.metrics->Counter("shardserve_mirror_pull_through_total",
                                    "Pull-through fetches of what the cache lacked.", {"result"});
    }
  }

  void Api(const httplib::Request& req, httplib::Response& res);
  void Resolve(const httplib::Request& req, httplib::Response& res);

  void Count(absl::string_view route, int code) {
    if (requests_ != nullptr) requests_->Add({std::string(route), absl::StrCat(code)}, 1);
  }

 private:
  void ModelInfo(const Target& target, const std::string& revision, bool blobs,
                 httplib::Response& res);
  void Tree(const httplib::Request& req, const Target& target, const std::string& revision,
            const std::string& path, httplib::Response& res);
  // The commit `revision` names, pulling it through when allowed; nullopt after writing the
  // error response.
  std::optional<std::string> FindCommit(const RepoId& repo, const std::string& revision,
                                        const std::string& path, httplib::Response& res);
  std::optional<std::vector<RepoFile>> FindSnapshot(const RepoId& repo, const std::string& commit,
                                                    httplib::Response& res);
  // The blob the snapshot links `path` to, opened; nullptr when it is not there.
  std::shared_ptr<OpenFile> OpenLinkedBlob(const RepoId& repo, const std::string& commit,
                                           const std::string& path, std::string* etag,
                                           uint64_t* size) const;
  absl::Status Fetch(const RepoId& repo, absl::string_view revision, absl::string_view path) {
    absl::Status status = options_.fetch_missing(repo, revision, path);
    if (pulls_ != nullptr) pulls_->Add({status.ok() ? "ok" : "error"}, 1);
    return status;
  }
  void ServeFile(const httplib::Request& req, httplib::Response& res, const std::string& commit,
                 const std::string& etag, uint64_t size, std::shared_ptr<OpenFile> file);

  const HubCache* cache_;
  MirrorOptions options_;
  MetricFamily* requests_ = nullptr;
  MetricFamily* bytes_ = nullptr;
  MetricFamily* pulls_ = nullptr;
};

void SetError(httplib::Response& res, int status, absl::string_view code, absl::string_view message,
              absl::string_view commit = "") {
  res.status = status;
  if (!code.empty()) res.set_header("X-Error-Code", std::string(code));
  res.set_header("X-Error-Message", HeaderSafe(message));
  if (!commit.empty()) res.set_header("X-Repo-Commit", std::string(commit));
  res.set_content(DumpJson(json{{"error", std::string(message)}}), kJsonType);
}

// A failed pull-through as the Hub would have answered; `missing` is the X-Error-Code of what
// the cache lacked (used for NOT_FOUND).
void SetFetchError(httplib::Response& res, const absl::Status& status, absl::string_view missing,
                   absl::string_view commit) {
  const std::string message(status.message());
  switch (status.code()) {
    case absl::StatusCode::kNotFound:
      SetError(res, 404, missing, message, missing == "EntryNotFound" ? commit : "");
      return;
    case absl::StatusCode::kUnauthenticated:
      SetError(res, 401, "", message);
      return;
    case absl::StatusCode::kPermissionDenied:
      SetError(res, 403, "GatedRepo", message);
      return;
    case absl::StatusCode::kResourceExhausted:
      SetError(res, 429, "", message);
      return;
    case absl::StatusCode::kInvalidArgument:
      SetError(res, 400, "", message);
      return;
    case absl::StatusCode::kDeadlineExceeded:
      SetError(res, 504, "", message);
      return;
    default:
      SetError(res, 502, "", message);
  }
}

// Splits the raw target "/a/b/c?x" into its raw path segments (without the leading empty one).
std::vector<std::string> RawSegments(const httplib::Request& req) {
  absl::string_view target = req.target;
  target = target.substr(0, target.find('?'));
  absl::ConsumePrefix(&target, "/");
  return absl::StrSplit(target, '/');
}

// Decodes org and name; on failure writes 400 and returns nullopt.
std::optional<RepoId> ParseRepo(absl::string_view raw_org, absl::string_view raw_name,
                                httplib::Response& res) {
  std::optional<std::string> org = PercentDecode(raw_org);
  std::optional<std::string> name = PercentDecode(raw_name);
  if (!org || !name) {
    SetError(res, 400, "", "malformed percent-encoding in the repository id");
    return std::nullopt;
  }
  absl::StatusOr<RepoId> repo = ParseRepoId(absl::StrCat(*org, "/", *name));
  if (!repo.ok()) {
    SetError(res, 400, "", repo.status().message());
    return std::nullopt;
  }
  return *repo;
}

// Decodes raw segments joined by '/' and validates the result as a revision (or a repo path when
// `is_path`); on failure writes 400 and returns nullopt.
std::optional<std::string> DecodeJoined(const std::vector<std::string>& raw, size_t from,
                                        bool is_path, httplib::Response& res) {
  std::vector<std::string> parts(raw.begin() + std::min(from, raw.size()), raw.end());
  std::optional<std::string> decoded = PercentDecode(absl::StrJoin(parts, "/"));
  const char* what = is_path ? "file path" : "revision";
  if (!decoded) {
    SetError(res, 400, "", absl::StrCat("malformed percent-encoding in the ", what));
    return std::nullopt;
  }
  absl::Status valid = is_path ? ValidateRepoPath(*decoded) : ValidateRevision(*decoded);
  if (!valid.ok()) {
    SetError(res, 400, "", valid.message());
    return std::nullopt;
  }
  return decoded;
}

// Parameters are boolean-ish as the Hub reads them: "true" / "True" / "1".
bool ParamTrue(const httplib::Request& req, const char* name) {
  if (!req.has_param(name)) return false;
  const std::string value = absl::AsciiStrToLower(req.get_param_value(name));
  return value == "true" || value == "1";
}

// httplib applies its own (unchecked) Range handling to every response after the handler; the
// mirror answers Range itself, so the parsed ranges are dropped. The request object is not const
// in the server (httplib hands handlers a const view of its own mutable Request).
void DropHttplibRanges(const httplib::Request& req) {
  const_cast<httplib::Request&>(req).ranges.clear();
}

// --- Routes --------------------------------------------------------------------------------------

void Mirror::Api(const httplib::Request& req, httplib::Response& res) {
  DropHttplibRanges(req);
  std::vector<std::string> raw = RawSegments(req);  // api, models, org, name, ...
  if (raw.size() < 4 || raw[0] != "api" || raw[1] != "models") {
    SetError(res, 404, "", "not a route of this mirror");
    Count("other", res.status);
    return;
  }
  std::optional<RepoId> repo = ParseRepo(raw[2], raw[3], res);
  Target target;
  if (repo) target = Target{*repo, std::vector<std::string>(raw.begin() + 4, raw.end())};
  const std::vector<std::string>& rest = target.rest;
  if (repo && rest.empty()) {
    ModelInfo(target, "main", ParamTrue(req, "blobs"), res);
    Count("model_info", res.status);
  } else if (repo && rest[0] == "revision" && rest.size() >= 2) {
    std::optional<std::string> revision = DecodeJoined(rest, 1, /*is_path=*/false, res);
    if (revision) ModelInfo(target, *revision, ParamTrue(req, "blobs"), res);
    Count("revision", res.status);
  } else if (repo && rest[0] == "tree" && rest.size() >= 2) {
    std::optional<std::string> revision = DecodeJoined({rest[1]}, 0, /*is_path=*/false, res);
    std::optional<std::string> path;
    if (revision && rest.size() > 2 && !(rest.size() == 3 && rest[2].empty())) {
      path = DecodeJoined(rest, 2, /*is_path=*/true, res);
      if (!path) revision.reset();
    }
    if (revision) Tree(req, target, *revision, path.value_or(""), res);
    Count("tree", res.status);
  } else {
    if (repo) SetError(res, 404, "", "not a route of this mirror");
    Count("other", res.status);
  }
}

std::optional<std::string> Mirror::FindCommit(const RepoId& repo, const std::string& revision,
                                              const std::string& path, httplib::Response& res) {
  const bool repo_cached = IsDirectory(cache_->RepoDir(repo));
  absl::StatusOr<std::string> commit = absl::NotFoundError("repository not cached");
  if (repo_cached) commit = cache_->ResolveRevision(repo, revision);
  if (!commit.ok() && commit.status().code() == absl::StatusCode::kNotFound &&
      options_.fetch_missing) {
    absl::Status fetched = Fetch(repo, revision, path);
    if (!fetched.ok()) {
      SetFetchError(res, fetched, repo_cached ? "RevisionNotFound" : "RepoNotFound", "");
      return std::nullopt;
    }
    commit = cache_->ResolveRevision(repo, revision);
  }
  if (commit.ok() && IsCommitSha(*commit)) return *commit;
  if (commit.ok()) {
    SetError(res, 500, "",
             absl::StrCat("the cache's ref ", revision, " of ", repo.ToString(),
                          " does not hold a commit sha"));
  } else if (commit.status().code() != absl::StatusCode::kNotFound) {
    SetError(res, 500, "", commit.status().message());
  } else if (!IsDirectory(cache_->RepoDir(repo))) {
    SetError(res, 404, "RepoNotFound",
             absl::StrCat("Repository Not Found: ", repo.ToString(), " is not in this mirror"));
  } else {
    SetError(res, 404, "RevisionNotFound",
             absl::StrCat("Invalid rev id: ", revision, " (not in this mirror's copy of ",
                          repo.ToString(), ")"));
  }
  return std::nullopt;
}

std::optional<std::vector<RepoFile>> Mirror::FindSnapshot(const RepoId& repo,
                                                          const std::string& commit,
                                                          httplib::Response& res) {
  absl::StatusOr<std::vector<RepoFile>> files = cache_->SnapshotFiles(repo, commit);
  if (files.ok()) return *std::move(files);
  if (files.status().code() == absl::StatusCode::kNotFound) {
    SetError(res, 404, "RevisionNotFound",
             absl::StrCat("Invalid rev id: ", commit, " (no snapshot in this mirror)"));
  } else {
    SetError(res, 500, "", files.status().message());
  }
  return std::nullopt;
}

void Mirror::ModelInfo(const Target& target, const std::string& revision, bool blobs,
                       httplib::Response& res) {
  std::optional<std::string> commit = FindCommit(target.repo, revision, "", res);
  if (!commit) return;
  std::optional<std::vector<RepoFile>> files = FindSnapshot(target.repo, *commit, res);
  if (!files) return;
  json siblings = json::array();
  uint64_t total = 0;
  for (const RepoFile& file : *files) {
    json sibling = {{"rfilename", file.path}};
    if (blobs) {
      sibling["size"] = file.size;
      sibling["blobId"] = GitOid(file);
      if (file.lfs) {
        sibling["lfs"] = {{"size", file.size},
                          {"sha256", file.etag},
                          {"pointerSize", LfsPointerText(file.etag, file.size).size()}};
      }
    }
    total += file.size;
    siblings.push_back(std::move(sibling));
  }
  const std::string id = target.repo.ToString();
  json info = {{"_id", id},
               {"id", id},
               {"modelId", id},
               {"author", target.repo.org},
               {"sha", *commit},
               {"private", false},
               {"gated", false},
               {"disabled", false},
               {"tags", json::array()},
               {"siblings", std::move(siblings)}};
  if (blobs) info["usedStorage"] = total;
  res.status = 200;
  res.set_content(DumpJson(info), kJsonType);
}

void Mirror::Tree(const httplib::Request& req, const Target& target, const std::string& revision,
                  const std::string& path, httplib::Response& res) {
  uint64_t cursor = 0;
  if (req.has_param("cursor") && !absl::SimpleAtoi(req.get_param_value("cursor"), &cursor)) {
    SetError(res, 400, "", "cursor: not a listing position of this mirror");
    return;
  }
  std::optional<std::string> commit = FindCommit(target.repo, revision, "", res);
  if (!commit) return;
  std::optional<std::vector<RepoFile>> files = FindSnapshot(target.repo, *commit, res);
  if (!files) return;
  const TreeNode root = BuildTree(*files);
  const TreeNode* node = &root;
  if (!path.empty()) {
    for (absl::string_view part : absl::StrSplit(path, '/')) {
      auto it = node->dirs.find(std::string(part));
      if (it == node->dirs.end()) {
        SetError(res, 404, "EntryNotFound",
                 absl::StrCat("Entry not found: ", path, " is not a folder of ",
                              target.repo.ToString(), " at ", *commit),
                 *commit);
        return;
      }
      node = &it->second;
    }
  }
  const bool recursive = ParamTrue(req, "recursive");
  std::vector<json> entries;
  ListTree(*node, path, recursive, &entries);
  const uint64_t end = std::min<uint64_t>(entries.size(), cursor + options_.tree_page_size);
  json page = json::array();
  for (uint64_t i = cursor; i < end; ++i) page.push_back(std::move(entries[i]));
  if (end < entries.size()) {
    // httpx follows the "next" link as an absolute URL.
    std::string host = req.get_header_value("Host");
    if (host.empty() || host.find_first_of(" <>\"") != std::string::npos) {
      host = absl::StrCat(req.local_addr, ":", req.local_port);
    }
    const std::string scheme =
        req.get_header_value("X-Forwarded-Proto") == "https" ? "https" : "http";
    absl::string_view raw_path = req.target;
    raw_path = raw_path.substr(0, raw_path.find('?'));
    res.set_header("Link", HeaderSafe(absl::StrCat("<", scheme, "://", host, raw_path,
                                                   "?recursive=", recursive ? "true" : "false",
                                                   "&cursor=", end, ">; rel=\"next\"")));
  }
  res.status = 200;
  res.set_content(DumpJson(page), kJsonType);
}

std::shared_ptr<OpenFile> Mirror::OpenLinkedBlob(const RepoId& repo, const std::string& commit,
                                                 const std::string& path, std::string* etag,
                                                 uint64_t* size) const {
  // The link is only read, never followed: its last component names the blob, which is opened
  // under this repository's blobs/ without following symlinks.
  const std::string link = absl::StrCat(cache_->SnapshotDir(repo, commit), "/", path);
  char target[4096];
  const ssize_t n = ::readlink(link.c_str(), target, sizeof(target) - 1);
  if (n <= 0) return nullptr;
  absl::string_view text(target, static_cast<size_t>(n));
  const size_t slash = text.rfind('/');
  const absl::string_view name = slash == absl::string_view::npos ? text : text.substr(slash + 1);
  if (!IsValidEtag(name)) return nullptr;
  *etag = std::string(name);
  const std::string blob = cache_->BlobPath(repo, *etag);
  const int fd = ::open(blob.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return nullptr;
  auto file = std::make_shared<OpenFile>(fd);
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return nullptr;
  *size = static_cast<uint64_t>(st.st_size);
  return file;
}

void Mirror::Resolve(const httplib::Request& req, httplib::Response& res) {
  DropHttplibRanges(req);
  std::vector<std::string> raw = RawSegments(req);  // org, name, resolve, rev, path...
  if (raw.size() < 5 || raw[2] != "resolve") {
    SetError(res, 400, "", "expected /{org}/{name}/resolve/{revision}/{path}");
    Count("resolve", res.status);
    return;
  }
  std::optional<RepoId> repo = ParseRepo(raw[0], raw[1], res);
  std::optional<std::string> revision;
  std::optional<std::string> path;
  if (repo) revision = DecodeJoined({raw[3]}, 0, /*is_path=*/false, res);
  if (revision) path = DecodeJoined(raw, 4, /*is_path=*/true, res);
  if (!path) {
    Count("resolve", res.status);
    return;
  }
  std::optional<std::string> commit = FindCommit(*repo, *revision, *path, res);
  if (!commit) {
    Count("resolve", res.status);
    return;
  }
  std::string etag;
  uint64_t size = 0;
  std::shared_ptr<OpenFile> file = OpenLinkedBlob(*repo, *commit, *path, &etag, &size);
  const bool known_missing = file == nullptr && cache_->IsMarkedMissing(*repo, *commit, *path);
  if (file == nullptr && !known_missing && options_.fetch_missing) {
    absl::Status fetched = Fetch(*repo, *commit, *path);
    if (!fetched.ok()) {
      SetFetchError(res, fetched, "EntryNotFound", *commit);
      Count("resolve", res.status);
      return;
    }
    file = OpenLinkedBlob(*repo, *commit, *path, &etag, &size);
  }
  if (file == nullptr) {
    SetError(res, 404, "EntryNotFound",
             absl::StrCat("Entry not found: ", *path, " in ", repo->ToString(), " at ", *commit),
             *commit);
    Count("resolve", res.status);
    return;
  }
  ServeFile(req, res, *commit, etag, size, std::move(file));
  Count("resolve", res.status);
}

void Mirror::ServeFile(const httplib::Request& req, httplib::Response& res,
                       const std::string& commit, const std::string& etag, uint64_t size,
                       std::shared_ptr<OpenFile> file) {
  res.set_header("X-Repo-Commit", commit);
  res.set_header("ETag", Quoted(etag));
  res.set_header("X-Linked-Etag", Quoted(etag));
  res.set_header("X-Linked-Size", absl::StrCat(size));
  res.set_header("Accept-Ranges", "bytes");
  const ByteRange range = ParseRange(req.get_header_value("Range"), size);
  if (range.kind == ByteRange::kUnsatisfiable) {
    res.status = 416;
    res.set_header("Content-Range", absl::StrCat("bytes */", size));
    res.set_content(DumpJson(json{{"error", "Requested range not satisfiable"}}), kJsonType);
    return;
  }
  uint64_t start = 0;
  uint64_t length = size;
  res.status = 200;
  if (range.kind == ByteRange::kSatisfiable) {
    start = range.first;
    length = range.last - range.first + 1;
    res.status = 206;
    res.set_header("Content-Range",
                   absl::StrCat("bytes ", range.first, "-", range.last, "/", size));
  }
  if (length == 0) {  // an empty file: httplib would stream a zero-length provider chunked
    res.set_content("", kOctetStream);
    return;
  }
  MetricFamily* bytes = bytes_;
  auto buffer = std::make_shared<std::vector<char>>();
  res.set_content_provider(
      length, kOctetStream,
      [file, buffer, start, bytes](size_t offset, size_t want, httplib::DataSink& sink) {
        if (buffer->empty()) buffer->resize(kChunkBytes);
        const size_t chunk = std::min(want, buffer->size());
        ssize_t n;
        do {
          n = ::pread(file->fd(), buffer->data(), chunk, static_cast<off_t>(start + offset));
        } while (n < 0 && errno == EINTR);
        if (n <= 0) return false;  // the blob shrank or failed: drop the connection
        if (!sink.write(buffer->data(), static_cast<size_t>(n))) return false;
        if (bytes != nullptr) bytes->Add({}, static_cast<double>(n));
        return true;
      });
}

void MethodNotAllowed(const httplib::Request& req, httplib::Response& res) {
  DropHttplibRanges(req);
  res.set_header("Allow", "GET, HEAD");
  SetError(res, 405, "",
           absl::StrCat("method ", HeaderSafe(req.method),
                        " not allowed: this Hub mirror is read-only"));
}

}  // namespace

std::string LfsPointerText(absl::string_view sha256_hex, uint64_t size) {
  return absl::StrCat("version https://git-lfs.github.com/spec/v1\noid sha256:", sha256_hex,
                      "\nsize ", size, "\n");
}

void AddMirrorRoutes(HttpServer* server, const HubCache* cache, MirrorOptions options) {
  auto mirror = std::make_shared<Mirror>(cache, std::move(options));
  httplib::Server& http = server->server();
  http.Get(kApiPattern, [mirror](const httplib::Request& req, httplib::Response& res) {
    mirror->Api(req, res);
  });
  http.Get(kResolvePattern, [mirror](const httplib::Request& req, httplib::Response& res) {
    mirror->Resolve(req, res);
  });
  for (const char* pattern : {kApiPattern, kResolvePattern}) {
    auto refuse = [mirror](const httplib::Request& req, httplib::Response& res) {
      MethodNotAllowed(req, res);
      mirror->Count("other", res.status);
    };
    http.Post(pattern, refuse);
    http.Put(pattern, refuse);
    http.Patch(pattern, refuse);
    http.Delete(pattern, refuse);
    http.Options(pattern, refuse);
  }
}

}  // namespace shardserve::hub
