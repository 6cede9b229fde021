#include "hub_sync/quantize/quantize.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <random>
#include <set>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/json.h"
#include "common/mapped_file.h"
#include "common/status_macros.h"
#include "hub_sync/repo.h"
#include "worker/weights/dequantize.h"
#include "worker/weights/safetensors.h"
#include "worker/weights/safetensors_writer.h"

namespace shardserve::hub {
namespace {

namespace fs = std::filesystem;
using quant::QuantScheme;
using ojson = nlohmann::ordered_json;

// Files copied from the snapshot into the artifact when present.
constexpr const char* kCopiedFiles[] = {"tokenizer.json", "tokenizer_config.json",
                                        "generation_config.json", "special_tokens_map.json"};
constexpr absl::string_view kEmbeddingName = "model.embed_tokens.weight";
constexpr absl::string_view kLmHeadName = "lm_head.weight";
constexpr absl::string_view kIndexName = "model.safetensors.index.json";

absl::string_view SV(std::string_view s) { return absl::string_view(s.data(), s.size()); }

absl::Status ErrnoError(absl::string_view what, const std::string& path, int err) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", std::strerror(err)));
}

std::string RandomHex() {
  std::random_device rd;
  return absl::StrFormat("%08x", static_cast<uint32_t>(rd()));
}

// Writes `content` to `path` (created or truncated) and fsyncs it.
absl::Status WriteFileSynced(const std::string& path, absl::string_view content) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError("cannot create", path, errno);
  const char* p = content.data();
  size_t left = content.size();
  while (left > 0) {
    const ssize_t n = ::write(fd, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      return ErrnoError("cannot write", path, err);
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    return ErrnoError("cannot fsync", path, err);
  }
  if (::close(fd) != 0) return ErrnoError("cannot close", path, errno);
  return absl::OkStatus();
}

absl::Status FsyncDir(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("cannot open directory", dir, errno);
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) return ErrnoError("cannot fsync directory", dir, err);
  return absl::OkStatus();
}

// Removes a temporary directory on every path out of QuantizeSnapshot except success.
class TempDirGuard {
 public:
  explicit TempDirGuard(std::string path) : path_(std::move(path)) {}
  ~TempDirGuard() {
    if (!path_.empty()) {
      std::error_code ec;
      fs::remove_all(path_, ec);
    }
  }
  void Release() { path_.clear(); }

 private:
  std::string path_;
};

bool IsFloatSource(DType d) { return d == DType::kF32 || d == DType::kF16 || d == DType::kBF16; }

// The values of a contiguous F32 / F16 / BF16 view as float32 (exact).
void ToFloat(const TensorView& v, std::vector<float>* out) {
  const size_t n = static_cast<size_t>(v.NumElements());
  out->resize(n);
  const uint8_t* p = v.data;
  switch (v.dtype) {
    case DType::kF32:
      if (n > 0) std::memcpy(out->data(), p, n * 4);
      break;
    case DType::kF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        (*out)[i] = F16ToF32(h);
      }
      break;
    default:  // kBF16: the top half of a float32 (inline so that the loop vectorizes)
      for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        const uint32_t bits = static_cast<uint32_t>(h) << 16;
        std::memcpy(&(*out)[i], &bits, 4);
      }
      break;
  }
}

// One source tensor and what it becomes.
struct Planned {
  std::string name;
  std::string file;  // source file, for errors
  TensorView view;
  bool quantize = false;
  std::vector<TensorSpec> outputs;
  uint64_t source_bytes = 0;
  uint64_t output_bytes = 0;
};

struct Shard {
  std::string file_name;
  std::vector<size_t> tensors;  // indexes into the plan
  std::vector<TensorSpec> specs;
};

// The manifest fields that identify an artifact's content (everything but per-file and
// per-tensor results): when an existing manifest has the same, the artifact is reused.
ojson ManifestIdentity(const QuantizeOptions& options, const ojson& source,
                       const quant::QuantParams& params, const std::vector<std::string>& kept) {
  ojson m = ojson::object();
  m["format"] = std::string(quant::kManifestFormat);
  m["format_version"] = quant::kManifestFormatVersion;
  m["scheme"] = std::string(quant::SchemeName(options.scheme));
  m["tool"] = std::string(kQuantizeToolName);
  m["tool_version"] = std::string(kQuantizeToolVersion);
  m["source"] = source;
  switch (options.scheme) {
    case QuantScheme::kInt8:
      m["strategy"] = "channel";
      break;
    case QuantScheme::kInt4:
      m["group_size"] = params.group_size;
      break;
    case QuantScheme::kNf4:
      m["block_size"] = quant::kNf4BlockSize;
      m["double_quant"] = params.double_quant;
      break;
  }
  m["kept_bf16"] = kept;
  return m;
}

// True when `dest` holds a manifest with this identity and every file it lists, at its size.
bool ExistingArtifactMatches(const fs::path& dest, const ojson& identity) {
  std::error_code ec;
  const fs::path manifest_path = dest / std::string(quant::kManifestFileName);
  if (!fs::is_regular_file(manifest_path, ec)) return false;
  absl::StatusOr<nlohmann::json> manifest = ParseJsonFile(manifest_path.string());
  if (!manifest.ok() || !manifest->is_object()) return false;
  const nlohmann::json want = nlohmann::json::parse(identity.dump());
  try {
    for (const auto& [key, value] : want.items()) {
      if (!manifest->contains(key) || (*manifest)[key] != value) return false;
    }
    const nlohmann::json& files = manifest->at("files");
    if (!files.is_object() || files.empty()) return false;
    for (const auto& [name, info] : files.items()) {
      const fs::path p = dest / name;
      if (!fs::is_regular_file(p, ec) || fs::file_size(p, ec) != info.at("size").get<uint64_t>()) {
        return false;
      }
    }
  } catch (const nlohmann::json::exception&) {
    return false;
  }
  return true;
}

// Deletes "<dest>.tmp-*" and "<dest>.old-*" siblings left by killed runs (the caller holds the
// artifact lock, so none of them belongs to a live run).
void RemoveStaleSiblings(const fs::path& dest) {
  std::error_code ec;
  const std::string base = dest.filename().string();
  for (const auto& entry : fs::directory_iterator(dest.parent_path(), ec)) {
    const std::string name = entry.path().filename().string();
    if (absl::StartsWith(name, base + ".tmp-") || absl::StartsWith(name, base + ".old-")) {
      std::error_code rm_ec;
      fs::remove_all(entry.path(), rm_ec);
    }
  }
}

}  // namespace

absl::StatusOr<QuantizeResult> QuantizeSnapshot(const std::string& source_dir,
                                                const std::string& dest_dir,
                                                const QuantizeOptions& options,
                                                const QuantizeProgressFn& progress) {
  std::error_code ec;
  fs::path src = fs::path(source_dir).lexically_normal();
  if (src.filename().empty()) src = src.parent_path();
  fs::path dest = fs::path(dest_dir).lexically_normal();
  if (dest.filename().empty()) dest = dest.parent_path();
  if (dest.empty() || dest.filename() == "." || dest.filename() == "..") {
    return absl::InvalidArgumentError(absl::StrCat("invalid artifact directory '", dest_dir, "'"));
  }

  // --- Source: config.json and the checkpoint ---
  const fs::path config_path = src / "config.json";
  if (!fs::is_regular_file(config_path, ec)) {
    return absl::NotFoundError(absl::StrCat(src.string(), ": no config.json in the snapshot"));
  }
  ASSIGN_OR_RETURN(nlohmann::json config, ParseJsonFile(config_path.string()));
  if (!config.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(config_path.string(), ": config is a JSON ",
                                                   config.type_name(), ", not an object"));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsCheckpoint> checkpoint,
                   SafetensorsCheckpoint::Open(src.string()));

  // Which file each tensor comes from (for errors) and the source files to hash.
  std::map<std::string, std::string> tensor_file;
  std::vector<std::string> source_files = {"config.json"};
  if (!fs::exists(src / "model.safetensors", ec)) source_files.push_back(std::string(kIndexName));
  for (const auto& file : checkpoint->files()) {
    for (const TensorView& v : file->tensors()) tensor_file[v.name] = file->path();
    source_files.push_back(fs::path(file->path()).lexically_relative(src).string());
  }
  for (const char* name : kCopiedFiles) {
    if (fs::is_regular_file(src / name, ec)) source_files.push_back(name);
  }

  // --- Plan: what each tensor becomes ---
  std::vector<Planned> plan;
  std::vector<int64_t> in_features;
  for (const std::string& name : checkpoint->TensorNames()) {
    ASSIGN_OR_RETURN(TensorView view, checkpoint->Get(name));
    Planned p;
    p.name = name;
    p.file = tensor_file[name];
    p.view = view;
    if (!IsFloatSource(view.dtype)) {
      return absl::InvalidArgumentError(
          absl::StrCat(p.file, ": tensor '", name, "' has dtype ", SV(DTypeName(view.dtype)),
                       "; only F32, F16 and BF16 checkpoints can be quantized"));
    }
    p.source_bytes = view.ByteSize();
    const bool two_d = view.shape.size() == 2;
    p.quantize = two_d && (quant::IsQuantizableLinearName(name) ||
                           (name == kEmbeddingName && !options.keep_embeddings_bf16) ||
                           (name == kLmHeadName && !options.keep_lm_head_bf16));
    if (p.quantize) in_features.push_back(view.shape[1]);
    plan.push_back(std::move(p));
  }
  if (plan.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(src.string(), ": the checkpoint has no tensors"));
  }

  quant::QuantParams params;
  params.double_quant = options.scheme == QuantScheme::kNf4 && options.nf4_double_quant;
  if (options.scheme == QuantScheme::kInt4) {
    if (in_features.empty()) {
      params.group_size = quant::kAwqGroupSizeChoices.front();
    } else {
      absl::StatusOr<int64_t> g = quant::ChooseAwqGroupSize(in_features);
      if (!g.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat(src.string(), ": cannot quantize to int4: ", g.status().message()));
      }
      params.group_size = *g;
    }
  }

  std::vector<std::string> kept;
  std::set<std::string> not_converted;
  if (options.keep_lm_head_bf16) not_converted.insert("lm_head");
  std::set<std::string> output_names;
  uint64_t source_total = 0;
  uint64_t output_total = 0;
  for (Planned& p : plan) {
    if (p.quantize) {
      const std::string prefix = *quant::LinearPrefix(p.name);
      absl::StatusOr<std::vector<TensorSpec>> specs = quant::QuantizedTensorSpecs(
          options.scheme, prefix, p.view.shape[0], p.view.shape[1], params);
      if (!specs.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat(p.file, ": tensor '", p.name, "' ", ShapeString(p.view.shape),
                         " cannot be quantized to ", SV(quant::SchemeName(options.scheme)), ": ",
                         specs.status().message()));
      }
      p.outputs = *std::move(specs);
    } else {
      p.outputs = {TensorSpec{p.name, DType::kBF16, p.view.shape}};
      kept.push_back(p.name);
      // Linear-shaped weights kept in bf16 (lm_head, MoE routers) must not be read as quantized.
      if (p.view.shape.size() == 2 && p.name != kEmbeddingName) {
        if (std::optional<std::string> prefix = quant::LinearPrefix(p.name)) {
          not_converted.insert(*prefix);
        }
      }
    }
    for (const TensorSpec& spec : p.outputs) {
      if (!output_names.insert(spec.name).second) {
        return absl::InvalidArgumentError(absl::StrCat(p.file, ": tensor '", p.name,
                                                       "' would write '", spec.name,
                                                       "', a name another tensor already takes"));
      }
      ASSIGN_OR_RETURN(uint64_t bytes, TensorSpecBytes(spec));
      p.output_bytes += bytes;
    }
    source_total += p.source_bytes;
    output_total += p.output_bytes;
  }

  // --- Shards: consecutive tensors, a quantized layer's parts always in one file ---
  std::vector<Shard> shards;
  if (output_total <= options.max_shard_bytes) {
    shards.push_back(Shard{"model.safetensors", {}, {}});
    for (size_t i = 0; i < plan.size(); ++i) shards[0].tensors.push_back(i);
  } else {
    uint64_t in_shard = 0;
    for (size_t i = 0; i < plan.size(); ++i) {
      if (shards.empty() ||
          (in_shard > 0 && in_shard + plan[i].output_bytes > options.max_shard_bytes)) {
        shards.emplace_back();
        in_shard = 0;
      }
      shards.back().tensors.push_back(i);
      in_shard += plan[i].output_bytes;
    }
    for (size_t s = 0; s < shards.size(); ++s) {
      shards[s].file_name = absl::StrFormat("model-%05d-of-%05d.safetensors", s + 1, shards.size());
    }
  }
  for (Shard& shard : shards) {
    for (size_t i : shard.tensors) {
      for (const TensorSpec& spec : plan[i].outputs) shard.specs.push_back(spec);
    }
  }

  // --- Source hashes, and the artifact's identity ---
  ojson source = ojson::object();
  if (!options.source_repo.empty()) source["repo"] = options.source_repo;
  if (!options.source_commit.empty()) source["commit"] = options.source_commit;
  ojson source_hashes = ojson::object();
  for (const std::string& name : source_files) {
    ASSIGN_OR_RETURN(std::string sha, HashFileHex((src / name).string(), /*lfs=*/true));
    source_hashes[name] = sha;
  }
  source["files"] = std::move(source_hashes);
  const ojson identity = ManifestIdentity(options, source, params, kept);

  QuantizeResult result;
  result.source_bytes = source_total;
  result.group_size = options.scheme == QuantScheme::kInt4  ? params.group_size
                      : options.scheme == QuantScheme::kNf4 ? quant::kNf4BlockSize
                                                            : 0;
  for (const Planned& p : plan) {
    if (p.quantize) {
      ++result.quantized_tensors;
    } else {
      ++result.kept_tensors;
    }
  }

  if (!dest.parent_path().empty()) {
    fs::create_directories(dest.parent_path(), ec);
    if (ec) {
      return absl::InternalError(
          absl::StrCat("cannot create ", dest.parent_path().string(), ": ", ec.message()));
    }
  }
  if (ExistingArtifactMatches(dest, identity)) {
    result.reused = true;
    for (const auto& entry : fs::directory_iterator(dest, ec)) {
      if (entry.is_regular_file(ec)) result.artifact_bytes += entry.file_size(ec);
    }
    if (progress) progress("", source_total, source_total);
    return result;
  }
  RemoveStaleSiblings(dest);

  // --- Build everything in a temporary sibling ---
  const fs::path temp = dest.parent_path() /
                        absl::StrCat(dest.filename().string(), ".tmp-", getpid(), "-", RandomHex());
  if (!fs::create_directory(temp, ec) || ec) {
    return absl::InternalError(
        absl::StrCat("cannot create ", temp.string(), ": ", ec ? ec.message() : "it exists"));
  }
  TempDirGuard guard(temp.string());

  ojson tensors_manifest = ojson::object();
  uint64_t done = 0;
  if (progress) progress("", 0, source_total);
  std::vector<float> values;
  std::vector<uint16_t> bf16;
  for (const Shard& shard : shards) {
    ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsWriter> writer,
                     SafetensorsWriter::Create((temp / shard.file_name).string(), shard.specs,
                                               {{"format", "pt"}}));
    for (size_t i : shard.tensors) {
      const Planned& p = plan[i];
      if (options.cancel != nullptr && options.cancel->load()) {
        return absl::CancelledError(
            absl::StrCat("quantization into ", dest.string(), " cancelled before '", p.name, "'"));
      }
      auto record = [&](const TensorSpec& spec, std::span<const uint8_t> bytes) -> absl::Status {
        RETURN_IF_ERROR(writer->Write(spec.name, bytes));
        ojson t = ojson::object();
        t["dtype"] = std::string(DTypeName(spec.dtype));
        t["shape"] = spec.shape;
        t["sha256"] =
            Sha256Hex(absl::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
        tensors_manifest[spec.name] = std::move(t);
        return absl::OkStatus();
      };
      if (p.quantize) {
        ToFloat(p.view, &values);
        absl::StatusOr<quant::QuantizedTensors> q =
            quant::QuantizeLinear(options.scheme, *quant::LinearPrefix(p.name), values,
                                  p.view.shape[0], p.view.shape[1], params);
        if (!q.ok()) {
          return absl::Status(q.status().code(), absl::StrCat(p.file, ": ", q.status().message()));
        }
        for (size_t k = 0; k < q->specs.size(); ++k) {
          RETURN_IF_ERROR(record(q->specs[k], q->data[k]));
        }
      } else if (p.view.dtype == DType::kBF16) {
        RETURN_IF_ERROR(record(p.outputs[0], {p.view.data, p.view.ByteSize()}));
      } else {
        ToFloat(p.view, &values);
        bf16.resize(values.size());
        for (size_t k = 0; k < values.size(); ++k) bf16[k] = F32ToBF16(values[k]);
        RETURN_IF_ERROR(record(p.outputs[0], {reinterpret_cast<const uint8_t*>(bf16.data()),
                                              bf16.size() * sizeof(uint16_t)}));
      }
      done += p.source_bytes;
      if (progress) progress(p.name, done, source_total);
    }
    RETURN_IF_ERROR(writer->Finish());
  }
  values = {};
  bf16 = {};

  std::vector<std::string> written;
  for (const Shard& shard : shards) written.push_back(shard.file_name);
  if (shards.size() > 1) {
    nlohmann::json index;
    index["metadata"]["total_size"] = output_total;
    nlohmann::json& weight_map = index["weight_map"];
    weight_map = nlohmann::json::object();
    for (const Shard& shard : shards) {
      for (const TensorSpec& spec : shard.specs) weight_map[spec.name] = shard.file_name;
    }
    RETURN_IF_ERROR(
        WriteFileSynced((temp / std::string(kIndexName)).string(), DumpJson(index, 2) + "\n"));
    written.push_back(std::string(kIndexName));
  }

  config["quantization_config"] = quant::QuantizationConfig(
      options.scheme, params, std::vector<std::string>(not_converted.begin(), not_converted.end()));
  config["torch_dtype"] = "bfloat16";
  RETURN_IF_ERROR(WriteFileSynced((temp / "config.json").string(), DumpJson(config, 2) + "\n"));
  written.push_back("config.json");

  for (const char* name : kCopiedFiles) {
    if (!fs::is_regular_file(src / name, ec)) continue;
    ASSIGN_OR_RETURN(std::string content, ReadFileToString((src / name).string()));
    RETURN_IF_ERROR(WriteFileSynced((temp / name).string(), content));
    written.push_back(name);
  }

  // --- manifest.json, last ---
  ojson manifest = identity;
  ojson files = ojson::object();
  std::sort(written.begin(), written.end());
  for (const std::string& name : written) {
    const std::string path = (temp / name).string();
    ASSIGN_OR_RETURN(std::string sha, HashFileHex(path, /*lfs=*/true));
    const uint64_t size = fs::file_size(path, ec);
    files[name] = {{"size", size}, {"sha256", sha}};
    result.artifact_bytes += size;
  }
  manifest["files"] = std::move(files);
  manifest["tensors"] = std::move(tensors_manifest);
  const std::string manifest_text = manifest.dump(2) + "\n";
  RETURN_IF_ERROR(
      WriteFileSynced((temp / std::string(quant::kManifestFileName)).string(), manifest_text));
  result.artifact_bytes += manifest_text.size();
  RETURN_IF_ERROR(FsyncDir(temp.string()));

  // --- Into place: a previous dest is moved aside first, then deleted ---
  fs::path old;
  if (fs::exists(dest, ec)) {
    old = dest.parent_path() /
          absl::StrCat(dest.filename().string(), ".old-", getpid(), "-", RandomHex());
    if (::rename(dest.c_str(), old.c_str()) != 0) {
      return ErrnoError(absl::StrCat("cannot move aside"), dest.string(), errno);
    }
  }
  if (::rename(temp.c_str(), dest.c_str()) != 0) {
    const int err = errno;
    if (!old.empty()) ::rename(old.c_str(), dest.c_str());
    return ErrnoError(absl::StrCat("cannot rename ", temp.string(), " to"), dest.string(), err);
  }
  guard.Release();
  if (!old.empty()) fs::remove_all(old, ec);
  RETURN_IF_ERROR(FsyncDir(dest.parent_path().empty() ? "." : dest.parent_path().string()));
  return result;
}

}  // namespace shardserve::hub
