#!/usr/bin/env python3
"""Rewrites boolean status assertions in tests into the status matchers of
tests/testing/status_matchers.h, so that a failing assertion prints the status it got.

  ASSERT_TRUE(s.ok()) << s.status();   ->  ASSERT_OK(s);
  EXPECT_TRUE(Foo().ok()) << "ctx";    ->  EXPECT_OK(Foo()) << "ctx";
  ASSERT_FALSE(Foo().ok());            ->  ASSERT_NOT_OK(Foo());
  EXPECT_TRUE(absl::IsNotFound(s));    ->  EXPECT_THAT(s, StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound)
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound)
                                       ->  EXPECT_THAT(s|r, StatusIs(absl::StatusCode::kNotFound));

Only assertions whose argument is a single postfix expression ending in .ok() (no &&, ||, !,
comparisons or templates at the top level) are touched; anything else is left as written. A
trailing message that only repeats the status (`<< s.status()`, `<< s`, `<< s.message()`) is
dropped because the matcher prints it; any other message is kept.

ASSERT_NOT_OK is as strong as the ASSERT_FALSE it replaces. To name the codes: run the tests with
KVSTASH_STATUS_CODES_LOG=FILE (each passing *_NOT_OK appends `source:line CODE`), then
`--codes FILE` turns every *_NOT_OK that always saw one code into StatusIs(that code). Review that
diff: keep a code where the contract names it, and write StatusIs by hand where the test implies
a code it did not see. The script never rewrites a StatusIs back.

Adds `#include "testing/status_matchers.h"` and, where StatusIs is used unqualified, a
`using ::kvstash::testing::StatusIs;` to the files it changes. Idempotent: a second run over
converted files changes nothing.

Usage: scripts/convert_status_asserts.py [--check] [--codes FILE] [paths...]   (default: tests/)
--check exits 1 and lists the files that would change, without writing.
"""
import argparse
import os
import re
import sys

INCLUDE = '#include "testing/status_matchers.h"'
USING_STATUS_IS = "using ::kvstash::testing::StatusIs;"
MACRO_RE = re.compile(r"\b(ASSERT|EXPECT)_(TRUE|FALSE|EQ)\(")
CODE_NAMES = {
    "CANCELLED": "kCancelled", "UNKNOWN": "kUnknown", "INVALID_ARGUMENT": "kInvalidArgument",
    "DEADLINE_EXCEEDED": "kDeadlineExceeded", "NOT_FOUND": "kNotFound",
    "ALREADY_EXISTS": "kAlreadyExists", "PERMISSION_DENIED": "kPermissionDenied",
    "RESOURCE_EXHAUSTED": "kResourceExhausted", "FAILED_PRECONDITION": "kFailedPrecondition",
    "ABORTED": "kAborted", "OUT_OF_RANGE": "kOutOfRange", "UNIMPLEMENTED": "kUnimplemented",
    "INTERNAL": "kInternal", "UNAVAILABLE": "kUnavailable", "DATA_LOSS": "kDataLoss",
    "UNAUTHENTICATED": "kUnauthenticated",
}
# absl::IsNotFound(s) and friends.
IS_FUNCS = {
    "Is" + "".join(w.capitalize() for w in name.split("_")): code
    for name, code in CODE_NAMES.items()
}
IS_FUNCS["IsCancelled"] = "kCancelled"

OPEN = "([{"


def is_quote(text, i):
    """text[i] opens a string or char literal (a ' between digits is a digit separator)."""
    c = text[i]
    if c == '"':
        return True
    if c != "'":
        return False
    return not (i > 0 and text[i - 1].isalnum() and i + 1 < len(text) and text[i + 1].isalnum())
CLOSE = ")]}"


def match_paren(text, i):
    """Index just past the bracket group opening at text[i]; skips strings and chars."""
    depth = 0
    n = len(text)
    while i < n:
        c = text[i]
        if is_quote(text, i):
            q = c
            i += 1
            while i < n and text[i] != q:
                i += 2 if text[i] == "\\" else 1
        elif c in OPEN:
            depth += 1
        elif c in CLOSE:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return -1


def is_postfix_expr(e):
    """True if e is one postfix expression: names, ::, ., ->, calls and subscripts only."""
    e = e.strip()
    if not e or not (e[0].isalnum() or e[0] in "_:("):
        return False
    i = 0
    n = len(e)
    while i < n:
        c = e[i]
        if c in OPEN:
            j = match_paren(e, i)
            if j < 0:
                return False
            i = j
            continue
        if c.isalnum() or c in "_.:":
            i += 1
            continue
        if c == "-" and i + 1 < n and e[i + 1] == ">":
            i += 2
            continue
        return False
    return True


def statement_tail(text, i):
    """From just after the macro's closing paren: (message, index after the ';')."""
    j = i
    n = len(text)
    depth = 0
    while j < n:
        c = text[j]
        if is_quote(text, j):
            q = c
            j += 1
            while j < n and text[j] != q:
                j += 2 if text[j] == "\\" else 1
        elif c in OPEN:
            depth += 1
        elif c in CLOSE:
            depth -= 1
            if depth < 0:
                return None, -1
        elif c == ";" and depth == 0:
            return text[i:j], j + 1
        j += 1
    return None, -1


def split_top(e, sep):
    """Splits e at top-level occurrences of sep (outside brackets and literals)."""
    parts, depth, last, i = [], 0, 0, 0
    while i < len(e):
        c = e[i]
        if is_quote(e, i):
            j = i + 1
            while j < len(e) and e[j] != c:
                j += 2 if e[j] == "\\" else 1
            i = j + 1
            continue
        if c in OPEN:
            depth += 1
        elif c in CLOSE:
            depth -= 1
        elif depth == 0 and e.startswith(sep, i):
            parts.append(e[last:i])
            i += len(sep)
            last = i
            continue
        i += 1
    parts.append(e[last:])
    return parts


def redundant_message(msg, expr):
    m = msg.strip()
    if not m.startswith("<<"):
        return False
    m = " ".join(m[2:].split())
    e = " ".join(expr.split())
    return m in (e, e + ".status()", e + ".message()", e + ".status().message()",
                 e + ".ToString()", e + ".status().ToString()", e + ".error_message()")


def convert_text(text):
    out = []
    pos = 0
    changed = False
    uses_status_is = False
    for m in MACRO_RE.finditer(text):
        start = m.start()
        if start < pos:
            continue
        # Only statements: the macro starts its line, or follows a for/if header or else.
        line_start = text.rfind("\n", 0, start) + 1
        before = text[line_start:start].rstrip()
        starts_line = not before
        if not (starts_line or before.endswith((")", "else", "{", ";"))):
            continue
        kind, which = m.group(1), m.group(2)
        open_i = m.end() - 1
        close_i = match_paren(text, open_i)
        if close_i < 0:
            continue
        arg = text[open_i + 1:close_i - 1]
        msg, end = statement_tail(text, close_i)
        if msg is None or (msg.strip() and not msg.strip().startswith("<<")):
            continue
        repl = None
        expr = None
        if which in ("TRUE", "FALSE"):
            a = arg.strip()
            parts = [p.strip() for p in split_top(a, "&&")]
            if (which == "TRUE" and starts_line and len(parts) > 1 and
                    all(p.endswith(".ok()") and is_postfix_expr(p) for p in parts) and
                    (not msg.strip() or any(redundant_message(msg, p[:-5]) for p in parts))):
                # ASSERT_TRUE(a.ok() && b.ok()) << b.status(): one assertion per status.
                indent = text[line_start:start]
                repl = ("\n" + indent).join(f"{kind}_OK({p[:-5]});" for p in parts)[:-1]
                out.append(text[pos:start])
                out.append(repl + ";")
                pos = end
                changed = True
                continue
            if a.endswith(".ok()") and is_postfix_expr(a):
                expr = a[:-len(".ok()")]
                if expr and not expr.endswith((".", "->")):
                    verb = "OK" if which == "TRUE" else "NOT_OK"
                    repl = f"{kind}_{verb}({expr})"
            elif which == "TRUE":
                fm = re.fullmatch(r"(?:absl::)?(Is[A-Za-z]+)\((.*)\)", a, re.S)
                if fm and fm.group(1) in IS_FUNCS and is_postfix_expr(fm.group(2)):
                    expr = fm.group(2).strip()
                    repl = (f"{kind}_THAT({expr}, StatusIs(absl::StatusCode::"
                            f"{IS_FUNCS[fm.group(1)]}))")
                    uses_status_is = True
        elif which == "EQ":
            em = re.fullmatch(
                r"\s*(.*?)\.code\(\)\s*,\s*(absl::StatusCode::k[A-Za-z]+)\s*", arg, re.S)
            if em and is_postfix_expr(em.group(1)):
                expr = em.group(1).strip()
                if expr.endswith(".status()"):
                    expr = expr[:-len(".status()")]
                repl = f"{kind}_THAT({expr}, StatusIs({em.group(2)}))"
                uses_status_is = True
        if repl is None:
            continue
        if msg.strip() and not redundant_message(msg, expr):
            repl += " " + msg.strip()
        out.append(text[pos:start])
        out.append(repl + ";")
        pos = end
        changed = True
    out.append(text[pos:])
    text = "".join(out)
    # ASSERT_NOT_OK(x); followed by EXPECT_THAT(x, StatusIs(c)); says the code twice.
    merged = re.sub(
        r"\b(ASSERT|EXPECT)_NOT_OK\(([^;\n]*)\)((?: << [^;\n]*)?);\n[ \t]*(?:ASSERT|EXPECT)_THAT\("
        r"\2, (StatusIs\([^;\n]*\))\)(?: << [^;\n]*)?;", r"\1_THAT(\2, \4)\3;", text)
    if merged != text:
        text, changed = merged, True
    if not changed:
        return text, False
    text = ensure_include(text)
    if uses_status_is or re.search(r"(?<![:\w])StatusIs\(", text):
        text = ensure_using(text)
    return text, True


def ensure_include(text):
    if INCLUDE in text:
        return text
    lines = text.split("\n")
    last_quoted = last_any = -1
    for i, l in enumerate(lines):
        # Only the include block at the top: an #include inside a namespace (a .inc of data)
        # is not where a header goes.
        if l.startswith("namespace"):
            break
        if l.startswith('#include "'):
            last_quoted = i
        if l.startswith("#include"):
            last_any = i
    at = last_quoted if last_quoted >= 0 else last_any
    if at < 0:
        return INCLUDE + "\n" + text
    lines.insert(at + 1, INCLUDE)
    return "\n".join(lines)


def ensure_using(text):
    if USING_STATUS_IS in text or re.search(r"namespace kvstash::testing\s*{", text):
        return text
    lines = text.split("\n")
    first_ns = next((i for i, l in enumerate(lines) if l.startswith("namespace")), len(lines))
    last_inc = max(i for i, l in enumerate(lines[:first_ns]) if l.startswith("#include"))
    lines.insert(last_inc + 1, "")
    lines.insert(last_inc + 2, USING_STATUS_IS)
    return "\n".join(lines)


def apply_codes(path, text, codes):
    lines = text.split("\n")
    changed = False
    for lineno, code in codes.get(path, []):
        i = lineno - 1
        if i >= len(lines) or code not in CODE_NAMES:
            continue
        new = re.sub(r"\b(ASSERT|EXPECT)_NOT_OK\((.*)\)(\s*(?:<<.*)?;)$",
                     lambda m: f"{m.group(1)}_THAT({m.group(2)}, StatusIs(absl::StatusCode::"
                     f"{CODE_NAMES[code]})){m.group(3)}", lines[i])
        if new != lines[i]:
            lines[i] = new
            changed = True
    text = "\n".join(lines)
    if changed:
        text = ensure_using(text)
    return text, changed


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("paths", nargs="*", default=["tests"])
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--codes")
    args = ap.parse_args()
    codes = {}
    if args.codes:
        seen = {}
        for l in open(args.codes):
            l = l.strip()
            if not l:
                continue
            where, code = l.split()
            p, n = where.rsplit(":", 1)
            # Sources are recorded as the compiler saw them; match them by their tests/... tail.
            p = os.path.normpath(p)
            tail = p[p.rfind("tests" + os.sep):] if ("tests" + os.sep) in p else p
            seen.setdefault((tail, int(n)), set()).add(code)
        for (tail, n), cs in sorted(seen.items()):
            if len(cs) == 1:
                codes.setdefault(tail, []).append((n, cs.pop()))
            else:
                print(f"{tail}:{n}: saw {', '.join(sorted(cs))}; left as *_NOT_OK",
                      file=sys.stderr)
    files = []
    for p in args.paths:
        if os.path.isdir(p):
            for root, _, names in os.walk(p):
                files += [os.path.join(root, f) for f in names if f.endswith((".cc", ".h"))]
        else:
            files.append(p)
    skip = os.path.normpath("tests/testing/status_matchers.h")
    would = []
    for f in sorted(files):
        if os.path.normpath(f).endswith(skip):
            continue
        text = open(f).read()
        new, changed = convert_text(text)
        if codes:
            nf = os.path.normpath(f)
            tail = nf[nf.rfind("tests" + os.sep):] if ("tests" + os.sep) in nf else nf
            new, c2 = apply_codes(tail, new, codes)
            changed = changed or c2
        if changed and new != text:
            would.append(f)
            if not args.check:
                open(f, "w").write(new)
    for f in would:
        print(f)
    return 1 if (args.check and would) else 0


if __name__ == "__main__":
    sys.exit(main())
