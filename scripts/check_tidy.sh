#!/usr/bin/env bash
# clang-tidy gate: runs clang-tidy (.clang-tidy at the root; every check it enables is in
# WarningsAsErrors) over C++ sources and fails on any finding. `./run.sh test` runs it on the
# sources changed relative to a base, after the release build, which provides the compile
# database (build/release/compile_commands.json) and the generated protobuf headers.
#
#   scripts/check_tidy.sh [--all] [BUILD_DIR]      (default build/release)
#
# Which files: with --all, every *.cc of the compile database under the checkout (`./run.sh
# tidy`); otherwise the changed ones. The base: $KVSTASH_TIDY_BASE when set (any commit, e.g.
# origin/main); otherwise the merge-base of HEAD with its configured upstream when HEAD has
# commits the upstream lacks; otherwise HEAD~1, so that CI in a fresh clone checks the last
# commit. Uncommitted and untracked files count as changed. A changed header adds the *.cc of the
# same name beside it or in its module's src/, through which its findings are reported
# (HeaderFilterRegex). CUDA sources and generated sources are not checked.
#
# Results are cached per translation unit in $KVSTASH_CACHE/tidy (default
# ~/.cache/kvstash/tidy): the key hashes the clang-tidy version, .clang-tidy, the compile command
# and the preprocessed source (every header included), with the checkout's path taken out, so a
# file whose bytes and headers were checked clean before, in any clone, is not checked again.
# Only clean results are cached. One file costs 5-60 s of CPU uncached; preprocessing for the key
# about 1 s. KVSTASH_TIDY_CACHE=0 disables the cache.
#
# Without clang-tidy it says so and exits 0 (scripts/install_deps.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
all=0
if [ "${1:-}" = --all ]; then
  all=1
  shift
fi
BUILD="${1:-build/release}"
if ! command -v clang-tidy >/dev/null; then
  echo "check_tidy: clang-tidy not found, skipped (scripts/install_deps.sh installs it)"
  exit 0
fi
if [ ! -f "$BUILD/compile_commands.json" ]; then
  echo "check_tidy: $BUILD/compile_commands.json missing: build first (./run.sh build release)" >&2
  exit 1
fi
root=$(pwd)
cache="${KVSTASH_CACHE:-$HOME/.cache/kvstash}/tidy"
[ "${KVSTASH_TIDY_CACHE:-1}" = 0 ] && cache=""

# The compile database's C++ sources under the checkout (not generated ones), relative to it.
known=$(python3 - "$BUILD/compile_commands.json" "$root" "$BUILD" <<'EOF'
import json, os, sys
db, root, build = sys.argv[1], sys.argv[2], os.path.abspath(sys.argv[3])
for e in json.load(open(db)):
    f = os.path.normpath(os.path.join(e["directory"], e["file"]))
    if f.startswith(root + "/") and not f.startswith(build + "/") and f.endswith(".cc"):
        print(os.path.relpath(f, root))
EOF
)

files=()
declare -A picked=()
add() {
  local f="$1"
  if grep -qxF "$f" <<<"$known" && [ -z "${picked[$f]:-}" ]; then
    picked[$f]=1
    files+=("$f")
  fi
}
if [ "$all" = 1 ]; then
  mapfile -t files <<<"$known"
  why="--all"
else
  if [ -n "${KVSTASH_TIDY_BASE:-}" ]; then
    base=$(git rev-parse --verify "$KVSTASH_TIDY_BASE^{commit}")
    why="since KVSTASH_TIDY_BASE=$KVSTASH_TIDY_BASE"
  else
    base=""
    if upstream=$(git rev-parse --abbrev-ref --symbolic-full-name '@{upstream}' 2>/dev/null); then
      mb=$(git merge-base HEAD "$upstream" 2>/dev/null || true)
      if [ -n "$mb" ] && [ "$mb" != "$(git rev-parse HEAD)" ]; then
        base=$mb
        why="since the merge-base with $upstream"
      fi
    fi
    if [ -z "$base" ]; then
      if ! base=$(git rev-parse --verify -q 'HEAD~1'); then
        echo "check_tidy: no base commit (a single-commit history), skipped"
        exit 0
      fi
      why="since HEAD~1"
    fi
  fi
  while IFS= read -r f; do
    [ -f "$f" ] || continue
    case "$f" in
      *.cc) add "$f" ;;
      *.h)
        stem=$(basename "$f" .h)
        add "$(dirname "$f")/$stem.cc"
        # <module>/include/kvstash/<module>/x.h -> <module>/src/x.cc
        module=${f%%/include/*}
        [ "$module" != "$f" ] && add "$module/src/$stem.cc"
        ;;
    esac
  done < <({
    git diff --name-only --diff-filter=ACMR "$base" -- '*.cc' '*.h'
    git ls-files --others --exclude-standard -- '*.cc' '*.h'
  } | sort -u)
fi
if [ ${#files[@]} -eq 0 ] || [ -z "${files[0]}" ]; then
  echo "check_tidy: no changed C++ source ($why)"
  exit 0
fi
echo "check_tidy: ${#files[@]} file(s) ($why)"

# Cache key of one file: see the header comment. Prints nothing when it cannot be computed.
version=$(clang-tidy --version | tr -d '\n')
config_hash=$(sha256sum .clang-tidy | cut -d' ' -f1)
key_of() {
  python3 - "$BUILD/compile_commands.json" "$root" "$1" "$version" "$config_hash" <<'EOF'
import hashlib, json, os, shlex, subprocess, sys
db, root, rel, version, config = sys.argv[1:6]
path = os.path.join(root, rel)
for e in json.load(open(db)):
    if os.path.normpath(os.path.join(e["directory"], e["file"])) == path:
        break
else:
    sys.exit(0)
args = e["arguments"] if "arguments" in e else shlex.split(e["command"])
pp, skip = [], False
for a in args:  # the same command, preprocessing to stdout without line markers
    if skip:
        skip = False
        continue
    if a in ("-o", "-MF", "-MT", "-MQ"):
        skip = True
        continue
    if a in ("-c", "-MD", "-MMD"):
        continue
    pp.append(a)
r = subprocess.run(pp + ["-E", "-P"], cwd=e["directory"], capture_output=True)
if r.returncode != 0:
    sys.exit(0)
h = hashlib.sha256()
for part in (version, config, " ".join(args).replace(root, "@ROOT@")):
    h.update(part.encode() + b"\0")
h.update(r.stdout.replace(root.encode(), b"@ROOT@"))
print(h.hexdigest())
EOF
}

# check_one FILE: clang-tidy output in $out/<n>.log; "cached" / "clean" / "failed" in .status.
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
check_one() {
  local f="$1" log key=""
  log="$out/$(tr '/' '_' <<<"$1")"
  if [ -n "$cache" ]; then
    key=$(key_of "$f")
    if [ -n "$key" ] && [ -f "$cache/$key" ]; then
      cp "$cache/$key" "$log.log"
      echo cached >"$log.status"
      return 0
    fi
  fi
  if clang-tidy -p "$BUILD" --quiet "$f" >"$log.log" 2>&1 && ! grep -q ': error: ' "$log.log"; then
    echo clean >"$log.status"
    if [ -n "$key" ]; then
      mkdir -p "$cache"
      cp "$log.log" "$cache/$key.tmp.$$" && mv "$cache/$key.tmp.$$" "$cache/$key"
    fi
  else
    echo failed >"$log.status"
  fi
}
export -f check_one key_of
export BUILD root cache version config_hash out
jobs="${KVSTASH_JOBS:-$(nproc)}"
# shellcheck disable=SC2016  # $0 is expanded by the inner bash, one file per call
printf '%s\0' "${files[@]}" | xargs -0 -n 1 -P "$jobs" bash -c 'check_one "$0"'

failed=0
cached=0
for f in "${files[@]}"; do
  log="$out/$(tr '/' '_' <<<"$f")"
  case "$(cat "$log.status" 2>/dev/null || echo failed)" in
    cached) cached=$((cached + 1)) ;;
    clean) ;;
    *)
      failed=$((failed + 1))
      echo "check_tidy: $f:" >&2
      grep -E ': (error|warning): ' "$log.log" >&2 || cat "$log.log" >&2
      ;;
  esac
done
if [ "$failed" -gt 0 ]; then
  echo "check_tidy: $failed file(s) with clang-tidy findings above (.clang-tidy; fix them, or" >&2
  echo "  NOLINT(check) on the line with the reason when the finding is wrong)" >&2
  exit 1
fi
echo "check_tidy: ${#files[@]} file(s) clean ($cached from the cache)"
