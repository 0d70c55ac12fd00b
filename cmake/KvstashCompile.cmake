# Warning and sanitizer flags shared by every kvstash target.
add_library(kvstash_flags INTERFACE)
target_compile_options(kvstash_flags INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wno-unused-parameter -Wnon-virtual-dtor>)
if(KVSTASH_WERROR)
  target_compile_options(kvstash_flags INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-Werror>)
endif()
# x86-64-v2 is the floor of every machine we deploy to; AVX2/FMA paths are picked at run time.
if(CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64")
  target_compile_options(kvstash_flags INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-msse4.2>)
endif()

if(KVSTASH_SANITIZE)
  set(_san -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  # One generator expression per flag: a list inside $<...> would be split at its semicolons.
  foreach(_flag ${_san})
    add_compile_options($<$<COMPILE_LANGUAGE:CXX,C>:${_flag}>)
  endforeach()
  add_link_options(${_san})
endif()

# Fuzz builds (preset `fuzz`, clang): every target gets coverage instrumentation and ASan+UBSan;
# fuzz targets link libFuzzer's main (tests/fuzz/CMakeLists.txt).
if(KVSTASH_FUZZ)
  set(_fuzz_san -fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer
                -fno-sanitize-recover=undefined)
  foreach(_flag ${_fuzz_san})
    add_compile_options($<$<COMPILE_LANGUAGE:CXX,C>:${_flag}>)
  endforeach()
  add_link_options(-fsanitize=address,undefined)
endif()

# kvstash_add_library(name SOURCES ... PUBLIC_DEPS ... PRIVATE_DEPS ...)
# Public headers live in <module>/include, implementation in <module>/src (private).
function(kvstash_add_library name)
  cmake_parse_arguments(A "" "" "SOURCES;PUBLIC_DEPS;PRIVATE_DEPS" ${ARGN})
  add_library(${name} STATIC ${A_SOURCES})
  target_include_directories(${name}
    PUBLIC $<BUILD_INTERFACE:${CMAKE_CURRENT_SOURCE_DIR}/include>
    PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/src)
  target_link_libraries(${name} PUBLIC ${A_PUBLIC_DEPS} PRIVATE kvstash_flags ${A_PRIVATE_DEPS})
endfunction()

# kvstash_add_test(name SOURCES ... DEPS ... [LABELS ...] [TIMEOUT s] [PRIVATE_INCLUDES dirs])
# One gtest executable; every TEST in it becomes a ctest entry.
function(kvstash_add_test name)
  cmake_parse_arguments(A "" "TIMEOUT" "SOURCES;DEPS;LABELS;PRIVATE_INCLUDES" ${ARGN})
  add_executable(${name} ${A_SOURCES})
  target_link_libraries(${name} PRIVATE kvstash_flags ${A_DEPS} GTest::gmock GTest::gtest_main)
  target_include_directories(${name} PRIVATE ${A_PRIVATE_INCLUDES})
  target_compile_definitions(${name} PRIVATE
    KVSTASH_SHARED_DATA="${KVSTASH_SHARED_DATA}"
    KVSTASH_MODEL_CACHE="${KVSTASH_MODEL_CACHE}"
    KVSTASH_SOURCE_DIR="${PROJECT_SOURCE_DIR}"
    KVSTASH_BINARY_DIR="${PROJECT_BINARY_DIR}")
  if(NOT A_TIMEOUT)
    set(A_TIMEOUT 300)
  endif()
  set(_labels ${A_LABELS})
  if(NOT _labels)
    set(_labels unit)
  endif()
  gtest_discover_tests(${name}
    DISCOVERY_TIMEOUT 60
    PROPERTIES LABELS "${_labels}" TIMEOUT ${A_TIMEOUT})
endfunction()
