#!/usr/bin/env bash
# The clang-tidy gate's logic (scripts/check_tidy.sh), on a throw-away git repository with one
# small translation unit and this tree's .clang-tidy: a commit that adds a finding fails; a later
# commit that leaves that line alone passes and prints it as a warning under the line rule
# (KVSTASH_TIDY_RULE=lines) and fails under the file rule (=files), where a finding in an included
# header fails only when the change touched that header; `--all` fails on it and
# `--status` lists it; removing it passes; a .clang-tidy in a subfolder applies there and is
# part of the cache key; --all and --status narrowed to a folder or a file take only the sources
# under it; a comment-only change (a NOLINT) is checked again. The compile command has -Werror
# (KVSTASH_WERROR=ON) and the source a compiler warning, which must not count. Exits 77 (ctest:
# skipped) without clang-tidy, a C++ compiler or git.
#
#   tests/check_tidy_test.sh SOURCE_DIR
set -euo pipefail
# Each step names its rule, but one, which checks the default (files).
unset KVSTASH_TIDY_RULE
src="$(cd "${1:?usage: check_tidy_test.sh SOURCE_DIR}" && pwd)"
for tool in clang-tidy c++ git python3; do
  if ! command -v "$tool" >/dev/null; then
    echo "check_tidy_test: $tool not found, skipped"
    exit 77
  fi
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
repo="$tmp/repo"
mkdir -p "$repo/scripts" "$repo/build"
git init -q "$repo"
cp "$src/scripts/check_tidy.sh" "$repo/scripts/"
cp "$src/.clang-tidy" "$repo/"
echo build/ >"$repo/.gitignore"
# write_db FILE...: the compile database, one entry per source.
write_db() {
  python3 - "$repo" "$@" <<'EOF'
import json, sys
repo, files = sys.argv[1], sys.argv[2:]
json.dump([{"directory": repo + "/build", "file": repo + "/" + f,
             "arguments": ["c++", "-std=c++20", "-Wall", "-Werror", "-c", repo + "/" + f, "-o",
                           f.replace("/", "_") + ".o"]} for f in files],
          open(repo + "/build/compile_commands.json", "w"))
EOF
}
write_db a.cc
git_() { git -C "$repo" -c user.name=test -c user.email=test@example.invalid "$@"; }
commit() {
  git_ add -A
  git_ commit -q -m "$1"
}
# Runs the gate in the scratch repository (its base: HEAD~1, as in CI's fresh clone) with a
# private cache; its output lands in $tmp/out, its exit status in $rc.
gate() {
  rc=0
  KVSTASH_CACHE="$tmp/cache" KVSTASH_JOBS=1 "$repo/scripts/check_tidy.sh" "$@" build \
    >"$tmp/out" 2>&1 || rc=$?
  sed 's/^/    | /' "$tmp/out"
}
fail() {
  echo "check_tidy_test: FAILED: $*" >&2
  exit 1
}
expect() {  # expect RC PATTERN...: the exit status, then extended regexps the output must match
  local want="$1" p
  shift
  [ "$rc" = "$want" ] || fail "$step: exit status $rc, expected $want"
  for p in "$@"; do
    grep -qE "$p" "$tmp/out" || fail "$step: output lacks /$p/"
  done
  echo "check_tidy_test: ok: $step"
}

write() {  # write SEEDED_LINE THRICE_FACTOR [FIRST_LINE]: a.cc, line 3 being the seeded line
  cat >"$repo/a.cc" <<EOF
${3:-// Scratch translation unit of check_tidy_test.sh.}
int Twice(int x) {
  $1
  return 2 * x;
}
int Thrice(int x) { return $2 * x; }
int Once(int x) {
  int unused = 0;  // a compiler warning (-Wunused-variable), not a finding: the build's gate
  return x;
}
EOF
}

write "// nothing here" 3
commit base

step="a commit adding a finding fails"
write "int* seeded = 0; (void)seeded;" 3
commit seeded
KVSTASH_TIDY_RULE=lines gate
expect 1 'a\.cc:3:[0-9]+: error: use nullptr \[modernize-use-nullptr' 'on lines the change touched'

step="a later commit that does not touch the finding's line passes with a warning"
write "int* seeded = 0; (void)seeded;" 4
commit other
KVSTASH_TIDY_RULE=lines gate
expect 0 'warning: a\.cc: findings on lines this change did not touch' \
  'a\.cc:3:[0-9]+: error: use nullptr' 'clean on lines the change touched'
grep -q 'from the cache' "$tmp/out" || fail "$step: no summary line"

step="under the file rule the same commit fails (a finding anywhere in a changed source)"
KVSTASH_TIDY_RULE=files gate
expect 1 'a\.cc:3:[0-9]+: error: use nullptr' 'findings above in the files the change touched'

step="without KVSTASH_TIDY_RULE, the file rule applies (the default)"
gate
expect 1 'a\.cc:3:[0-9]+: error: use nullptr' 'findings above in the files the change touched'

step="an unknown rule is refused"
KVSTASH_TIDY_RULE=hunks gate
expect 2 'KVSTASH_TIDY_RULE=hunks: expected files or lines'

step="--all fails on it (from the findings cache)"
gate --all
expect 1 'a\.cc:3:[0-9]+: error: use nullptr' '1 file\(s\) with clang-tidy findings above \('
ls "$tmp/cache/tidy/"*.findings >/dev/null 2>&1 || fail "$step: no cached findings"

step="--status reports it surveyed with findings, without running clang-tidy"
gate --status
expect 0 '^findings a\.cc$' 'a\.cc +0 / +1 / +0'

step="an uncommitted change on the finding's line fails"
write "int* seeded = 0; (void)seeded; // touched" 4
KVSTASH_TIDY_RULE=lines gate
expect 1 'a\.cc:3:[0-9]+: error: use nullptr'

step="removing the finding passes"
write "// nothing here" 4
commit fixed
KVSTASH_TIDY_RULE=files gate
expect 0 'check_tidy: 1 file\(s\) clean \(0 from the cache\)'

# A header of the (HeaderFilterRegex) kind whose findings clang-tidy reports, with one.
mkdir -p "$repo/common/src"
echo 'inline int* Nil() { return 0; }' >"$repo/common/src/nil.h"
step="under the file rule, a finding in a header the change added fails"
write "// nothing here" 5 '#include "common/src/nil.h"'
commit header
KVSTASH_TIDY_RULE=files gate
expect 1 'nil\.h:1:[0-9]+: error: use nullptr'

step="under the file rule, a finding in an included header the change left alone is a warning"
write "// nothing here" 6 '#include "common/src/nil.h"'
commit after-header
KVSTASH_TIDY_RULE=files gate
expect 0 'warning: a\.cc: findings in headers this change did not touch' 'nil\.h:1:[0-9]+: error' \
  'clean in the files the change touched or checked'
write "// nothing here" 4  # as in "fixed", whose clean result is cached (a later step uses it)
git_ rm -q common/src/nil.h
commit header-gone

step="a change to no C++ source checks nothing"
echo notes >"$repo/NOTES"
commit notes
gate
expect 0 'no changed C\+\+ source'

step="a .clang-tidy below the root applies to the files under it"
mkdir -p "$repo/sub"
printf '%s\n' 'InheritParentConfig: true' "Checks: '-modernize-use-nullptr'" >"$repo/sub/.clang-tidy"
echo 'int* Null() { return 0; }' >"$repo/sub/b.cc"
write_db a.cc sub/b.cc
commit nested
gate
expect 0 'check_tidy: 1 file\(s\) clean \(0 from the cache\)'

step="without it, --all finds what it turned off (its cached result is not reused)"
rm "$repo/sub/.clang-tidy"
gate --all
expect 1 'b\.cc:1:[0-9]+: error: use nullptr' '1 file\(s\) with clang-tidy findings above \('

# gate_in MODE PATH...: the survey (--all or --status) narrowed to the sources under PATHs.
gate_in() {
  rc=0
  local mode="$1"
  shift
  KVSTASH_CACHE="$tmp/cache" KVSTASH_JOBS=1 "$repo/scripts/check_tidy.sh" "$mode" build "$@" \
    >"$tmp/out" 2>&1 || rc=$?
  sed 's/^/    | /' "$tmp/out"
}

step="--status under a folder lists only the sources under it"
gate_in --status sub/
expect 0 '^findings sub/b\.cc$' 'sub +0 / +1 / +0'
grep -q 'a\.cc' "$tmp/out" && fail "$step: a.cc listed"

step="--all under a file checks only it (a.cc, clean, from the cache)"
gate_in --all a.cc
expect 0 'check_tidy: 1 file\(s\) \(--all under a\.cc\)' 'check_tidy: 1 file\(s\) clean \(1 from the cache\)'

step="PATHs without --all or --status are refused"
rc=0
KVSTASH_CACHE="$tmp/cache" "$repo/scripts/check_tidy.sh" build sub >"$tmp/out" 2>&1 || rc=$?
expect 2 'PATHs are for --all or --status'
step="a NOLINT added in a comment is seen (the cached findings are for other bytes)"
echo 'int* Null() { return 0; }  // NOLINT(modernize-use-nullptr)' >"$repo/sub/b.cc"
gate_in --all sub
expect 0 'check_tidy: 1 file\(s\) clean \(0 from the cache\)'

step="removed again, the finding is back (checked again: the clean result is for other bytes)"
echo 'int* Null() { return 0; }' >"$repo/sub/b.cc"
gate_in --all sub
expect 1 'b\.cc:1:[0-9]+: error: use nullptr'
echo "check_tidy_test: all steps passed"
