#!/usr/bin/env python3
"""Checks the crate's module graph (issue 12): it must flow one way.

Reads every `crate::…` path in src/ (in `use` lines and in code, comments skipped), maps each
file to its top-level module (src/master/dispatch.rs -> master) and fails when
  1. the top-level modules import one another in a cycle, or
  2. a file under src/master/ names crate::pool, crate::worker, crate::databases or
     crate::probe: the master never opens a database connection, and that should be visible
     from its imports (it learns how to run a worker from the `WorkerMain` start-up passes);
  3. the master reaches, through any chain of imports, a module that opens connections
     (pools, worker, databases, probe, handler, keeper, queue).

`--graph` prints the edges (top-level modules, then the master's rooms through `super::`).
Python 3 standard library only; exit 1 with every problem listed.
"""

import re
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
MASTER_FORBIDDEN = {"pool", "worker", "databases", "probe"}
# Modules that open database connections: the master must not reach them even through
# another module (it may reach `pool` only through `config`, for settings types).
CONNECTING = {"pools", "worker", "databases", "probe", "handler", "keeper", "queue"}

CRATE_PATH = re.compile(r"\bcrate::(\{[^}]*\}|[a-z_][a-z0-9_]*)")
SUPER_PATH = re.compile(r"\bsuper::(\{[^}]*\}|[a-z_][a-z0-9_]*)")
FIRST_NAME = re.compile(r"\s*([a-z_][a-z0-9_]*)")


def module_of(path):
    """(top-level module, master room or None) of a source file; None for the crate root."""
    parts = path.relative_to(SRC).with_suffix("").parts
    if parts in (("lib",), ("main",)):
        return None, None
    top = parts[0]
    room = None
    if top == "master" and len(parts) > 1 and parts[1] != "mod":
        room = parts[1]
    return top, room


def code_of(text):
    """The text without comments (`//…` to the end of the line, `/* … */`), so doc links
    are not read as imports. String literals holding `//` are rare enough here."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def names(matches):
    """`crate::{a::X, b}` names a and b; `crate::a::X` names a."""
    for match in matches:
        if match.startswith("{"):
            depth, item = 0, ""
            for char in match[1:-1] + ",":
                if char == "," and depth == 0:
                    first = FIRST_NAME.match(item)
                    if first:
                        yield first.group(1)
                    item = ""
                    continue
                depth += char == "{"
                depth -= char == "}"
                item += char
        else:
            yield match


def main():
    edges = {}  # top-level module -> {top-level module: [file, ...]}
    rooms = {}  # master room -> set of rooms it names through super::
    problems = []
    for path in sorted(SRC.rglob("*.rs")):
        top, room = module_of(path)
        if top is None:
            continue
        code = code_of(path.read_text())
        for name in names(CRATE_PATH.findall(code)):
            if name == top or name[0].isupper():
                continue
            edges.setdefault(top, {}).setdefault(name, []).append(str(path.relative_to(SRC)))
            if top == "master" and name in MASTER_FORBIDDEN:
                problems.append(
                    f"src/{path.relative_to(SRC)} names crate::{name}: the master must not "
                    f"import {', '.join(sorted(MASTER_FORBIDDEN))} (it opens no connection)"
                )
        if top == "master":
            here = room or "mod"
            for name in names(SUPER_PATH.findall(code)):
                if room is not None and name != here and (SRC / "master" / f"{name}.rs").exists():
                    rooms.setdefault(here, set()).add(name)

    reached = closure(edges, "master")
    for module in sorted(reached & CONNECTING):
        problems.append(
            f"the master reaches crate::{module} through {' -> '.join(path_to(edges, 'master', module))}: "
            f"it must not reach a module that opens connections ({', '.join(sorted(CONNECTING))})"
        )

    for cycle in cycles(edges):
        via = "; ".join(
            f"{a} -> {b} ({', '.join(sorted(set(edges[a][b])))})"
            for a, b in zip(cycle, cycle[1:] + cycle[:1])
        )
        problems.append(f"import cycle: {' -> '.join(cycle + cycle[:1])}: {via}")

    if "--graph" in sys.argv:
        for module in sorted(edges):
            print(f"{module} -> {', '.join(sorted(edges[module]))}")
        for room in sorted(rooms):
            print(f"master::{room} -> {', '.join(sorted(rooms[room]))}")
    for problem in problems:
        print(f"check-module-graph: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(
        f"check-module-graph: {len(edges)} modules, no cycle, the master imports no pool "
        "and reaches no module that opens connections"
    )
    return 0


def closure(edges, start):
    """Every module `start` imports, directly or not."""
    seen, todo = set(), [start]
    while todo:
        for succ in edges.get(todo.pop(), {}):
            if succ not in seen:
                seen.add(succ)
                todo.append(succ)
    return seen


def path_to(edges, start, goal):
    """One import path from `start` to `goal` (breadth first)."""
    previous, todo = {start: None}, [start]
    while todo:
        node = todo.pop(0)
        for succ in sorted(edges.get(node, {})):
            if succ not in previous:
                previous[succ] = node
                todo.append(succ)
    path, node = [], goal
    while node is not None:
        path.append(node)
        node = previous[node]
    return path[::-1]


def cycles(edges):
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in edges.get(node, {}):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(path_through(edges, set(component)))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def path_through(edges, component):
    """A cycle inside `component`, found by walking from its smallest member."""
    start = min(component)
    path, seen, node = [start], {start}, start
    while True:
        succ = min(s for s in edges.get(node, {}) if s in component)
        if succ in seen:
            return path[path.index(succ):]
        path.append(succ)
        seen.add(succ)
        node = succ


if __name__ == "__main__":
    sys.exit(main())
