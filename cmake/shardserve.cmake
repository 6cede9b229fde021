# Declarative helpers, in the spirit of abseil's absl_cc_library and leveldb's leveldb_test.
#
#   shardserve_library(NAME foo SRCS a.cc b.cc HDRS a.h DEPS absl::status)
#   shardserve_test(NAME foo_test SRCS foo_test.cc DEPS foo [LABELS gpu] [ENV K=V ...])
#   shardserve_fuzzer(NAME foo_fuzzer SRCS foo_fuzzer.cc DEPS foo)
include_guard(GLOBAL)

function(shardserve_library)
  cmake_parse_arguments(ARG "" "NAME" "SRCS;HDRS;DEPS" ${ARGN})
  if(ARG_SRCS)
    add_library(${ARG_NAME} STATIC ${ARG_SRCS} ${ARG_HDRS})
    target_include_directories(${ARG_NAME} PUBLIC ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
    target_link_libraries(${ARG_NAME} PUBLIC ${ARG_DEPS})
  else()
    add_library(${ARG_NAME} INTERFACE)
    target_include_directories(${ARG_NAME} INTERFACE ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
    target_link_libraries(${ARG_NAME} INTERFACE ${ARG_DEPS})
  endif()
endfunction()

# Tests run with the repository root as working directory and SHARDSERVE_SOURCE_DIR set, so
# fixtures are found by path relative to the root.
function(shardserve_test)
  cmake_parse_arguments(ARG "" "NAME;TIMEOUT" "SRCS;DEPS;LABELS;ENV" ${ARGN})
  if(NOT SHARDSERVE_BUILD_TESTS)
    return()
  endif()
  add_executable(${ARG_NAME} ${ARG_SRCS})
  target_link_libraries(${ARG_NAME} PRIVATE ${ARG_DEPS} GTest::gmock_main)
  add_test(NAME ${ARG_NAME} COMMAND ${ARG_NAME} WORKING_DIRECTORY ${PROJECT_SOURCE_DIR})
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 300)
  endif()
  set_tests_properties(${ARG_NAME} PROPERTIES TIMEOUT ${ARG_TIMEOUT}
    ENVIRONMENT "SHARDSERVE_SOURCE_DIR=${PROJECT_SOURCE_DIR};${ARG_ENV}")
  if(ARG_LABELS)
    set_tests_properties(${ARG_NAME} PROPERTIES LABELS "${ARG_LABELS}")
  endif()
endfunction()

# libFuzzer targets, built only with -DSHARDSERVE_FUZZ=ON (clang). Each also gets a ctest that
# replays its seed corpus directory (if any) so the harness itself stays compiled and exercised.
function(shardserve_fuzzer)
  cmake_parse_arguments(ARG "" "NAME;CORPUS" "SRCS;DEPS" ${ARGN})
  if(NOT SHARDSERVE_FUZZ)
    return()
  endif()
  add_executable(${ARG_NAME} ${ARG_SRCS})
  target_link_libraries(${ARG_NAME} PRIVATE ${ARG_DEPS})
  target_compile_options(${ARG_NAME} PRIVATE -fsanitize=fuzzer)
  target_link_options(${ARG_NAME} PRIVATE -fsanitize=fuzzer)
  if(ARG_CORPUS)
    # New inputs go to a scratch directory in the build tree (libFuzzer writes into its first
    # corpus argument); the committed seeds are only read.
    set(scratch ${CMAKE_CURRENT_BINARY_DIR}/${ARG_NAME}_corpus)
    file(MAKE_DIRECTORY ${scratch})
    add_test(NAME ${ARG_NAME}_corpus
             COMMAND ${ARG_NAME} -max_total_time=30 ${scratch} ${ARG_CORPUS}
             WORKING_DIRECTORY ${PROJECT_SOURCE_DIR})
    set_tests_properties(${ARG_NAME}_corpus PROPERTIES LABELS fuzz)
  endif()
endfunction()
