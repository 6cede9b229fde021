// RETURN_IF_ERROR / ASSIGN_OR_RETURN: Debian's abseil (20220623) ships absl::Status but not the
// status macros, so this is the project's one copy.
#ifndef SHARDSERVE_COMMON_STATUS_MACROS_H_
#define SHARDSERVE_COMMON_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define SHARDSERVE_CONCAT_INNER_(a, b) a##b
#define SHARDSERVE_CONCAT_(a, b) SHARDSERVE_CONCAT_INNER_(a, b)

// Evaluates `expr` (an absl::Status) and returns it from the enclosing function if not OK.
#define RETURN_IF_ERROR(expr)                                \
  do {                                                       \
    ::absl::Status shardserve_status_ = (expr);              \
    if (!shardserve_status_.ok()) return shardserve_status_; \
  } while (0)

// ASSIGN_OR_RETURN(auto x, MaybeX()) or ASSIGN_OR_RETURN(x, MaybeX()): evaluates an
// absl::StatusOr<T>, returns its status if not OK, else moves the value into the left side.
#define ASSIGN_OR_RETURN(lhs, expr) \
  SHARDSERVE_ASSIGN_OR_RETURN_IMPL_(SHARDSERVE_CONCAT_(shardserve_statusor_, __LINE__), lhs, expr)

#define SHARDSERVE_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                                      \
  if (!statusor.ok()) return std::move(statusor).status();     \
  lhs = std::move(statusor).value()

#endif  // SHARDSERVE_COMMON_STATUS_MACROS_H_
