// libFuzzer target for the GGUF reader: header, metadata, tensor table, the llama config mapping,
// the HF-name mapping and validation of ModelWeights, and dequantization of a few tensors.
// Seeds: tests/fuzz/corpus/gguf (written by worker/weights/testdata/make_gguf_testdata.py).
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "worker/weights/dequantize.h"
#include "worker/weights/gguf.h"
#include "worker/weights/model_weights.h"

namespace {

// Touch every accessor of a value, recursively.
void Exercise(const shardserve::GgufValue& v) {
  (void)v.AsUint();
  (void)v.AsInt();
  (void)v.AsFloat();
  (void)v.AsBool();
  (void)v.AsString();
  (void)v.AsStringArray();
  (void)v.AsIntArray();
  (void)v.AsFloatArray();
  (void)v.DebugString();
  for (const shardserve::GgufValue& e : v.nested()) Exercise(e);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // A heap copy of exactly `size` bytes so that ASan catches any read past the end.
  std::vector<uint8_t> bytes(data, data + size);
  auto file = shardserve::GgufFile::FromBytes(std::span<const uint8_t>(bytes), "fuzz.gguf");
  if (!file.ok()) return 0;
  for (const auto& [key, value] : (*file)->metadata()) Exercise(value);
  (void)shardserve::ModelConfigFromGguf(**file);

  int dequantized = 0;
  for (const shardserve::TensorView& t : (*file)->tensors()) {
    if (dequantized == 8) break;
    if (t.NumElements() > (int64_t{1} << 20)) continue;  // bound the output buffer
    auto values = shardserve::DequantizeToF32(t);
    ++dequantized;
    if (values.ok() && t.shape.size() == 2 && t.shape[1] % 64 == 0) {
      auto half = t.ColumnRange(0, t.shape[1] / 2);  // a strided view
      if (half.ok()) (void)shardserve::DequantizeToF32(*half);
    }
  }

  auto weights = shardserve::ModelWeights::FromGguf(std::move(*file));
  if (weights.ok()) {
    int n = 0;
    for (const std::string& name : (*weights)->TensorNames()) {
      if (n++ == 4) break;
      auto view = (*weights)->View(name);
      if (view.ok() && view->NumElements() <= (int64_t{1} << 20)) {
        (void)(*weights)->DequantizeF32(name);
      }
    }
  }
  return 0;
}
