// The tokens file's grammar (kvstash/cachesvc/tenants.h): roles and the read-only access, in
// either order, and the lines it refuses.
#include "kvstash/cachesvc/tenants.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "testing/status_matchers.h"

namespace kvstash::testing {
namespace {

using cachesvc::Identity;
using cachesvc::Role;
using cachesvc::TenantTable;

TEST(TenantTableTest, RoleAndAccessInEitherOrder) {
  ASSERT_OK_AND_ASSIGN(TenantTable table,
                       TenantTable::Parse("token reader-token-0123456789 alpha ro\n"
                                          "token admin-reader-0123456789 ops read-only admin\n"
                                          "token writer-token-0123456789 alpha user rw\n"
                                          "token plain-token-000123456789 beta\n"
                                          "cert  reader.example alpha ro\n"));
  const Identity* reader = table.FindToken("reader-token-0123456789");
  ASSERT_NE(reader, nullptr);
  EXPECT_EQ(reader->tenant, "alpha");
  EXPECT_EQ(reader->role, Role::kUser);
  EXPECT_TRUE(reader->read_only);
  const Identity* admin = table.FindToken("admin-reader-0123456789");
  ASSERT_NE(admin, nullptr);
  EXPECT_EQ(admin->role, Role::kAdmin);
  EXPECT_TRUE(admin->read_only);
  const Identity* writer = table.FindToken("writer-token-0123456789");
  ASSERT_NE(writer, nullptr);
  EXPECT_FALSE(writer->read_only);
  const Identity* plain = table.FindToken("plain-token-000123456789");
  ASSERT_NE(plain, nullptr);
  EXPECT_FALSE(plain->read_only);
  const Identity* cert = table.FindCertificate({"reader.example"});
  ASSERT_NE(cert, nullptr);
  EXPECT_TRUE(cert->read_only);
}

TEST(TenantTableTest, RefusesAmbiguousOrUnknownOptions) {
  for (const char* line : {
           "token reader-token-0123456789 alpha ro rw\n",
           "token reader-token-0123456789 alpha user admin\n",
           "token reader-token-0123456789 alpha peer\n",
           "cert  node.example alpha peer ro\n",
           "token reader-token-0123456789 alpha readonly\n",
           "token reader-token-0123456789 alpha user ro extra\n",
       }) {
    EXPECT_THAT(TenantTable::Parse(line), StatusIs(absl::StatusCode::kInvalidArgument)) << line;
  }
}

}  // namespace
}  // namespace kvstash::testing
