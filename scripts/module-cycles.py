#!/usr/bin/env python3
"""Reports import cycles between the source files of a crate.

Usage: module-cycles.py CRATE_SRC_DIR. Each file is a module; an edge
A -> B is a path in A (a `use` or an inline `crate::`/`super::` path)
naming an item of B. Test modules (`*_tests.rs`, `#[cfg(test)] mod tests`)
are skipped. Exits 1 and prints the cycles when there are any.
"""
import os
import re
import sys


def modules(src):
    mods = {}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs") or f.endswith("_tests.rs"):
                continue
            rel = os.path.relpath(os.path.join(root, f), src)[:-3].split(os.sep)
            if rel[-1] in ("mod", "lib", "main"):
                rel = rel[:-1]
            mods[tuple(rel)] = os.path.join(root, f)
    return mods


def code(path):
    text = open(path).read()
    # Drop the test module at the end of a file, and comments.
    cut = re.search(r"#\[cfg\(test\)\]\s*mod tests\s*\{", text)
    if cut:
        text = text[: cut.start()]
    return re.sub(r"//.*", "", text)


def resolve(mods, here, path):
    """The longest module prefix of `path` (a list of segments)."""
    for n in range(len(path), -1, -1):
        if tuple(path[:n]) in mods:
            return tuple(path[:n])
    return None


def edges(mods):
    graph = {m: set() for m in mods}
    for m, path in mods.items():
        is_dir = os.path.basename(path) in ("mod.rs", "lib.rs")
        base = list(m) if is_dir else list(m[:-1])
        text = code(path)
        uses = re.findall(r"\buse\s+([^;]+);", text)
        inline = re.findall(r"\b((?:crate|super)(?:::\w+)+)", text)
        paths = []
        for u in uses:
            u = re.sub(r"\s+", "", u)
            head, _, rest = u.partition("::{")
            if rest:
                for item in rest.rstrip("}").split(","):
                    paths.append(head + "::" + item.split("::{")[0])
            else:
                paths.append(u)
        paths += inline
        for p in paths:
            segs = p.split("::")
            if segs[0] == "crate":
                full = segs[1:]
            elif segs[0] == "super":
                b = base[:]
                while segs and segs[0] == "super":
                    b = b[:-1] if b else b
                    segs = segs[1:]
                full = b + segs
            elif segs[0] == "self":
                full = base + segs[1:]
            else:
                continue
            target = resolve(mods, m, full)
            if target is not None and target != m and target != tuple(m[: len(target)]):
                graph[m].add(target)
            # A parent module's items used by a child: an edge to the parent.
            if target is not None and target != m and target == tuple(m[: len(target)]):
                graph[m].add(target)
    return graph


def cycles(graph):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def main():
    src = sys.argv[1]
    mods = modules(src)
    found = cycles(edges(mods))
    for comp in found:
        print("cycle:", " ".join("::".join(c) or "crate" for c in sorted(comp)))
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
