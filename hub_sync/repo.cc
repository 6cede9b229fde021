#include "hub_sync/repo.h"

#include <fcntl.h>
#include <fnmatch.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"

namespace shardserve::hub {

namespace {

constexpr size_t kMaxRepoPartLength = 96;
constexpr size_t kMaxPathLength = 1024;
constexpr size_t kMaxSegmentLength = 255;
constexpr size_t kMaxRevisionLength = 256;

bool IsRepoNameChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
}

absl::Status CheckRepoPart(absl::string_view id, absl::string_view part, absl::string_view what) {
  auto invalid = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("repo id \"", id, "\": the ", what, " ", why));
  };
  if (part.empty()) return invalid("is empty");
  if (part.size() > kMaxRepoPartLength) {
    return invalid(absl::StrCat("is longer than ", kMaxRepoPartLength, " characters"));
  }
  for (char c : part) {
    if (!IsRepoNameChar(c)) {
      return invalid("may only contain letters, digits, '.', '_' and '-'");
    }
  }
  if (part.front() == '.' || part.front() == '-' || part.back() == '.' || part.back() == '-') {
    return invalid("may not start or end with '.' or '-'");
  }
  if (absl::StrContains(part, "--") || absl::StrContains(part, "..")) {
    return invalid("may not contain \"--\" or \"..\"");
  }
  return absl::OkStatus();
}

bool IsLowerHex(absl::string_view s, size_t length) {
  if (s.size() != length) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

// Length of the UTF-8 sequence starting at s[i], or 0 when it is not valid (overlong forms,
// surrogates and code points above U+10FFFF included).
size_t Utf8SequenceLength(absl::string_view s, size_t i) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char b0 = byte(i);
  if (b0 < 0x80) return 1;
  size_t length;
  uint32_t code;
  if (b0 >= 0xc2 && b0 <= 0xdf) {
    length = 2;
    code = b0 & 0x1f;
  } else if (b0 >= 0xe0 && b0 <= 0xef) {
    length = 3;
    code = b0 & 0x0f;
  } else if (b0 >= 0xf0 && b0 <= 0xf4) {
    length = 4;
    code = b0 & 0x07;
  } else {
    return 0;
  }
  if (i + length > s.size()) return 0;
  for (size_t k = 1; k < length; ++k) {
    if ((byte(i + k) & 0xc0) != 0x80) return 0;
    code = (code << 6) | (byte(i + k) & 0x3f);
  }
  if ((length == 3 && code < 0x800) || (length == 4 && (code < 0x10000 || code > 0x10ffff)) ||
      (code >= 0xd800 && code <= 0xdfff)) {
    return 0;
  }
  return length;
}

// Segments of a '/'-separated relative path: none empty, ".", or "..".
absl::Status CheckSegments(absl::string_view path, absl::string_view what) {
  for (absl::string_view segment : absl::StrSplit(path, '/')) {
    if (segment.empty() || segment == "." || segment == "..") {
      return absl::InvalidArgumentError(absl::StrCat(what, " \"", absl::CHexEscape(path),
                                                     "\" has an empty, \".\" or \"..\" segment"));
    }
    if (segment.size() > kMaxSegmentLength) {
      return absl::InvalidArgumentError(absl::StrCat(what, " \"", absl::CHexEscape(path),
                                                     "\" has a segment longer than ",
                                                     kMaxSegmentLength, " bytes"));
    }
  }
  return absl::OkStatus();
}

bool IsControl(unsigned char c) { return c < 0x20 || c == 0x7f; }

std::string ToHex(const unsigned char* digest, unsigned int length) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string hex(2 * length, '0');
  for (unsigned int i = 0; i < length; ++i) {
    hex[2 * i] = kDigits[digest[i] >> 4];
    hex[2 * i + 1] = kDigits[digest[i] & 0xf];
  }
  return hex;
}

}  // namespace

std::string RepoId::ToString() const { return absl::StrCat(org, "/", name); }
std::string RepoId::CacheFolder() const { return absl::StrCat("models--", org, "--", name); }
std::string RepoId::ArtifactFolder() const { return absl::StrCat(org, "--", name); }

absl::StatusOr<RepoId> ParseRepoId(absl::string_view id) {
  const size_t slash = id.find('/');
  if (slash == absl::string_view::npos || id.find('/', slash + 1) != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("repo id \"", absl::CHexEscape(id), "\" is not of the form ORG/NAME"));
  }
  RepoId repo{std::string(id.substr(0, slash)), std::string(id.substr(slash + 1))};
  RETURN_IF_ERROR(CheckRepoPart(id, repo.org, "organization"));
  RETURN_IF_ERROR(CheckRepoPart(id, repo.name, "name"));
  return repo;
}

absl::StatusOr<RepoId> RepoIdFromCacheFolder(absl::string_view folder) {
  constexpr absl::string_view kPrefix = "models--";
  if (!absl::ConsumePrefix(&folder, kPrefix)) {
    return absl::InvalidArgumentError(
        absl::StrCat("cache folder \"", folder, "\" does not start with \"models--\""));
  }
  // Neither part may contain "--", so the separator is unambiguous.
  const size_t separator = folder.find("--");
  if (separator == absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("cache folder \"models--", folder, "\" is not models--ORG--NAME"));
  }
  return ParseRepoId(absl::StrCat(folder.substr(0, separator), "/", folder.substr(separator + 2)));
}

bool IsCommitSha(absl::string_view s) { return IsLowerHex(s, 40); }

bool IsValidEtag(absl::string_view etag) { return IsLowerHex(etag, 40) || IsLowerHex(etag, 64); }

absl::Status ValidateRevision(absl::string_view revision) {
  if (revision.empty() || revision.size() > kMaxRevisionLength) {
    return absl::InvalidArgumentError(absl::StrCat("revision \"", absl::CHexEscape(revision),
                                                   "\" must have 1 to ", kMaxRevisionLength,
                                                   " characters"));
  }
  for (char c : revision) {
    if (IsControl(static_cast<unsigned char>(c)) || c == '\\') {
      return absl::InvalidArgumentError(absl::StrCat("revision \"", absl::CHexEscape(revision),
                                                     "\" contains a control character or '\\'"));
    }
  }
  return CheckSegments(revision, "revision");
}

absl::Status ValidateRepoPath(absl::string_view path) {
  const auto invalid = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("repo file path \"", absl::CHexEscape(path), "\" ", why));
  };
  if (path.empty()) return invalid("is empty");
  if (path.size() > kMaxPathLength) {
    return invalid(absl::StrCat("is longer than ", kMaxPathLength, " bytes"));
  }
  if (path.front() == '/') return invalid("is absolute");
  for (size_t i = 0; i < path.size();) {
    const unsigned char c = static_cast<unsigned char>(path[i]);
    if (IsControl(c)) return invalid("contains a NUL or control character");
    if (c == '\\') return invalid("contains a backslash");
    const size_t length = Utf8SequenceLength(path, i);
    if (length == 0) return invalid("is not valid UTF-8");
    i += length;
  }
  return CheckSegments(path, "repo file path");
}

bool PathSelected(absl::string_view path, const std::vector<std::string>& allow,
                  const std::vector<std::string>& ignore) {
  const std::string subject(path);
  const auto matches = [&](const std::string& pattern) {
    // huggingface_hub: a pattern ending in '/' means the folder's whole content.
    const std::string glob = absl::EndsWith(pattern, "/") ? pattern + "*" : pattern;
    // No FNM_PATHNAME / FNM_PERIOD: like Python's fnmatch, '*' also matches '/' and dots.
    return fnmatch(glob.c_str(), subject.c_str(), 0) == 0;
  };
  bool allowed = allow.empty();
  for (const std::string& pattern : allow) {
    if (matches(pattern)) {
      allowed = true;
      break;
    }
  }
  if (!allowed) return false;
  for (const std::string& pattern : ignore) {
    if (matches(pattern)) return false;
  }
  return true;
}

const std::vector<std::string>& DefaultAllowPatterns() {
  static const auto* const kPatterns = new std::vector<std::string>{
      // Weights, configs (and the sharded index), tokenizers of every kind, chat templates.
      "*.safetensors", "*.json",    "tokenizer.model", "*.tiktoken",
      "merges.txt",    "vocab.txt", "*.jinja"};
  return *kPatterns;
}

ContentHasher::ContentHasher(bool lfs, uint64_t size) : ctx_(EVP_MD_CTX_new()) {
  auto* ctx = static_cast<EVP_MD_CTX*>(ctx_);
  EVP_DigestInit_ex(ctx, lfs ? EVP_sha256() : EVP_sha1(), nullptr);
  if (!lfs) {
    const std::string header = absl::StrCat("blob ", size, std::string(1, '\0'));
    EVP_DigestUpdate(ctx, header.data(), header.size());
  }
}

ContentHasher::~ContentHasher() { EVP_MD_CTX_free(static_cast<EVP_MD_CTX*>(ctx_)); }

void ContentHasher::Update(absl::string_view bytes) {
  EVP_DigestUpdate(static_cast<EVP_MD_CTX*>(ctx_), bytes.data(), bytes.size());
}

std::string ContentHasher::FinishHex() {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_DigestFinal_ex(static_cast<EVP_MD_CTX*>(ctx_), digest, &length);
  return ToHex(digest, length);
}

std::string Sha256Hex(absl::string_view data) {
  ContentHasher hasher(/*lfs=*/true, data.size());
  hasher.Update(data);
  return hasher.FinishHex();
}

std::string GitBlobSha1Hex(absl::string_view data) {
  ContentHasher hasher(/*lfs=*/false, data.size());
  hasher.Update(data);
  return hasher.FinishHex();
}

namespace {

// The size and digest of an open file, read in 1 MiB chunks.
absl::StatusOr<std::pair<uint64_t, std::string>> HashOpenFile(int fd, const std::string& path,
                                                              bool lfs) {
  struct stat info;
  if (fstat(fd, &info) != 0) {
    return absl::InternalError(absl::StrCat("cannot stat ", path, ": ", std::strerror(errno)));
  }
  const uint64_t size = static_cast<uint64_t>(info.st_size);
  ContentHasher hasher(lfs, size);
  std::vector<char> buffer(1 << 20);
  uint64_t total = 0;
  while (true) {
    const ssize_t n = read(fd, buffer.data(), buffer.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::InternalError(absl::StrCat("cannot read ", path, ": ", std::strerror(errno)));
    }
    if (n == 0) break;
    hasher.Update(absl::string_view(buffer.data(), static_cast<size_t>(n)));
    total += static_cast<uint64_t>(n);
  }
  if (total != size) {
    return absl::DataLossError(
        absl::StrCat(path, " changed size while being hashed (", size, " -> ", total, ")"));
  }
  return std::make_pair(size, hasher.FinishHex());
}

absl::StatusOr<int> OpenForReading(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const std::string message = absl::StrCat("cannot open ", path, ": ", std::strerror(errno));
    return errno == ENOENT ? absl::NotFoundError(message) : absl::InternalError(message);
  }
  return fd;
}

}  // namespace

absl::StatusOr<std::string> HashFileHex(const std::string& path, bool lfs) {
  ASSIGN_OR_RETURN(const int fd, OpenForReading(path));
  auto result = HashOpenFile(fd, path, lfs);
  close(fd);
  if (!result.ok()) return result.status();
  return result->second;
}

absl::Status VerifyFile(const std::string& path, const RepoFile& file) {
  ASSIGN_OR_RETURN(const int fd, OpenForReading(path));
  struct stat info;
  if (fstat(fd, &info) == 0 && static_cast<uint64_t>(info.st_size) != file.size) {
    close(fd);
    return absl::DataLossError(absl::StrCat(file.path, ": expected ", file.size, " bytes, found ",
                                            info.st_size, " in ", path));
  }
  auto result = HashOpenFile(fd, path, file.lfs);
  close(fd);
  if (!result.ok()) return result.status();
  if (result->second != file.etag) {
    return absl::DataLossError(absl::StrCat(file.path, ": expected ",
                                            file.lfs ? "sha256 " : "git blob sha1 ", file.etag,
                                            ", found ", result->second, " in ", path));
  }
  return absl::OkStatus();
}

}  // namespace shardserve::hub
