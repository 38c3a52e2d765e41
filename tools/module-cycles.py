#!/usr/bin/env python3
"""Reports import cycles between the top-level modules of a crate.

Usage: tools/module-cycles.py CRATE_SRC_DIR [...]   (e.g. control/src)

Each file `X.rs` or directory `X/` under the source dir is module X. An edge
X -> Y is any `crate::Y` path in X's code (use lines and inline paths,
including `use crate::{Y, ...}` groups); comments are ignored. Prints the
graph and every strongly connected component of more than one module;
exits 1 if there is one.
"""
import os
import re
import sys

PATH = re.compile(r"\bcrate::(\{[^}]*\}|[a-z_][a-z0-9_]*)")
NAME = re.compile(r"(?:^|[{,\s])([a-z_][a-z0-9_]*)")


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def modules(src):
    out = {}
    for entry in sorted(os.listdir(src)):
        path = os.path.join(src, entry)
        if entry in ("lib.rs", "main.rs"):
            continue
        if entry.endswith(".rs"):
            out.setdefault(entry[:-3], []).append(path)
        elif os.path.isdir(path):
            for root, _, files in os.walk(path):
                out.setdefault(entry, []).extend(
                    os.path.join(root, f) for f in files if f.endswith(".rs"))
    return out


def edges(mods):
    graph = {m: set() for m in mods}
    for m, files in mods.items():
        for f in files:
            with open(f, encoding="utf-8") as fh:
                code = strip_comments(fh.read())
            for hit in PATH.findall(code):
                names = NAME.findall(hit.strip("{}")) if hit.startswith("{") else [hit]
                for n in names:
                    if n in graph and n != m:
                        graph[m].add(n)
    return graph


def sccs(graph):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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
            out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [c for c in out if len(c) > 1]


def main():
    bad = False
    for src in sys.argv[1:] or ["control/src"]:
        graph = edges(modules(src))
        print(f"{src}:")
        for m in sorted(graph):
            print(f"  {m} -> {', '.join(sorted(graph[m])) or '(nothing)'}")
        for comp in sccs(graph):
            bad = True
            print(f"  CYCLE: {' <-> '.join(comp)}")
        if not sccs(graph):
            print("  no cycles")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
