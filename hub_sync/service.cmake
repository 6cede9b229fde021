# hub_sync's config, jobs, gRPC service and process (included from CMakeLists.txt once the
# modules they use exist).
find_package(CLI11 CONFIG REQUIRED)

shardserve_library(NAME hub_sync_config SRCS hub_sync_config.cc HDRS hub_sync_config.h
  DEPS hub_repo hub_cache yaml_config mapped_file status_macros absl::strings)
shardserve_test(NAME hub_sync_config_test SRCS hub_sync_config_test.cc DEPS hub_sync_config)

shardserve_library(NAME hub_sync_jobs SRCS sync_job.cc HDRS sync_job.h
  DEPS hub_cache hub_client gguf_import quantize shardserve_proto metrics log status_macros
       absl::synchronization absl::time absl::strings)

shardserve_library(NAME hub_sync_service SRCS service.cc HDRS service.h
  DEPS hub_sync_jobs hub_sync_config hub_mirror http_server chat_validation worker_health
       grpc_health_proto stop_signals host_port metrics log shardserve_proto gRPC::grpc++)

add_executable(hub_sync main.cc)
target_link_libraries(hub_sync PRIVATE hub_sync_service hub_sync_config CLI11::CLI11)
target_compile_definitions(hub_sync PRIVATE SHARDSERVE_VERSION="${PROJECT_VERSION}")
# build/hub_sync/hub_sync, next to build/gateway/gateway.
set_target_properties(hub_sync PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/hub_sync)
