#include "worker/weights/gguf.h"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "utf8proc.h"
#include "worker/weights/dtype.h"

namespace shardserve {
namespace {

constexpr int kMaxArrayDepth = 8;  // arrays of arrays of ... (llama.cpp writes depth 1 or 2)
constexpr uint32_t kMaxDims = 4;   // GGML_MAX_DIMS

// Smallest encodings, used to bound counts before allocating anything for them.
constexpr uint64_t kMinKvBytes = 8 + 1 + 4 + 1;                  // key length, key, type, u8 value
constexpr uint64_t kMinTensorInfoBytes = 8 + 1 + 4 + 8 + 4 + 8;  // name, n_dims, dim, type, offset

absl::string_view View(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// Size in bytes of a fixed-size value type, or 0 for string / array / unknown.
size_t ScalarSize(uint32_t type) {
  switch (static_cast<GgufType>(type)) {
    case GgufType::kU8:
    case GgufType::kI8:
    case GgufType::kBool:
      return 1;
    case GgufType::kU16:
    case GgufType::kI16:
      return 2;
    case GgufType::kU32:
    case GgufType::kI32:
    case GgufType::kF32:
      return 4;
    case GgufType::kU64:
    case GgufType::kI64:
    case GgufType::kF64:
      return 8;
    default:
      return 0;
  }
}

bool KnownType(uint32_t type) { return type <= static_cast<uint32_t>(GgufType::kF64); }

bool IsUnsigned(GgufType t) {
  return t == GgufType::kU8 || t == GgufType::kU16 || t == GgufType::kU32 || t == GgufType::kU64;
}
bool IsSigned(GgufType t) {
  return t == GgufType::kI8 || t == GgufType::kI16 || t == GgufType::kI32 || t == GgufType::kI64;
}
bool IsFloat(GgufType t) { return t == GgufType::kF32 || t == GgufType::kF64; }

uint64_t LoadLE(const uint8_t* p, size_t n) {
  uint64_t v = 0;
  for (size_t i = 0; i < n; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}

// A scalar of `type` stored at `p` (ScalarSize(type) bytes), split into the unsigned / signed /
// float representation GgufValue keeps.
struct Scalar {
  uint64_t u = 0;
  int64_t i = 0;
  double f = 0;
};
Scalar DecodeScalar(GgufType type, const uint8_t* p) {
  Scalar s;
  switch (type) {
    case GgufType::kU8:
    case GgufType::kU16:
    case GgufType::kU32:
    case GgufType::kU64:
      s.u = LoadLE(p, ScalarSize(static_cast<uint32_t>(type)));
      break;
    case GgufType::kBool:
      s.u = p[0] != 0 ? 1 : 0;
      break;
    case GgufType::kI8:
      s.i = static_cast<int8_t>(p[0]);
      break;
    case GgufType::kI16:
      s.i = static_cast<int16_t>(LoadLE(p, 2));
      break;
    case GgufType::kI32:
      s.i = static_cast<int32_t>(LoadLE(p, 4));
      break;
    case GgufType::kI64:
      s.i = static_cast<int64_t>(LoadLE(p, 8));
      break;
    case GgufType::kF32: {
      uint32_t bits = static_cast<uint32_t>(LoadLE(p, 4));
      float f;
      std::memcpy(&f, &bits, sizeof(f));
      s.f = f;
      break;
    }
    case GgufType::kF64: {
      uint64_t bits = LoadLE(p, 8);
      std::memcpy(&s.f, &bits, sizeof(s.f));
      break;
    }
    default:
      break;
  }
  return s;
}

absl::Status TypeError(absl::string_view expected, GgufType type, GgufType array_type) {
  std::string found(GgufTypeName(type));
  if (type == GgufType::kArray) found = absl::StrCat("array of ", GgufTypeName(array_type));
  return absl::InvalidArgumentError(absl::StrCat("expected ", expected, ", found ", found));
}

// Integer value of a scalar (or array element) as int64 / uint64, with range checks.
absl::StatusOr<int64_t> ToInt(GgufType type, const Scalar& s) {
  if (IsSigned(type)) return s.i;
  if (IsUnsigned(type) || type == GgufType::kBool) {
    if (s.u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return absl::InvalidArgumentError(absl::StrCat("value ", s.u, " does not fit in int64"));
    }
    return static_cast<int64_t>(s.u);
  }
  return TypeError("an integer", type, GgufType::kU8);
}

absl::StatusOr<double> ToFloat(GgufType type, const Scalar& s) {
  if (IsFloat(type)) return s.f;
  if (IsSigned(type)) return static_cast<double>(s.i);
  if (IsUnsigned(type)) return static_cast<double>(s.u);
  return TypeError("a number", type, GgufType::kU8);
}

bool ValidUtf8(absl::string_view s) {
  const auto* p = reinterpret_cast<const utf8proc_uint8_t*>(s.data());
  utf8proc_ssize_t left = static_cast<utf8proc_ssize_t>(s.size());
  while (left > 0) {
    utf8proc_int32_t cp;
    utf8proc_ssize_t n = utf8proc_iterate(p, left, &cp);
    if (n <= 0 || cp < 0) return false;
    p += n;
    left -= n;
  }
  return true;
}

std::string Quoted(absl::string_view s) { return absl::StrCat("'", absl::CHexEscape(s), "'"); }

}  // namespace

absl::string_view GgufTypeName(GgufType type) {
  switch (type) {
    case GgufType::kU8:
      return "u8";
    case GgufType::kI8:
      return "i8";
    case GgufType::kU16:
      return "u16";
    case GgufType::kI16:
      return "i16";
    case GgufType::kU32:
      return "u32";
    case GgufType::kI32:
      return "i32";
    case GgufType::kF32:
      return "f32";
    case GgufType::kBool:
      return "bool";
    case GgufType::kString:
      return "string";
    case GgufType::kArray:
      return "array";
    case GgufType::kU64:
      return "u64";
    case GgufType::kI64:
      return "i64";
    case GgufType::kF64:
      return "f64";
  }
  return "unknown";
}

// --- GgufValue --------------------------------------------------------------------------------

absl::StatusOr<uint64_t> GgufValue::AsUint() const {
  if (IsUnsigned(type_)) return uint_;
  if (IsSigned(type_)) {
    if (int_ < 0) return absl::InvalidArgumentError(absl::StrCat("value ", int_, " is negative"));
    return static_cast<uint64_t>(int_);
  }
  return TypeError("an integer", type_, array_type_);
}

absl::StatusOr<int64_t> GgufValue::AsInt() const {
  if (!IsUnsigned(type_) && !IsSigned(type_)) return TypeError("an integer", type_, array_type_);
  return ToInt(type_, Scalar{uint_, int_, float_});
}

absl::StatusOr<double> GgufValue::AsFloat() const {
  if (!IsUnsigned(type_) && !IsSigned(type_) && !IsFloat(type_)) {
    return TypeError("a number", type_, array_type_);
  }
  return ToFloat(type_, Scalar{uint_, int_, float_});
}

absl::StatusOr<bool> GgufValue::AsBool() const {
  if (type_ != GgufType::kBool) return TypeError("bool", type_, array_type_);
  return uint_ != 0;
}

absl::StatusOr<std::string> GgufValue::AsString() const {
  if (type_ != GgufType::kString) return TypeError("string", type_, array_type_);
  return string_;
}

absl::StatusOr<std::vector<std::string>> GgufValue::AsStringArray() const {
  if (type_ != GgufType::kArray || array_type_ != GgufType::kString) {
    return TypeError("array of string", type_, array_type_);
  }
  return strings_;
}

absl::StatusOr<std::vector<int64_t>> GgufValue::AsIntArray() const {
  if (type_ != GgufType::kArray ||
      !(IsUnsigned(array_type_) || IsSigned(array_type_) || array_type_ == GgufType::kBool)) {
    return TypeError("array of integers", type_, array_type_);
  }
  const size_t size = ScalarSize(static_cast<uint32_t>(array_type_));
  std::vector<int64_t> out(array_size_);
  for (size_t i = 0; i < array_size_; ++i) {
    absl::StatusOr<int64_t> v = ToInt(array_type_, DecodeScalar(array_type_, &raw_[i * size]));
    if (!v.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("element ", i, ": ", v.status().message()));
    }
    out[i] = *v;
  }
  return out;
}

absl::StatusOr<std::vector<double>> GgufValue::AsFloatArray() const {
  if (type_ != GgufType::kArray ||
      !(IsUnsigned(array_type_) || IsSigned(array_type_) || IsFloat(array_type_))) {
    return TypeError("array of numbers", type_, array_type_);
  }
  const size_t size = ScalarSize(static_cast<uint32_t>(array_type_));
  std::vector<double> out(array_size_);
  for (size_t i = 0; i < array_size_; ++i) {
    out[i] = *ToFloat(array_type_, DecodeScalar(array_type_, &raw_[i * size]));
  }
  return out;
}

std::string GgufValue::DebugString() const {
  switch (type_) {
    case GgufType::kString: {
      absl::string_view s = string_;
      std::string shown = absl::CHexEscape(s.substr(0, 60));
      return absl::StrCat("string \"", shown, s.size() > 60 ? "\"..." : "\"");
    }
    case GgufType::kArray:
      return absl::StrCat("array<", GgufTypeName(array_type_), ">[", array_size_, "]");
    case GgufType::kBool:
      return uint_ != 0 ? "bool true" : "bool false";
    default:
      break;
  }
  if (IsUnsigned(type_)) return absl::StrCat(GgufTypeName(type_), " ", uint_);
  if (IsSigned(type_)) return absl::StrCat(GgufTypeName(type_), " ", int_);
  return absl::StrCat(GgufTypeName(type_), " ", float_);
}

// --- Parser -----------------------------------------------------------------------------------

// Reads the header and tensor table from `bytes`, bounds-checking every read.
class GgufParser {
 public:
  GgufParser(std::span<const uint8_t> bytes, const std::string& what)
      : bytes_(bytes), what_(what) {}

  absl::Status Parse(GgufFile& file);

 private:
  uint64_t Left() const { return bytes_.size() - pos_; }

  absl::Status Error(absl::string_view context, absl::string_view problem) const {
    if (context.empty()) return absl::InvalidArgumentError(absl::StrCat(what_, ": ", problem));
    return absl::InvalidArgumentError(absl::StrCat(what_, ": ", context, ": ", problem));
  }

  absl::Status Need(uint64_t n, absl::string_view context, absl::string_view field) const {
    if (n > Left()) {
      return Error(context, absl::StrCat(field, " at offset ", pos_, " needs ", n,
                                         " bytes but the file ends after ", Left()));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<uint64_t> ReadUint(size_t n, absl::string_view context, absl::string_view field) {
    RETURN_IF_ERROR(Need(n, context, field));
    uint64_t v = LoadLE(bytes_.data() + pos_, n);
    pos_ += n;
    return v;
  }

  absl::StatusOr<std::string> ReadString(absl::string_view context, absl::string_view field) {
    ASSIGN_OR_RETURN(uint64_t len, ReadUint(8, context, absl::StrCat(field, " length")));
    if (len > Left()) {
      return Error(context,
                   absl::StrCat(field, " length ", len, " at offset ", pos_ - 8,
                                " runs past the end of the file (", Left(), " bytes left)"));
    }
    std::string s(reinterpret_cast<const char*>(bytes_.data() + pos_), len);
    pos_ += len;
    return s;
  }

  absl::StatusOr<std::string> ReadName(absl::string_view context, absl::string_view field) {
    ASSIGN_OR_RETURN(std::string s, ReadString(context, field));
    if (s.empty()) return Error(context, absl::StrCat(field, " is empty"));
    if (!ValidUtf8(s)) {
      return Error(context, absl::StrCat(field, " ", Quoted(s), " is not valid UTF-8"));
    }
    return s;
  }

  absl::Status ReadValue(uint32_t type, int depth, absl::string_view context, GgufValue& out);

  std::span<const uint8_t> bytes_;
  const std::string& what_;
  uint64_t pos_ = 0;
};

absl::Status GgufParser::ReadValue(uint32_t type, int depth, absl::string_view context,
                                   GgufValue& out) {
  if (!KnownType(type)) return Error(context, absl::StrCat("unknown value type ", type));
  out.type_ = static_cast<GgufType>(type);
  if (size_t size = ScalarSize(type); size != 0) {
    RETURN_IF_ERROR(Need(size, context, GgufTypeName(out.type_)));
    Scalar s = DecodeScalar(out.type_, bytes_.data() + pos_);
    pos_ += size;
    out.uint_ = s.u;
    out.int_ = s.i;
    out.float_ = s.f;
    return absl::OkStatus();
  }
  if (out.type_ == GgufType::kString) {
    ASSIGN_OR_RETURN(out.string_, ReadString(context, "string"));
    return absl::OkStatus();
  }
  // Array: element type, count, elements.
  if (depth >= kMaxArrayDepth) {
    return Error(context, absl::StrCat("arrays nested deeper than ", kMaxArrayDepth));
  }
  ASSIGN_OR_RETURN(uint64_t elem_type, ReadUint(4, context, "array element type"));
  if (!KnownType(static_cast<uint32_t>(elem_type))) {
    return Error(context, absl::StrCat("unknown array element type ", elem_type));
  }
  ASSIGN_OR_RETURN(uint64_t count, ReadUint(8, context, "array length"));
  out.array_type_ = static_cast<GgufType>(elem_type);
  // Each element takes at least this many bytes: bound the count before allocating.
  const size_t scalar_size = ScalarSize(static_cast<uint32_t>(elem_type));
  const uint64_t min_elem = scalar_size != 0                       ? scalar_size
                            : out.array_type_ == GgufType::kString ? 8
                                                                   : 4 + 8;
  if (count > Left() / min_elem) {
    return Error(
        context,
        absl::StrCat("array of ", count, " ", GgufTypeName(out.array_type_), " at offset ",
                     pos_ - 12, " is larger than the rest of the file (", Left(), " bytes)"));
  }
  out.array_size_ = static_cast<size_t>(count);
  if (scalar_size != 0) {
    out.raw_.assign(bytes_.data() + pos_, bytes_.data() + pos_ + count * scalar_size);
    pos_ += count * scalar_size;
    return absl::OkStatus();
  }
  if (out.array_type_ == GgufType::kString) {
    out.strings_.reserve(count);
    for (uint64_t i = 0; i < count; ++i) {
      ASSIGN_OR_RETURN(std::string s,
                       ReadString(context, absl::StrCat("string element ", i, " of the array")));
      out.strings_.push_back(std::move(s));
    }
    return absl::OkStatus();
  }
  out.nested_.resize(count);
  for (uint64_t i = 0; i < count; ++i) {
    RETURN_IF_ERROR(ReadValue(static_cast<uint32_t>(GgufType::kArray), depth + 1,
                              absl::StrCat(context, " element ", i), out.nested_[i]));
  }
  return absl::OkStatus();
}

absl::Status GgufParser::Parse(GgufFile& file) {
  // --- Header ---
  if (bytes_.size() < 4 || std::memcmp(bytes_.data(), "GGUF", 4) != 0) {
    if (bytes_.size() < 4) {
      return Error("", absl::StrCat("not a GGUF file: only ", bytes_.size(), " bytes"));
    }
    return Error(
        "", absl::StrCat("not a GGUF file: magic is ",
                         Quoted(absl::string_view(reinterpret_cast<const char*>(bytes_.data()), 4)),
                         ", expected 'GGUF'"));
  }
  pos_ = 4;
  ASSIGN_OR_RETURN(uint64_t version, ReadUint(4, "header", "version"));
  if (version != 2 && version != 3) {
    if ((version & 0xFFFF) == 0 && version != 0) {
      return Error("header", absl::StrCat("big-endian GGUF (version field 0x", absl::Hex(version),
                                          ") is not supported"));
    }
    return Error("header", absl::StrCat("unsupported GGUF version ", version,
                                        " (only versions 2 and 3 are read)"));
  }
  file.version_ = static_cast<uint32_t>(version);
  ASSIGN_OR_RETURN(uint64_t n_tensors, ReadUint(8, "header", "tensor count"));
  ASSIGN_OR_RETURN(uint64_t n_kv, ReadUint(8, "header", "metadata count"));
  if (n_kv > Left() / kMinKvBytes || n_tensors > Left() / kMinTensorInfoBytes ||
      n_kv * kMinKvBytes + n_tensors * kMinTensorInfoBytes > Left()) {
    return Error("header", absl::StrCat(n_tensors, " tensors and ", n_kv,
                                        " metadata entries cannot fit in the ", Left(),
                                        " bytes after the header"));
  }

  // --- Metadata ---
  for (uint64_t i = 0; i < n_kv; ++i) {
    const std::string where = absl::StrCat("metadata entry ", i);
    ASSIGN_OR_RETURN(std::string key, ReadName(where, "key"));
    const std::string context = absl::StrCat("metadata key ", Quoted(key));
    if (file.metadata_.count(key) != 0) return Error(context, "duplicate key");
    ASSIGN_OR_RETURN(uint64_t type, ReadUint(4, context, "value type"));
    GgufValue value;
    RETURN_IF_ERROR(ReadValue(static_cast<uint32_t>(type), 0, context, value));
    file.metadata_.emplace(std::move(key), std::move(value));
  }
  if (const GgufValue* align = file.FindValue("general.alignment"); align != nullptr) {
    absl::StatusOr<uint64_t> a = align->AsUint();
    if (!a.ok()) return Error("metadata key 'general.alignment'", a.status().message());
    if (*a == 0 || (*a & (*a - 1)) != 0) {
      return Error("metadata key 'general.alignment'",
                   absl::StrCat("alignment ", *a, " is not a power of two"));
    }
    if (*a > (uint64_t{1} << 30)) {
      return Error("metadata key 'general.alignment'",
                   absl::StrCat("alignment ", *a, " is larger than 2^30"));
    }
    file.alignment_ = *a;
  }
  const uint64_t alignment = file.alignment_;

  // --- Tensor infos ---
  struct Info {
    uint64_t offset;
    uint64_t nbytes;
  };
  std::vector<Info> infos;
  infos.reserve(n_tensors);
  file.tensors_.reserve(n_tensors);
  for (uint64_t i = 0; i < n_tensors; ++i) {
    ASSIGN_OR_RETURN(std::string name, ReadName(absl::StrCat("tensor info ", i), "tensor name"));
    const std::string context = absl::StrCat("tensor ", Quoted(name));
    if (file.tensor_index_.count(name) != 0) return Error(context, "duplicate tensor name");
    ASSIGN_OR_RETURN(uint64_t n_dims, ReadUint(4, context, "n_dims"));
    if (n_dims == 0 || n_dims > kMaxDims) {
      return Error(context, absl::StrCat("n_dims is ", n_dims, ", expected 1 to ", kMaxDims));
    }
    std::vector<int64_t> dims(n_dims);  // GGUF order: innermost first
    uint64_t numel = 1;
    for (uint64_t d = 0; d < n_dims; ++d) {
      ASSIGN_OR_RETURN(uint64_t dim, ReadUint(8, context, absl::StrCat("dimension ", d)));
      if (dim == 0) return Error(context, absl::StrCat("dimension ", d, " is 0"));
      if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / numel) {
        return Error(context, absl::StrCat("dimension ", d, " (", dim,
                                           ") makes the element count overflow"));
      }
      numel *= dim;
      dims[d] = static_cast<int64_t>(dim);
    }
    ASSIGN_OR_RETURN(uint64_t ggml_type, ReadUint(4, context, "type"));
    std::optional<DType> dtype = ggml_type <= std::numeric_limits<uint32_t>::max()
                                     ? DTypeFromGgmlType(static_cast<uint32_t>(ggml_type))
                                     : std::nullopt;
    if (!dtype)
      return Error(context, absl::StrCat("unknown or unsupported GGML type id ", ggml_type));
    const DTypeInfo& info = GetDTypeInfo(*dtype);
    if (static_cast<uint64_t>(dims[0]) % info.block_elems != 0) {
      return Error(context,
                   absl::StrCat("innermost dimension ", dims[0], " is not a multiple of the ",
                                View(info.name), " block size ", info.block_elems));
    }
    std::optional<size_t> nbytes = BytesForElements(*dtype, numel);
    if (!nbytes) return Error(context, "byte size overflows");
    ASSIGN_OR_RETURN(uint64_t offset, ReadUint(8, context, "data offset"));
    if (offset % alignment != 0) {
      return Error(context, absl::StrCat("data offset ", offset, " is not a multiple of the ",
                                         alignment, "-byte alignment"));
    }
    TensorView view;
    view.name = name;
    view.dtype = *dtype;
    view.shape.assign(dims.rbegin(), dims.rend());
    file.tensor_index_.emplace(std::move(name), file.tensors_.size());
    file.tensors_.push_back(std::move(view));
    infos.push_back({offset, *nbytes});
  }

  // --- Data section: starts at the next multiple of the alignment ---
  const uint64_t size = bytes_.size();
  uint64_t data_offset = pos_;
  if (pos_ % alignment != 0) data_offset = pos_ + (alignment - pos_ % alignment);
  file.data_offset_ = data_offset;
  if (n_tensors == 0) return absl::OkStatus();
  if (data_offset > size) {
    return Error("", absl::StrCat("tensor data section at offset ", data_offset,
                                  " starts past the end of the file (", size, " bytes)"));
  }
  const uint64_t data_size = size - data_offset;
  for (size_t i = 0; i < infos.size(); ++i) {
    if (infos[i].offset > data_size || infos[i].nbytes > data_size - infos[i].offset) {
      return Error(absl::StrCat("tensor ", Quoted(file.tensors_[i].name)),
                   absl::StrCat(infos[i].nbytes, " bytes of data at offset ", infos[i].offset,
                                " run past the end of the data section (", data_size,
                                " bytes from file offset ", data_offset, ")"));
    }
    TensorView& view = file.tensors_[i];
    view.data = bytes_.data() + data_offset + infos[i].offset;
    view.row_stride = view.RowBytes();
  }
  std::vector<size_t> order(infos.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return infos[a].offset < infos[b].offset; });
  for (size_t k = 1; k < order.size(); ++k) {
    const Info& prev = infos[order[k - 1]];
    if (prev.offset + prev.nbytes > infos[order[k]].offset) {
      return Error(absl::StrCat("tensor ", Quoted(file.tensors_[order[k]].name)),
                   absl::StrCat("data at offset ", infos[order[k]].offset, " overlaps tensor ",
                                Quoted(file.tensors_[order[k - 1]].name), " [", prev.offset, ", ",
                                prev.offset + prev.nbytes, ")"));
    }
  }
  return absl::OkStatus();
}

// --- GgufFile ---------------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Open(const std::string& path) {
  ASSIGN_OR_RETURN(MappedFile mapping, MappedFile::Open(path));
  std::unique_ptr<GgufFile> file(new GgufFile());
  file->path_ = path;
  file->mapping_ = std::move(mapping);
  RETURN_IF_ERROR(file->Parse(file->mapping_.bytes()));
  return file;
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::FromBytes(std::span<const uint8_t> bytes,
                                                              absl::string_view what) {
  std::unique_ptr<GgufFile> file(new GgufFile());
  file->path_ = std::string(what);
  RETURN_IF_ERROR(file->Parse(bytes));
  return file;
}

absl::Status GgufFile::Parse(std::span<const uint8_t> bytes) {
  GgufParser parser(bytes, path_);
  return parser.Parse(*this);
}

const GgufValue* GgufFile::FindValue(absl::string_view key) const {
  auto it = metadata_.find(std::string(key));
  return it == metadata_.end() ? nullptr : &it->second;
}

absl::StatusOr<const GgufValue*> GgufFile::Lookup(absl::string_view key) const {
  const GgufValue* value = FindValue(key);
  if (value == nullptr) {
    return absl::NotFoundError(absl::StrCat(path_, ": metadata key '", key, "' not found"));
  }
  return value;
}

namespace {
template <typename T>
absl::StatusOr<T> WithKey(absl::StatusOr<T> result, const std::string& path,
                          absl::string_view key) {
  if (result.ok()) return result;
  return absl::Status(result.status().code(), absl::StrCat(path, ": metadata key '", key,
                                                           "': ", result.status().message()));
}
}  // namespace

absl::StatusOr<std::string> GgufFile::GetString(absl::string_view key) const {
  ASSIGN_OR_RETURN(const GgufValue* v, Lookup(key));
  return WithKey(v->AsString(), path_, key);
}
absl::StatusOr<uint64_t> GgufFile::GetUint(absl::string_view key) const {
  ASSIGN_OR_RETURN(const GgufValue* v, Lookup(key));
  return WithKey(v->AsUint(), path_, key);
}
absl::StatusOr<int64_t> GgufFile::GetInt(absl::string_view key) const {
  ASSIGN_OR_RETURN(const GgufValue* v, Lookup(key));
  return WithKey(v->AsInt(), path_, key);
}
absl::StatusOr<double> GgufFile::GetFloat(absl::string_view key) const {
  ASSIGN_OR_RETURN(const GgufValue* v, Lookup(key));
  return WithKey(v->AsFloat(), path_, key);
}
absl::StatusOr<bool> GgufFile::GetBool(absl::string_view key) const {
  ASSIGN_OR_RETURN(const GgufValue* v, Lookup(key));
  return WithKey(v->AsBool(), path_, key);
}
absl::StatusOr<std::vector<std::string>> GgufFile::GetStringArray(absl::string_view key) const {
  ASSIGN_OR_RETURN(const GgufValue* v, Lookup(key));
  return WithKey(v->AsStringArray(), path_, key);
}
absl::StatusOr<std::vector<double>> GgufFile::GetFloatArray(absl::string_view key) const {
  ASSIGN_OR_RETURN(const GgufValue* v, Lookup(key));
  return WithKey(v->AsFloatArray(), path_, key);
}
absl::StatusOr<std::vector<int64_t>> GgufFile::GetIntArray(absl::string_view key) const {
  ASSIGN_OR_RETURN(const GgufValue* v, Lookup(key));
  return WithKey(v->AsIntArray(), path_, key);
}

const TensorView* GgufFile::Find(absl::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

absl::StatusOr<TensorView> GgufFile::Get(absl::string_view name) const {
  const TensorView* view = Find(name);
  if (view == nullptr) {
    return absl::NotFoundError(absl::StrCat(path_, ": no tensor '", name, "'"));
  }
  return *view;
}

// --- ModelConfigFromGguf ----------------------------------------------------------------------

namespace {

// f32 metadata widened by its shortest round-trip decimal (1e-5f -> 1e-05), other numbers as is.
absl::StatusOr<double> ConfigFloat(const GgufFile& file, const std::string& key) {
  ASSIGN_OR_RETURN(double value, file.GetFloat(key));
  if (file.FindValue(key)->type() == GgufType::kF32) {
    char buf[64];
    const float f = static_cast<float>(value);
    std::to_chars_result r = std::to_chars(buf, buf + sizeof(buf), f);
    double widened = value;
    if (r.ec == std::errc() && std::from_chars(buf, r.ptr, widened).ec == std::errc()) {
      return widened;
    }
  }
  return value;
}

// Count-like keys: a scalar integer, or a per-layer array whose entries are all equal.
absl::StatusOr<int64_t> ConfigInt(const GgufFile& file, const std::string& key) {
  const GgufValue* value = file.FindValue(key);
  if (value != nullptr && value->IsArray()) {
    ASSIGN_OR_RETURN(std::vector<int64_t> values, file.GetIntArray(key));
    if (values.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(file.path(), ": metadata key '", key, "': empty per-layer array"));
    }
    for (int64_t v : values) {
      if (v != values[0]) {
        return absl::InvalidArgumentError(
            absl::StrCat(file.path(), ": metadata key '", key, "': per-layer values differ (",
                         values[0], " and ", v, "); only uniform layers are supported"));
      }
    }
    return values[0];
  }
  return file.GetInt(key);
}

absl::StatusOr<std::optional<int64_t>> OptionalInt(const GgufFile& file, const std::string& key) {
  if (file.FindValue(key) == nullptr) return std::optional<int64_t>();
  ASSIGN_OR_RETURN(int64_t v, ConfigInt(file, key));
  return std::optional<int64_t>(v);
}

}  // namespace

absl::StatusOr<ModelConfig> ModelConfigFromGguf(const GgufFile& file) {
  ASSIGN_OR_RETURN(std::string arch, file.GetString("general.architecture"));
  if (arch != "llama") {
    return absl::InvalidArgumentError(absl::StrCat(
        file.path(), ": metadata key 'general.architecture': architecture ", Quoted(arch),
        " is not supported (only 'llama', which includes Mistral and "
        "Mixtral as llama.cpp writes them)"));
  }
  const std::string p = arch + ".";
  ModelConfig config;
  config.architecture = Architecture::kLlama;
  config.model_type = "llama";
  ASSIGN_OR_RETURN(config.hidden_size, ConfigInt(file, p + "embedding_length"));
  ASSIGN_OR_RETURN(config.num_hidden_layers, ConfigInt(file, p + "block_count"));
  ASSIGN_OR_RETURN(config.intermediate_size, ConfigInt(file, p + "feed_forward_length"));
  ASSIGN_OR_RETURN(config.num_attention_heads, ConfigInt(file, p + "attention.head_count"));
  ASSIGN_OR_RETURN(config.max_position_embeddings, ConfigInt(file, p + "context_length"));
  ASSIGN_OR_RETURN(config.rms_norm_eps, ConfigFloat(file, p + "attention.layer_norm_rms_epsilon"));

  ASSIGN_OR_RETURN(std::optional<int64_t> kv_heads,
                   OptionalInt(file, p + "attention.head_count_kv"));
  config.num_key_value_heads = kv_heads.value_or(config.num_attention_heads);

  ASSIGN_OR_RETURN(std::optional<int64_t> key_length,
                   OptionalInt(file, p + "attention.key_length"));
  ASSIGN_OR_RETURN(std::optional<int64_t> rope_dims, OptionalInt(file, p + "rope.dimension_count"));
  if (key_length) {
    config.head_dim = *key_length;
  } else if (rope_dims) {
    config.head_dim = *rope_dims;
  } else if (config.num_attention_heads > 0) {
    config.head_dim = config.hidden_size / config.num_attention_heads;
  }
  if (file.FindValue(p + "rope.freq_base") != nullptr) {
    ASSIGN_OR_RETURN(config.rope_theta, ConfigFloat(file, p + "rope.freq_base"));
  }

  // Vocabulary: the explicit key, else the tokenizer's token list, else the embedding rows.
  ASSIGN_OR_RETURN(std::optional<int64_t> vocab, OptionalInt(file, p + "vocab_size"));
  if (vocab) {
    config.vocab_size = *vocab;
  } else if (const GgufValue* tokens = file.FindValue("tokenizer.ggml.tokens");
             tokens != nullptr && tokens->IsArray()) {
    config.vocab_size = static_cast<int64_t>(tokens->ArraySize());
  } else if (const TensorView* embd = file.Find("token_embd.weight"); embd != nullptr) {
    config.vocab_size = embd->shape[0];
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat(file.path(), ": no vocabulary size ('", p,
                     "vocab_size', 'tokenizer.ggml.tokens' and tensor 'token_embd.weight' are all "
                     "absent)"));
  }

  // RoPE scaling (llama.cpp's keys; Llama-3.1's frequency factors come as tensor rope_freqs).
  if (file.FindValue(p + "rope.scaling.type") != nullptr) {
    ASSIGN_OR_RETURN(std::string type, file.GetString(p + "rope.scaling.type"));
    if (type != "none") config.rope_scaling.type = type;
  }
  if (file.FindValue(p + "rope.scaling.factor") != nullptr) {
    ASSIGN_OR_RETURN(config.rope_scaling.factor, ConfigFloat(file, p + "rope.scaling.factor"));
  } else if (file.FindValue(p + "rope.scale_linear") != nullptr) {  // older files
    ASSIGN_OR_RETURN(config.rope_scaling.factor, ConfigFloat(file, p + "rope.scale_linear"));
    if (config.rope_scaling.type.empty()) config.rope_scaling.type = "linear";
  }
  ASSIGN_OR_RETURN(std::optional<int64_t> original_ctx,
                   OptionalInt(file, p + "rope.scaling.original_context_length"));
  if (original_ctx) config.rope_scaling.original_max_position_embeddings = *original_ctx;
  if (config.rope_scaling.type.empty()) config.rope_scaling = RopeScaling();

  // Mixture of experts.
  ASSIGN_OR_RETURN(std::optional<int64_t> experts, OptionalInt(file, p + "expert_count"));
  if (experts && *experts > 0) {
    config.architecture = Architecture::kMixtral;
    config.model_type = "mixtral";
    config.num_local_experts = *experts;
    ASSIGN_OR_RETURN(config.num_experts_per_tok, ConfigInt(file, p + "expert_used_count"));
  }

  config.tie_word_embeddings = file.Find("output.weight") == nullptr;

  ASSIGN_OR_RETURN(std::optional<int64_t> bos, OptionalInt(file, "tokenizer.ggml.bos_token_id"));
  if (bos) config.bos_token_id = *bos;
  for (const char* key : {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"}) {
    ASSIGN_OR_RETURN(std::optional<int64_t> id, OptionalInt(file, key));
    if (id && std::find(config.eos_token_ids.begin(), config.eos_token_ids.end(), *id) ==
                  config.eos_token_ids.end()) {
      config.eos_token_ids.push_back(*id);
    }
  }

  RETURN_IF_ERROR(ValidateConfig(config, file.path()));
  return config;
}

}  // namespace shardserve
