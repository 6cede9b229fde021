#include "worker/weights/safetensors.h"

#include <utf8proc.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <limits>
#include <set>
#include <tuple>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/json.h"
#include "common/status_macros.h"

namespace shardserve {
namespace {

using nlohmann::json;

absl::string_view View(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// Byte offset of the first invalid UTF-8 sequence in `s` (overlong forms, surrogates and code
// points above U+10FFFF are invalid), or nullopt.
std::optional<size_t> FirstInvalidUtf8(absl::string_view s) {
  const auto* p = reinterpret_cast<const utf8proc_uint8_t*>(s.data());
  size_t i = 0;
  while (i < s.size()) {
    if (p[i] < 0x80) {
      ++i;
      continue;
    }
    utf8proc_int32_t codepoint;
    utf8proc_ssize_t n =
        utf8proc_iterate(p + i, static_cast<utf8proc_ssize_t>(s.size() - i), &codepoint);
    if (n <= 0) return i;
    i += static_cast<size_t>(n);
  }
  return std::nullopt;
}

// Up to 24 printable ASCII characters just before `offset`, to locate a bad byte for a reader.
std::string ContextBefore(absl::string_view s, size_t offset) {
  size_t begin = offset > 24 ? offset - 24 : 0;
  std::string out;
  for (size_t i = begin; i < offset; ++i) {
    char c = s[i];
    out.push_back(c >= 0x20 && c < 0x7f ? c : '?');
  }
  return out;
}

// SAX handler that records the first key repeated within one JSON object (nlohmann keeps the
// last value of a repeated key silently).
class DuplicateKeyFinder : public nlohmann::json_sax<json> {
 public:
  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override {
    keys_.emplace_back();
    return true;
  }
  bool key(string_t& key) override {
    if (!keys_.back().insert(key).second) {
      duplicate_ = key;
      return false;  // Stop parsing.
    }
    return true;
  }
  bool end_object() override {
    keys_.pop_back();
    return true;
  }
  bool start_array(std::size_t) override { return true; }
  bool end_array() override { return true; }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override {
    return false;
  }

  const std::optional<std::string>& duplicate() const { return duplicate_; }

 private:
  std::vector<std::set<std::string>> keys_;
  std::optional<std::string> duplicate_;
};

// Parses `text` as JSON and refuses repeated keys in any object. Errors name `what`.
absl::StatusOr<json> ParseJsonNoDuplicates(absl::string_view text, absl::string_view what) {
  ASSIGN_OR_RETURN(json doc, ParseJson(text, what));
  DuplicateKeyFinder finder;
  try {
    json::sax_parse(text.begin(), text.end(), &finder);
  } catch (const std::exception& e) {
    // Cannot happen after ParseJson accepted the text; kept so no exception escapes.
    return absl::InvalidArgumentError(absl::StrCat(what, ": invalid JSON: ", e.what()));
  }
  if (finder.duplicate()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": duplicate key '", *finder.duplicate(), "' in the JSON header"));
  }
  return doc;
}

struct Entry {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t begin;
  uint64_t end;
};

absl::StatusOr<Entry> ParseEntry(const std::string& name, const json& value, uint64_t buffer_size,
                                 absl::string_view what) {
  const std::string where = absl::StrCat(what, ": tensor '", name, "'");
  if (!value.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": entry is a JSON ", value.type_name(), ", not an object"));
  }
  Entry entry;
  entry.name = name;

  auto dtype_it = value.find("dtype");
  if (dtype_it == value.end()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": missing 'dtype'"));
  }
  if (!dtype_it->is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": 'dtype' is a JSON ", dtype_it->type_name(), ", not a string"));
  }
  const std::string& dtype_name = dtype_it->get_ref<const std::string&>();
  std::optional<DType> dtype = DTypeFromSafetensorsName(dtype_name);
  if (!dtype) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": unknown dtype '", dtype_name, "'"));
  }
  entry.dtype = *dtype;

  auto shape_it = value.find("shape");
  if (shape_it == value.end()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": missing 'shape'"));
  }
  if (!shape_it->is_array()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": 'shape' is a JSON ", shape_it->type_name(), ", not an array"));
  }
  constexpr uint64_t kMaxDim = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
  uint64_t nonzero = 1;
  for (const json& dim : *shape_it) {
    if (!dim.is_number_integer()) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": 'shape' element ", View(DumpJson(dim).substr(0, 64)), " is not an integer"));
    }
    if (!dim.is_number_unsigned()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": 'shape' has a negative dimension ", dim.get<int64_t>()));
    }
    uint64_t d = dim.get<uint64_t>();
    // The product of the non-zero dimensions must fit too: views compute row sizes from the
    // inner dimensions even when an outer one is 0.
    if (d > kMaxDim || __builtin_mul_overflow(nonzero, std::max<uint64_t>(d, 1), &nonzero) ||
        nonzero > kMaxDim) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": 'shape' ", View(DumpJson(*shape_it).substr(0, 200)), " overflows"));
    }
    entry.shape.push_back(static_cast<int64_t>(d));
  }

  uint64_t numel = 1;
  for (int64_t d : entry.shape) numel *= static_cast<uint64_t>(d);

  auto offsets_it = value.find("data_offsets");
  if (offsets_it == value.end()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": missing 'data_offsets'"));
  }
  if (!offsets_it->is_array() || offsets_it->size() != 2 ||
      !(*offsets_it)[0].is_number_unsigned() || !(*offsets_it)[1].is_number_unsigned()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": 'data_offsets' must be two non-negative integers, got ",
                     View(DumpJson(*offsets_it).substr(0, 64))));
  }
  entry.begin = (*offsets_it)[0].get<uint64_t>();
  entry.end = (*offsets_it)[1].get<uint64_t>();
  const std::string offsets = absl::StrCat("data_offsets [", entry.begin, ", ", entry.end, "]");
  if (entry.begin > entry.end) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", offsets, ": begin > end"));
  }
  if (entry.end > buffer_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": ", offsets, " extend past the data buffer of ", buffer_size, " bytes"));
  }
  std::optional<size_t> bytes = BytesForElements(entry.dtype, numel);
  if (!bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": ", numel, " elements of ", View(dtype_name), " overflow"));
  }
  if (entry.end - entry.begin != *bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": ", offsets, " hold ", entry.end - entry.begin, " bytes but shape ",
                     ShapeString(entry.shape), " of ", View(dtype_name), " needs ", *bytes));
  }
  return entry;
}

}  // namespace

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  ASSIGN_OR_RETURN(MappedFile mapping, MappedFile::Open(path));
  std::span<const uint8_t> bytes = mapping.bytes();
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, FromBytes(bytes, path));
  // The views point into the mapping, whose address does not change when it is moved.
  file->mapping_.emplace(std::move(mapping));
  return file;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::FromBytes(
    std::span<const uint8_t> bytes, absl::string_view what) {
  if (bytes.size() < 8) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": file is ", bytes.size(), " bytes, too short for the 8-byte header length"));
  }
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
  if (header_len > kMaxSafetensorsHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": header length ", header_len,
                                                   " exceeds the limit of ",
                                                   kMaxSafetensorsHeaderBytes, " bytes"));
  }
  if (header_len > bytes.size() - 8) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": header length ", header_len,
                                                   " is larger than the ", bytes.size() - 8,
                                                   " bytes after the length field"));
  }
  absl::string_view header(reinterpret_cast<const char*>(bytes.data() + 8), header_len);
  if (std::optional<size_t> bad = FirstInvalidUtf8(header)) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": header is not valid UTF-8 at header byte ", *bad, " (after \"",
                     ContextBefore(header, *bad), "\"); tensor names and metadata must be UTF-8"));
  }
  ASSIGN_OR_RETURN(json doc, ParseJsonNoDuplicates(header, absl::StrCat(what, ": header")));
  if (!doc.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": header is a JSON ", doc.type_name(), ", not an object"));
  }

  const uint8_t* buffer = bytes.data() + 8 + header_len;
  const uint64_t buffer_size = bytes.size() - 8 - header_len;
  auto file = std::unique_ptr<SafetensorsFile>(new SafetensorsFile());
  file->path_ = std::string(what);

  std::vector<Entry> entries;
  entries.reserve(doc.size());
  for (const auto& [key, value] : doc.items()) {
    if (key == "__metadata__") {
      if (value.is_null()) continue;
      if (!value.is_object()) {
        return absl::InvalidArgumentError(absl::StrCat(what, ": '__metadata__' is a JSON ",
                                                       value.type_name(), ", not an object"));
      }
      for (const auto& [mkey, mvalue] : value.items()) {
        if (!mvalue.is_string()) {
          return absl::InvalidArgumentError(absl::StrCat(what, ": '__metadata__' value of '", mkey,
                                                         "' is a JSON ", mvalue.type_name(),
                                                         ", not a string"));
        }
        file->metadata_.emplace(mkey, mvalue.get<std::string>());
      }
      continue;
    }
    ASSIGN_OR_RETURN(Entry entry, ParseEntry(key, value, buffer_size, what));
    entries.push_back(std::move(entry));
  }

  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
  });
  uint64_t expected = 0;
  const Entry* previous = nullptr;
  for (const Entry& e : entries) {
    if (e.begin < expected) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": tensor '", e.name, "' data_offsets [", e.begin, ", ", e.end,
          "] overlap tensor '", previous->name, "' [", previous->begin, ", ", previous->end, "]"));
    }
    if (e.begin > expected) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": gap in the data buffer: bytes [", expected, ", ", e.begin,
                       ") before tensor '", e.name, "' belong to no tensor",
                       previous ? absl::StrCat(" (previous tensor '", previous->name, "')") : ""));
    }
    expected = e.end;
    previous = &e;
  }
  if (expected != buffer_size) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": the tensors end at data byte ",
                                                   expected, " but the data buffer has ",
                                                   buffer_size, " bytes (trailing bytes)"));
  }

  file->tensors_.reserve(entries.size());
  for (Entry& e : entries) {
    TensorView view;
    view.name = std::move(e.name);
    view.dtype = e.dtype;
    view.shape = std::move(e.shape);
    view.data = buffer + e.begin;
    view.row_stride = view.RowBytes();
    file->index_.emplace(view.name, file->tensors_.size());
    file->tensors_.push_back(std::move(view));
  }
  return file;
}

const TensorView* SafetensorsFile::Find(absl::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

namespace {

// A shard name from an index must stay inside the index's directory.
absl::Status CheckShardName(const std::string& shard, const std::string& tensor,
                            const std::string& index_path) {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": weight_map entry for tensor '",
                                                   tensor, "': shard '", shard, "' ", why));
  };
  if (shard.empty()) return bad("is empty");
  if (shard.find('\0') != std::string::npos) return bad("contains a NUL byte");
  if (shard.front() == '/') return bad("is an absolute path");
  for (absl::string_view part : absl::StrSplit(shard, '/')) {
    if (part == "..") return bad("escapes the checkpoint directory");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> SafetensorsCheckpoint::Open(
    const std::string& path) {
  namespace fs = std::filesystem;
  auto checkpoint = std::unique_ptr<SafetensorsCheckpoint>(new SafetensorsCheckpoint());
  checkpoint->path_ = path;

  std::error_code ec;
  std::string single;
  std::string index;
  if (fs::is_directory(path, ec)) {
    const fs::path dir(path);
    if (fs::exists(dir / "model.safetensors", ec)) {
      single = (dir / "model.safetensors").string();
    } else if (fs::exists(dir / "model.safetensors.index.json", ec)) {
      index = (dir / "model.safetensors.index.json").string();
    } else {
      return absl::NotFoundError(absl::StrCat(
          path, ": no model.safetensors or model.safetensors.index.json in the directory"));
    }
  } else if (absl::EndsWith(path, ".json")) {
    index = path;
  } else {
    single = path;
  }

  if (!single.empty()) {
    ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(single));
    for (const TensorView& view : file->tensors()) checkpoint->tensors_.emplace(view.name, &view);
    checkpoint->files_.push_back(std::move(file));
    return checkpoint;
  }

  ASSIGN_OR_RETURN(std::string text, ReadFileToString(index));
  ASSIGN_OR_RETURN(json doc, ParseJsonNoDuplicates(text, index));
  if (!doc.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(index, ": index is a JSON ", doc.type_name(), ", not an object"));
  }
  auto map_it = doc.find("weight_map");
  if (map_it == doc.end()) {
    return absl::InvalidArgumentError(absl::StrCat(index, ": missing 'weight_map'"));
  }
  if (!map_it->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(index, ": 'weight_map' is a JSON ", map_it->type_name(), ", not an object"));
  }
  // shard -> tensors listed for it (both sorted).
  std::map<std::string, std::vector<std::string>> shards;
  for (const auto& [tensor, shard] : map_it->items()) {
    if (!shard.is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(index, ": weight_map entry for tensor '",
                                                     tensor, "' is a JSON ", shard.type_name(),
                                                     ", not a string"));
    }
    const std::string& shard_name = shard.get_ref<const std::string&>();
    RETURN_IF_ERROR(CheckShardName(shard_name, tensor, index));
    shards[shard_name].push_back(tensor);
  }

  const fs::path dir = fs::path(index).parent_path();
  for (const auto& [shard, tensors] : shards) {
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
        SafetensorsFile::Open((dir / shard).string());
    if (!file.ok()) {
      return absl::Status(file.status().code(),
                          absl::StrCat(index, ": shard '", shard, "' (holding tensor '",
                                       tensors.front(), "'): ", file.status().message()));
    }
    for (const std::string& tensor : tensors) {
      const TensorView* view = (*file)->Find(tensor);
      if (view == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(index, ": tensor '", tensor,
                                                       "' is mapped to shard '", shard,
                                                       "' but that shard does not contain it"));
      }
      checkpoint->tensors_.emplace(tensor, view);
    }
    checkpoint->files_.push_back(*std::move(file));
  }
  return checkpoint;
}

std::vector<std::string> SafetensorsCheckpoint::TensorNames() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& [name, view] : tensors_) names.push_back(name);
  return names;
}

absl::StatusOr<TensorView> SafetensorsCheckpoint::Get(absl::string_view name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) {
    return absl::NotFoundError(
        absl::StrCat("tensor '", name, "' not found in checkpoint '", path_, "'"));
  }
  return *it->second;
}

}  // namespace shardserve
