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
# KVSTASH_SHARED_DATA, KVSTASH_MODEL_CACHE, KVSTASH_SOURCE_DIR and KVSTASH_BINARY_DIR come from
# kvstash_test_paths (tests/testing/build_paths.h), not -D: test objects then hit ccache in
# other clones.
function(kvstash_add_test name)
  cmake_parse_arguments(A "" "TIMEOUT" "SOURCES;DEPS;LABELS;PRIVATE_INCLUDES" ${ARGN})
  add_executable(${name} ${A_SOURCES})
  target_link_libraries(${name} PRIVATE kvstash_flags kvstash_test_paths ${A_DEPS} GTest::gmock
                                        GTest::gtest_main)
  target_include_directories(${name} PRIVATE ${A_PRIVATE_INCLUDES})
  if(NOT A_TIMEOUT)
    set(A_TIMEOUT 300)
  endif()
  set(_labels ${A_LABELS})
  if(NOT _labels)
    set(_labels unit)
  endif()
  gtest_discover_tests(${name}
    DISCOVERY_TIMEOUT 60
    PROPERTIES TIMEOUT ${A_TIMEOUT})
  # Not PROPERTIES LABELS: CMake 3.25's discovery splits a list there, so LABELS "gpu;integration"
  # set only gpu and turned the rest into bogus properties, TIMEOUT among them. A ctest include
  # file run after the discovered tests' file labels the tests it listed in ${name}_TESTS (a
  # binary not built has none: its NOT_BUILT entry stays unlabelled).
  set(_labels_file "${CMAKE_CURRENT_BINARY_DIR}/${name}_labels.cmake")
  file(WRITE "${_labels_file}"
       "if(DEFINED ${name}_TESTS)\n"
       "  set_tests_properties(\${${name}_TESTS} PROPERTIES LABELS \"${_labels}\")\n"
       "endif()\n")
  set_property(DIRECTORY APPEND PROPERTY TEST_INCLUDE_FILES "${_labels_file}")
endfunction()

# kvstash_add_pytest(name FILES ... [LABELS ...] [TIMEOUT s] [PYTHON exe] [SKIP_RETURN_CODE n])
# One ctest entry per pytest file (named <name>.<file stem>), run by tests/python/run_pytest.sh
# with the venv's interpreter (scripts/setup_python.sh; PYTHON overrides it), the package on
# PYTHONPATH (source python/ and this build's python/) and the build tree in KVSTASH_BINARY_DIR.
# Label `python` is always added. SKIP_RETURN_CODE: the runner's exit code for a deliberately
# absent optional piece (run_pytest.sh returns 77 when the interpreter is missing on purpose).
set(KVSTASH_TEST_PYTHON "${KVSTASH_MODEL_CACHE}/venv/bin/python" CACHE FILEPATH
    "Interpreter of the venv the Python tests run in (scripts/setup_python.sh)")
function(kvstash_add_pytest name)
  cmake_parse_arguments(A "" "TIMEOUT;PYTHON" "FILES;LABELS" ${ARGN})
  if(NOT A_TIMEOUT)
    set(A_TIMEOUT 300)
  endif()
  if(NOT A_PYTHON)
    set(A_PYTHON ${KVSTASH_TEST_PYTHON})
  endif()
  foreach(file ${A_FILES})
    get_filename_component(stem ${file} NAME_WE)
    add_test(NAME ${name}.${stem}
      COMMAND ${PROJECT_SOURCE_DIR}/tests/python/run_pytest.sh ${A_PYTHON}
              ${CMAKE_CURRENT_SOURCE_DIR}/${file}
      WORKING_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR})
    set_tests_properties(${name}.${stem} PROPERTIES
      LABELS "python;${A_LABELS}"
      TIMEOUT ${A_TIMEOUT}
      SKIP_RETURN_CODE 77
      ENVIRONMENT
        "PYTHONPATH=${PROJECT_SOURCE_DIR}/python:${PROJECT_BINARY_DIR}/python;KVSTASH_BINARY_DIR=${PROJECT_BINARY_DIR};KVSTASH_SOURCE_DIR=${PROJECT_SOURCE_DIR};KVSTASH_SHARED_DATA=${KVSTASH_SHARED_DATA};KVSTASH_MODEL_CACHE=${KVSTASH_MODEL_CACHE}")
  endforeach()
endfunction()
