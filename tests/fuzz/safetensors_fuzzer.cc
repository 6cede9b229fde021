// libFuzzer target for the safetensors header parser (SafetensorsFile::FromBytes): any bytes
// must give a Status or a file whose views lie inside the input.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "worker/weights/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::span<const uint8_t> bytes(data, size);
  auto file = shardserve::SafetensorsFile::FromBytes(bytes, "fuzz.safetensors");
  if (!file.ok()) return 0;
  for (const shardserve::TensorView& view : (*file)->tensors()) {
    // Every view must lie inside the input; touch its first and last byte so ASan checks it.
    const size_t bytes_covered = view.ByteSize();
    if (view.data < data || view.data + bytes_covered > data + size) std::abort();
    if (bytes_covered > 0) {
      volatile uint8_t sink = view.data[0];
      sink = view.data[bytes_covered - 1];
      (void)sink;
    }
    if ((*file)->Find(view.name) != &view) std::abort();
    if (view.Rows() > 1) (void)view.RowRange(0, view.Rows() / 2);
    if (view.shape.size() == 2) (void)view.ColumnRange(0, view.shape[1] / 2);
  }
  return 0;
}
