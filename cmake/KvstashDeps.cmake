# Every third-party dependency comes from Debian 12 packages (scripts/install_deps.sh).
find_package(Threads REQUIRED)
find_package(PkgConfig REQUIRED)
find_package(absl CONFIG REQUIRED)
find_package(Protobuf REQUIRED)
find_package(gRPC CONFIG REQUIRED)
find_package(GTest CONFIG REQUIRED)
find_package(benchmark CONFIG REQUIRED)
find_package(RocksDB CONFIG REQUIRED)
find_package(fmt CONFIG REQUIRED)
find_package(spdlog CONFIG REQUIRED)
find_package(yaml-cpp CONFIG REQUIRED)
find_package(CLI11 CONFIG REQUIRED)
find_package(nlohmann_json CONFIG REQUIRED)
# Dependencies of one module are found where that module is built: UCX in transport/, hiredis
# (optional) in bench/service/.

pkg_check_modules(ZSTD REQUIRED IMPORTED_TARGET libzstd)
pkg_check_modules(LZ4 REQUIRED IMPORTED_TARGET liblz4)
pkg_check_modules(XXHASH REQUIRED IMPORTED_TARGET libxxhash)
pkg_check_modules(URING REQUIRED IMPORTED_TARGET liburing)
pkg_check_modules(ISAL REQUIRED IMPORTED_TARGET libisal)

find_path(HTTPLIB_INCLUDE_DIR httplib.h REQUIRED)
add_library(kvstash_httplib INTERFACE)
target_include_directories(kvstash_httplib SYSTEM INTERFACE ${HTTPLIB_INCLUDE_DIR})
# Debian ships cpp-httplib as a compiled library built with OpenSSL, zlib and brotli support. Its
# classes change layout with those macros, so every user must see the same definitions as the
# library (pkg-config Cflags), or objects get corrupted across the boundary.
pkg_check_modules(HTTPLIB IMPORTED_TARGET cpp-httplib)
if(HTTPLIB_FOUND)
  target_link_libraries(kvstash_httplib INTERFACE PkgConfig::HTTPLIB)
endif()
target_link_libraries(kvstash_httplib INTERFACE Threads::Threads)

find_program(KVSTASH_PROTOC protoc REQUIRED)
find_program(KVSTASH_GRPC_CPP_PLUGIN grpc_cpp_plugin REQUIRED)

# The Python package (python/): pybind11 and the interpreter's headers, optional (KVSTASH_PYTHON).
set(KVSTASH_HAVE_PYTHON OFF)
if(NOT KVSTASH_PYTHON STREQUAL "OFF" AND NOT KVSTASH_SANITIZE AND NOT KVSTASH_FUZZ)
  # Debian's interpreter, whose headers python3-dev installs (a pyenv shim earlier on PATH would
  # otherwise be picked, without headers).
  if(EXISTS /usr/bin/python3 AND NOT Python_EXECUTABLE)
    set(Python_EXECUTABLE /usr/bin/python3)
  endif()
  find_package(Python 3.9 COMPONENTS Interpreter Development.Module QUIET)
  if(Python_FOUND)
    set(PYBIND11_FINDPYTHON ON)
    find_package(pybind11 CONFIG QUIET)
  endif()
  if(Python_FOUND AND pybind11_FOUND)
    set(KVSTASH_HAVE_PYTHON ON)
    message(STATUS "kvstash Python package: Python ${Python_VERSION}, pybind11 ${pybind11_VERSION}")
  elseif(KVSTASH_PYTHON STREQUAL "ON")
    message(FATAL_ERROR "KVSTASH_PYTHON=ON needs pybind11-dev and python3-dev")
  else()
    message(STATUS "kvstash Python package: not built (pybind11-dev or python3-dev missing)")
  endif()
endif()
