// libFuzzer target for what hub_sync's Hub client reads from the network before trusting it: a
// tree listing page (ParseTreePage + FinishListing) and a Link header (NextPageUrl). The first
// byte picks the parser. Any bytes must give a Status or nullopt, never a crash or an exception,
// and every accepted file must have a safe path and a valid etag.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "hub_sync/hub_client.h"
#include "hub_sync/repo.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const absl::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (data[0] & 1) {
    std::optional<std::string> next = shardserve::hub::NextPageUrl(text);
    if (next.has_value() && next->size() > text.size()) std::abort();
    return 0;
  }
  const shardserve::hub::RepoId repo{"fuzz", "repo"};
  std::vector<shardserve::hub::RepoFile> files;
  if (!shardserve::hub::ParseTreePage(text, repo, &files).ok()) return 0;
  if (!shardserve::hub::FinishListing(repo, &files).ok()) return 0;
  for (const shardserve::hub::RepoFile& file : files) {
    if (!shardserve::hub::ValidateRepoPath(file.path).ok()) std::abort();
    if (!shardserve::hub::IsValidEtag(file.etag)) std::abort();
    if ((file.etag.size() == 64) != file.lfs) std::abort();
  }
  return 0;
}
