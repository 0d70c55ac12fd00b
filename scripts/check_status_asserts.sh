#!/usr/bin/env bash
# Fails when a test asserts a status as a boolean, `ASSERT_TRUE(x.ok())` / `EXPECT_FALSE(y.ok())`:
# such an assertion prints "false" when it fails, where the status matchers (tests/testing/
# status_matchers.h: ASSERT_OK, EXPECT_OK, IsOk(), StatusIs(code)) print the status, code and
# message. Comments are skipped. `./run.sh test` runs it with the format check; it needs no build.
set -euo pipefail
cd "$(dirname "$0")/.."
bad=$(git ls-files 'tests/*.cc' 'tests/*.h' |
  xargs grep -nE '(ASSERT|EXPECT)_(TRUE|FALSE)\(.*\.ok\(\)\)' |
  grep -vE '^[^:]+:[0-9]+:[[:space:]]*//' || true)
if [ -n "$bad" ]; then
  echo "check_status_asserts: tests that assert a status as a boolean (use EXPECT_OK / IsOk() /" \
    "StatusIs(...) from testing/status_matchers.h):" >&2
  sed 's/^/  /' <<<"$bad" >&2
  exit 1
fi
echo "check_status_asserts: $(git ls-files 'tests/*.cc' 'tests/*.h' | wc -l) test sources assert statuses with matchers"
