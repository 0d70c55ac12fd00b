#!/usr/bin/env bash
# clang-tidy gate: runs clang-tidy (.clang-tidy at the root; every check it enables is in
# WarningsAsErrors) over C++ sources. `./run.sh test` runs it on the sources changed relative to
# a base, after the release build, which provides the compile database
# (build/release/compile_commands.json) and the generated protobuf headers.
#
#   scripts/check_tidy.sh [--all | --status] [BUILD_DIR [PATH...]]   (default build/release)
#
# With --all or --status, PATHs (a module, a folder or a file, relative to the checkout) narrow
# the survey to the sources under them, so it can go module by module and each part's results
# are usable (cached) as soon as it ends: `scripts/check_tidy.sh --all build/release transport`.
#
# --status runs no clang-tidy: it says, from the cache, which sources the survey (--all) has
# checked clean or with findings at their present bytes, and which not (about 1 s per file).
#
# What fails: with --all (the survey, `./run.sh lint`), any finding in any source. Otherwise (the
# gate) the rule $KVSTASH_TIDY_RULE picks, and in both a file clang-tidy could not check (a
# compile error):
# - files (the default): a finding anywhere in a checked source, or in a header the change
#   touched; findings in headers it did not touch are printed as warnings. Every source of the
#   tree was surveyed clean (DEVELOPERS.md "CI gates"), so such a finding is the change's own.
# - lines: a finding on a line the change touched, as `git diff -U0 BASE` gives them (LLVM's
#   clang-tidy-diff.py does the same; an untracked file is touched throughout); findings
#   elsewhere are printed as warnings. The gate's rule before the survey was complete.
#
# Which files: with --all, every *.cc of the compile database under the checkout (tests and
# benches first, then the largest); otherwise the changed ones. The base: $KVSTASH_TIDY_BASE
# when set (any commit, e.g. origin/main); otherwise the merge-base of HEAD with its configured
# upstream when HEAD has commits the upstream lacks; otherwise HEAD~1, so that CI in a fresh
# clone checks the last commit. Uncommitted and untracked files count as changed. A changed
# header adds the *.cc of the same name beside it or in its module's src/, through which its
# findings are reported (HeaderFilterRegex). CUDA sources and generated sources are not checked.
#
# Results are cached per translation unit in $KVSTASH_CACHE/tidy (default
# ~/.cache/kvstash/tidy): the key hashes the clang-tidy version, .clang-tidy (and any below the
# root that applies, e.g. tests/.clang-tidy), the compile command
# and the preprocessed source (every header included), with the checkout's path taken out, so a
# file whose bytes and headers were checked before, in any clone, is not checked again. Clean
# results are cached as <key>, results with findings as <key>.findings, and the source file's
# own sha256 as <key>.src, since the preprocessed source has no comments (a NOLINT); a run that
# failed otherwise is not cached. One file costs 5-60 s of CPU uncached; preprocessing for the key
# about 1 s. KVSTASH_TIDY_CACHE=0 disables the cache.
#
# Without clang-tidy it says so and exits 0 (scripts/install_deps.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
all=0
status_only=0
case "${1:-}" in
  --all) all=1 && shift ;;
  --status) all=1 && status_only=1 && shift ;;
esac
BUILD="${1:-build/release}"
[ $# -gt 0 ] && shift
only=("$@")
if [ ${#only[@]} -gt 0 ] && [ "$all" = 0 ]; then
  echo "check_tidy: PATHs are for --all or --status; the gate checks the changed sources" >&2
  exit 2
fi
if ! command -v clang-tidy >/dev/null; then
  echo "check_tidy: clang-tidy not found, skipped (scripts/install_deps.sh installs it)"
  exit 0
fi
if [ ! -f "$BUILD/compile_commands.json" ]; then
  echo "check_tidy: $BUILD/compile_commands.json missing: build first (./run.sh build release)" >&2
  exit 1
fi
root=$(pwd)
rule="${KVSTASH_TIDY_RULE:-files}"
case "$rule" in
  files | lines) ;;
  *)
    echo "check_tidy: KVSTASH_TIDY_RULE=$rule: expected files or lines" >&2
    exit 2
    ;;
esac
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
  # Tests and benches first (most of the findings so far), then the largest sources, so that a
  # survey stopped part way has checked the likeliest files; large files first also keeps the
  # parallel jobs evenly loaded at the end.
  mapfile -t files < <(while IFS= read -r f; do
    if [ ${#only[@]} -gt 0 ]; then
      keep=0
      for p in "${only[@]}"; do
        p=${p%/}
        [ "$f" = "$p" ] || [ "${f#"$p"/}" != "$f" ] && keep=1
      done
      [ "$keep" = 1 ] || continue
    fi
    case "$f" in tests/* | bench/*) t=0 ;; *) t=1 ;; esac
    printf '%s %s %s\n' "$t" "$(stat -c %s "$f")" "$f"
  done <<<"$known" | sort -k1,1n -k2,2nr | cut -d' ' -f3)
  why="--all${only[*]:+ under ${only[*]}}"
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
  mapfile -t changed < <({
    git diff --name-only --diff-filter=ACMR "$base" -- '*.cc' '*.h'
    git ls-files --others --exclude-standard -- '*.cc' '*.h'
  } | sort -u)
  for f in "${changed[@]}"; do
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
  done
fi
if [ ${#files[@]} -eq 0 ] || [ -z "${files[0]}" ]; then
  echo "check_tidy: no changed C++ source ($why)"
  exit 0
fi
echo "check_tidy: ${#files[@]} file(s) ($why)"

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# What the change touched: {"path": [[first, last], ...]} for each changed file, as `git diff -U0`
# gives them (LLVM's clang-tidy-diff does the same), "all" for an untracked one; with
# KVSTASH_TIDY_RULE=files, "all" for every changed file and every source checked. A finding fails
# the gate only there, so a commit is never failed for a finding it did not make.
if [ "$all" = 0 ]; then
  {
    git diff -U0 --no-color --no-ext-diff --diff-filter=ACMR "$base" -- "${changed[@]}"
    git ls-files --others --exclude-standard -- '*.cc' '*.h' | sed 's/^/untracked /'
  } | python3 -c '
import json, re, sys
whole = sys.argv[1] == "files"
touched, path = {}, None
for line in sys.stdin:
    line = line.rstrip("\n")
    if line.startswith("untracked "):
        touched[line[10:]] = "all"
    elif line.startswith("+++ "):
        path = line[6:] if line.startswith("+++ b/") else None
        if path is not None:
            touched.setdefault(path, [])
    elif line.startswith("@@ ") and path is not None:
        m = re.match(r"@@ -\S+ \+(\d+)(?:,(\d+))? @@", line)
        first, count = int(m.group(1)), int(m.group(2) or 1)
        if count > 0:  # a pure deletion touches no line of the new file
            touched[path].append([first, first + count - 1])
if whole:
    touched = {p: "all" for p in list(touched) + sys.argv[2:]}
json.dump(touched, sys.stdout)
' "$rule" "${files[@]}" >"$out/touched.json"
fi

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
# -Werror (KVSTASH_WERROR=ON, as in CI) is left out: clang-tidy runs with -Wno-error, so the
# result is the same, and CI's build shares the results of everyday ones.
args = [a for a in args if a != "-Werror"]
h = hashlib.sha256()
for part in (version, config, " ".join(args).replace(root, "@ROOT@")):
    h.update(part.encode() + b"\0")
# A .clang-tidy below the root (tests/.clang-tidy) applies to the files under it; none for the
# others, whose keys stay as they were.
d = os.path.dirname(rel)
while d:
    nested = os.path.join(root, d, ".clang-tidy")
    if os.path.isfile(nested):
        h.update(d.encode() + b"\0" + open(nested, "rb").read() + b"\0")
    d = os.path.dirname(d)
h.update(r.stdout.replace(root.encode(), b"@ROOT@"))
print(h.hexdigest())
EOF
}

# check_one FILE: clang-tidy's output in $out/<n>.log; "cached" / "clean" / "failed" in .status.
# A clean result is cached as <key>, one with findings as <key>.findings (the checkout's path
# taken out), so that the gate does not check again a file whose findings are all outside what
# the change touched. A run that clang-tidy could not complete is not cached.
check_one() {
  local f="$1" log key="" src=""
  log="$out/$(tr '/' '_' <<<"$1")"
  if [ -n "$cache" ]; then
    key=$(key_of "$f")
    # The key hashes the preprocessed source, which has no comments: a NOLINT added or removed,
    # or lines moved by a comment, leave it as it was, while the findings' line numbers and the
    # NOLINTs that filtered them did change. <key>.src records the source file's own bytes
    # (sha256) of the last result cached under the key; a result is reused only for those bytes.
    # Clean results cached before .src existed are reused as before; findings without .src are
    # checked again (their line numbers may be stale). NOLINTs in headers are not covered.
    src=$(sha256sum "$f" | cut -d' ' -f1)
    local same_src=0
    [ -n "$key" ] && [ -f "$cache/$key.src" ] && [ "$(cat "$cache/$key.src")" = "$src" ] && same_src=1
    if [ -n "$key" ] && [ -f "$cache/$key" ] && { [ "$same_src" = 1 ] || [ ! -f "$cache/$key.src" ]; }; then
      cp "$cache/$key" "$log.log"
      echo cached >"$log.status"
      return 0
    fi
    if [ -n "$key" ] && [ -f "$cache/$key.findings" ] && [ "$same_src" = 1 ]; then
      ROOT="$root" python3 -c 'import os, sys; sys.stdout.write(sys.stdin.read().replace("@ROOT@", os.environ["ROOT"]))' \
        <"$cache/$key.findings" >"$log.log"
      echo failed >"$log.status"
      return 0
    fi
  fi
  if [ "$status_only" = 1 ]; then
    echo unchecked >"$log.status"
    return 0
  fi
  local rc=0
  # -Wno-error: compiler warnings are the build's gate, not this one, whatever -Werror the
  # compile database carries (KVSTASH_WERROR=ON).
  clang-tidy -p "$BUILD" --quiet --extra-arg=-Wno-error "$f" >"$log.log" 2>&1 || rc=$?
  if [ "$rc" = 0 ] && ! grep -q ': error: ' "$log.log"; then
    echo clean >"$log.status"
    if [ -n "$key" ]; then
      mkdir -p "$cache"
      cp "$log.log" "$cache/$key.tmp.$$" && mv "$cache/$key.tmp.$$" "$cache/$key"
      echo "$src" >"$cache/$key.src.tmp.$$" && mv "$cache/$key.src.tmp.$$" "$cache/$key.src"
    fi
  else
    echo failed >"$log.status"
    # Findings, not a failed run (a compile error, a crash): cached with the checkout's path out.
    if [ -n "$key" ] && ! grep -qE '\[clang-diagnostic-error\]|^Error while processing|Segmentation fault|PLEASE submit' "$log.log" &&
      grep -qE ': error: .*\[[a-z]' "$log.log"; then
      mkdir -p "$cache"
      ROOT="$root" python3 -c 'import os, sys; sys.stdout.write(sys.stdin.read().replace(os.environ["ROOT"], "@ROOT@"))' \
        <"$log.log" >"$cache/$key.findings.tmp.$$" && mv "$cache/$key.findings.tmp.$$" "$cache/$key.findings"
      echo "$src" >"$cache/$key.src.tmp.$$" && mv "$cache/$key.src.tmp.$$" "$cache/$key.src"
    fi
    if [ "$all" = 1 ]; then  # a long survey shows its findings as it goes
      { echo "check_tidy: findings in $f:"; grep -E ': (error|warning): ' "$log.log" || cat "$log.log"; } >&2
    fi
  fi
}
export -f check_one key_of
export BUILD root cache version config_hash out all status_only
jobs="${KVSTASH_JOBS:-$(nproc)}"
# shellcheck disable=SC2016  # $0 is expanded by the inner bash, one file per call
printf '%s\0' "${files[@]}" | xargs -0 -n 1 -P "$jobs" bash -c 'check_one "$0"'

if [ "$status_only" = 1 ]; then
  for f in "${files[@]}"; do
    case "$(cat "$out/$(tr '/' '_' <<<"$f").status")" in
      cached) echo "clean $f" ;;
      failed) echo "findings $f" ;;
      *) echo "unchecked $f" ;;
    esac
  done | sort -k2 | tee "$out/status.txt"
  echo "check_tidy: per module (clean / with findings / unchecked):"
  awk '{ split($2, p, "/"); m = p[1]; n[m] = 1; c[m, $1]++ }
       END { for (m in n) printf "  %-10s %3d / %3d / %3d\n", m, c[m, "clean"], c[m, "findings"],
             c[m, "unchecked"] }' "$out/status.txt" | sort
  exit 0
fi

# Which findings fail: with --all, every one; otherwise those the change touched (touched.json:
# its lines, or with KVSTASH_TIDY_RULE=files its files and the checked sources), and any error
# that is not a check's finding (a compile error: clang-tidy could not check the file). The
# others are printed as warnings.
printf '%s\n' "${files[@]}" | python3 -c '
import json, os, re, sys
out, root, all_mode, rule = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4]
where = ("in the files the change touched or checked" if rule == "files"
         else "on lines the change touched")
elsewhere = ("in headers this change did not touch" if rule == "files"
             else "on lines this change did not touch")
touched = {} if all_mode else json.load(open(os.path.join(out, "touched.json")))
finding = re.compile(r"^(.+?):(\d+):\d+: (error|warning): (.*?)(?: \[([^\]]+)\])?$")
def on_touched(path, line):
    rel = os.path.relpath(os.path.normpath(os.path.join(root, path)), root)
    t = touched.get(rel)
    return t == "all" or any(a <= line <= b for a, b in (t or []))
failing, warned, cached, n = [], [], 0, 0
for f in sys.stdin.read().split():
    n += 1
    log = os.path.join(out, f.replace("/", "_"))
    status = open(log + ".status").read().strip() if os.path.exists(log + ".status") else "failed"
    if status == "cached":
        cached += 1
    if status != "failed":
        continue
    text = open(log + ".log", errors="replace").read()
    fatal, other = [], []
    for line in text.splitlines():
        m = finding.match(line)
        if not m:
            continue
        path, num, sev, checks = m.group(1), int(m.group(2)), m.group(3), m.group(5) or ""
        if sev == "warning" and checks.startswith("clang-diagnostic-"):
            continue  # a compiler warning: the build gate fails on those
        check_finding = sev == "error" and checks and not checks.startswith("clang-diagnostic-")
        if check_finding and not all_mode and not on_touched(path, num):
            other.append(line)
        else:
            fatal.append(line)
    if not fatal and not other:  # no finding line, yet clang-tidy failed: say what it said
        fatal = text.splitlines()[-20:] or ["clang-tidy failed without output"]
    if fatal:
        failing.append(f)
        print("check_tidy: " + f + ":", file=sys.stderr)
        print("\n".join(fatal), file=sys.stderr)
    if other:
        warned.append(f)
        print("check_tidy: warning: " + f + ": findings " + elsewhere +
              " (not failing; fix them if you can):")
        print("\n".join("  " + l for l in other))
if failing:
    print("check_tidy: %d file(s) with clang-tidy findings above%s (.clang-tidy; fix them, or"
          % (len(failing), "" if all_mode else " " + where), file=sys.stderr)
    print("  NOLINT(check) on the line with the reason when the finding is wrong)", file=sys.stderr)
    sys.exit(1)
print("check_tidy: %d file(s) clean%s (%d from the cache)"
      % (n, "" if all_mode or not warned else " " + where, cached))
' "$out" "$root" "$all" "$rule"
