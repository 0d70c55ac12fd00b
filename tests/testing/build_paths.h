// Where a test finds this build tree, the sources, the shared fixtures and the model cache.
//
// CMake force-includes this header (-include) into every target that links
// kvstash_test_paths, which kvstash_add_test() does, and generates kvstash_test_paths' one source
// per build tree with the absolute paths. Test objects therefore carry no path of the checkout,
// and ccache shares them between clones; a -D with a path would be part of each object's hash.
//
// The macros are `const char*` values, not string literals:
//   std::string(KVSTASH_SHARED_DATA) + "/models/stories260K.bin"
#ifndef KVSTASH_TESTS_TESTING_BUILD_PATHS_H_
#define KVSTASH_TESTS_TESTING_BUILD_PATHS_H_

namespace kvstash_test_paths {
extern const char* const kSourceDir;   // the checkout (PROJECT_SOURCE_DIR)
extern const char* const kBinaryDir;   // this build tree (PROJECT_BINARY_DIR)
extern const char* const kSharedData;  // KVSTASH_SHARED_DATA: tiny models, text corpora
extern const char* const kModelCache;  // KVSTASH_MODEL_CACHE: fetched models, venvs
}  // namespace kvstash_test_paths

#define KVSTASH_SOURCE_DIR (::kvstash_test_paths::kSourceDir)
#define KVSTASH_BINARY_DIR (::kvstash_test_paths::kBinaryDir)
#define KVSTASH_SHARED_DATA (::kvstash_test_paths::kSharedData)
#define KVSTASH_MODEL_CACHE (::kvstash_test_paths::kModelCache)

#endif  // KVSTASH_TESTS_TESTING_BUILD_PATHS_H_
