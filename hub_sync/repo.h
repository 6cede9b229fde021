// What every part of hub_sync agrees on about a Hub repository: its id, the files of one commit,
// and which remote names are safe to write under a snapshot.
//
// Remote data (repo ids, file paths, hashes from the network or from a client) is validated here
// and nowhere else; the cache, the client and the mirror call these before using such a string.
#ifndef SHARDSERVE_HUB_SYNC_REPO_H_
#define SHARDSERVE_HUB_SYNC_REPO_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace shardserve::hub {

// A model repository id, "org/name" (models only; datasets and spaces are not mirrored).
struct RepoId {
  std::string org;
  std::string name;

  // "org/name".
  std::string ToString() const;
  // "models--org--name": the folder under $CACHE/hub (and under $CACHE/hub/.locks).
  std::string CacheFolder() const;
  // "org--name": the folder under $CACHE/shardserve for derived artifacts.
  std::string ArtifactFolder() const;

  friend bool operator==(const RepoId&, const RepoId&) = default;
  friend auto operator<=>(const RepoId&, const RepoId&) = default;
};

// Parses "org/name". Each part: 1-96 characters of [A-Za-z0-9._-], not starting or ending with
// '.' or '-', no "--" or "..". INVALID_ARGUMENT naming the id and the rule broken.
absl::StatusOr<RepoId> ParseRepoId(absl::string_view id);

// Inverse of RepoId::CacheFolder ("models--org--name" -> org/name); INVALID_ARGUMENT otherwise.
absl::StatusOr<RepoId> RepoIdFromCacheFolder(absl::string_view folder);

// A 40-hex-digit lowercase git commit sha.
bool IsCommitSha(absl::string_view s);

// A revision as a client may name it: a branch, tag ("v1.0", "refs/pr/1") or commit. It must be
// usable as a relative path under refs/: 1-256 characters, no NUL / control characters, no
// backslash, no empty, "." or ".." segment, no leading or trailing '/'. INVALID_ARGUMENT otherwise.
absl::Status ValidateRevision(absl::string_view revision);

// A file path inside a repository as the Hub lists it ("config.json", "sub/dir/a.safetensors").
// Refused (INVALID_ARGUMENT naming the path): empty, longer than 1024 bytes, absolute, a
// backslash, NUL or any other control character (< 0x20, 0x7f), invalid UTF-8, an empty, "." or
// ".." segment, a trailing '/', a segment longer than 255 bytes. Such a path cannot escape the
// snapshot directory.
absl::Status ValidateRepoPath(absl::string_view path);

// An etag as used for blob names: 40 hex (git blob sha1) or 64 hex (sha256 of an LFS file),
// lowercase. Anything else could not be a blob file name.
bool IsValidEtag(absl::string_view etag);

// One file of a commit.
struct RepoFile {
  std::string path;  // validated with ValidateRepoPath
  uint64_t size = 0;
  // The blob name: the LFS sha256 (64 hex) for LFS files, else the git blob sha1 (40 hex).
  std::string etag;
  bool lfs = false;  // true: etag is the sha256 of the content; false: the git blob sha1

  friend bool operator==(const RepoFile&, const RepoFile&) = default;
};

// A revision resolved to a commit with its file list (sorted by path).
struct RepoSnapshot {
  RepoId repo;
  std::string revision;  // as asked ("main"); equal to commit when a commit was asked
  std::string commit;    // 40 hex
  std::vector<RepoFile> files;
};

// huggingface_hub's allow/ignore filtering: a path is kept when `allow` is empty or one allow
// pattern matches, and no ignore pattern matches. Patterns are case-sensitive fnmatch globs in
// which '*' also matches '/'; a pattern ending in '/' means everything under that folder.
bool PathSelected(absl::string_view path, const std::vector<std::string>& allow,
                  const std::vector<std::string>& ignore);

// The defaults when a request names no patterns: weights as safetensors, every JSON file,
// tokenizer files (tokenizer.model, *.tiktoken, merges.txt, vocab.txt) and chat templates
// (*.jinja); .bin / .pt / .pth / .gguf / .h5 / .msgpack and the rest are not fetched.
const std::vector<std::string>& DefaultAllowPatterns();

// Incremental digest of a file's content in its etag's algorithm (OpenSSL EVP): sha256 of the
// bytes for LFS files, git blob sha1 ("blob <size>\0" + bytes) otherwise; `size` is the declared
// size (the git header needs it up front). Not thread-safe; one per file.
class ContentHasher {
 public:
  ContentHasher(bool lfs, uint64_t size);
  ~ContentHasher();
  ContentHasher(const ContentHasher&) = delete;
  ContentHasher& operator=(const ContentHasher&) = delete;

  void Update(absl::string_view bytes);
  // Lowercase hex; call once.
  std::string FinishHex();

 private:
  void* ctx_;  // EVP_MD_CTX
};

// Hex digests as the Hub uses them for etags.
std::string Sha256Hex(absl::string_view data);
std::string GitBlobSha1Hex(absl::string_view data);

// Streams the file at `path` through ContentHasher(lfs, file size). NOT_FOUND / INTERNAL naming
// the path on I/O errors.
absl::StatusOr<std::string> HashFileHex(const std::string& path, bool lfs);

// OK when the file at `path` has `file.size` bytes and hashes to `file.etag`; DATA_LOSS naming
// the repo path, what was expected and what was found otherwise.
absl::Status VerifyFile(const std::string& path, const RepoFile& file);

}  // namespace shardserve::hub

#endif  // SHARDSERVE_HUB_SYNC_REPO_H_
