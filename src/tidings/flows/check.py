"""Checks of flows against the rest of the config, for `tidings check` and at startup.

Each problem comes with its location in the file (as a pydantic error would), so the loader can
name the line: a send to a destination that is not configured or cannot do that action, a jump
to a step that does not exist, a step nothing leads to, a loop that never waits, a freshness
lookup on a source that cannot look anything up.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from tidings.flows.model import EXIT, NEXT, Flow, Step

Loc = tuple[int | str, ...]


def flow_problems(
    flows: Mapping[str, Flow], destinations: Mapping[str, Any], sources: Mapping[str, Any]
) -> Iterator[tuple[Loc, str]]:
    for name, flow in flows.items():
        at: Loc = ("flows", name)
        ids = flow.step_ids()
        for index, step in enumerate(flow.steps):
            yield from _step_problems((*at, "steps", index), step, ids, destinations)
        edges = {i: _successors(flow, i) for i in range(len(flow.steps))}
        reachable = _reach(edges)
        for index in range(len(flow.steps)):
            if index not in reachable:
                yield (*at, "steps", index), f"step {ids[index]!r} is unreachable: no step leads to it"
        loop = _loop_without_wait(flow, edges)
        if loop is not None:
            path = " -> ".join(ids[i] for i in loop)
            yield (*at, "steps", loop[-2]), f"steps loop without a wait: {path}"
        if flow.freshness is not None:
            source = sources.get(flow.freshness.lookup)
            if source is None:
                yield (*at, "freshness", "lookup"), f"unknown source {flow.freshness.lookup!r}"
            elif getattr(source, "lookup", None) is None:
                yield (
                    (*at, "freshness", "lookup"),
                    f"source {flow.freshness.lookup!r} has no `lookup:` block "
                    f"(live lookups exist for shopify and stripe sources)",
                )


def _step_problems(
    here: Loc, step: Step, ids: list[str], destinations: Mapping[str, Any]
) -> Iterator[tuple[Loc, str]]:
    from tidings.destinations.registry import destination_class

    for key, target in _targets(step):
        if target not in (NEXT, EXIT) and target not in ids:
            yield (*here, *key), f"no step has the id {target!r} (ids: {', '.join(ids)})"
    if step.send is None:
        return
    dest = destinations.get(step.send.destination)
    if dest is None:
        known = ", ".join(destinations) or "none configured"
        yield (
            (*here, "send", "destination"),
            f"unknown destination {step.send.destination!r} (destinations: {known})",
        )
        return
    actions = destination_class(dest.kind).actions
    if step.send.action not in actions:
        yield (
            (*here, "send", "action"),
            f"destination {step.send.destination!r} ({dest.kind}) cannot "
            f"{step.send.action!r}; it can: {', '.join(sorted(actions))}",
        )


def _targets(step: Step) -> list[tuple[tuple[str, ...], str]]:
    """Where a step can lead, with the key that says so."""
    if step.branch is not None:
        return [(("branch", "then"), step.branch.then), (("branch", "else"), step.branch.else_)]
    if step.wait_for is not None:
        return [(("on_event",), step.on_event), (("on_timeout",), step.on_timeout)]
    if step.exit is not None:
        return []
    return [(("next",), step.next)]


def _successors(flow: Flow, index: int) -> list[int]:
    ids = flow.step_ids()
    out = []
    for _, target in _targets(flow.steps[index]):
        if target == NEXT and index + 1 < len(ids):
            out.append(index + 1)
        elif target in ids:
            out.append(ids.index(target))
    return out


def _reach(edges: Mapping[int, list[int]]) -> set[int]:
    seen, todo = {0}, [0]
    while todo:
        for nxt in edges[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def _loop_without_wait(flow: Flow, edges: Mapping[int, list[int]]) -> list[int] | None:
    """A cycle through steps none of which waits (it would spin), as a path; None if none."""
    waits = {i for i, s in enumerate(flow.steps) if s.wait is not None or s.wait_for is not None}
    state: dict[int, int] = {}  # 1: on the current path, 2: done

    def visit(node: int, path: list[int]) -> list[int] | None:
        state[node] = 1
        for nxt in edges[node]:
            if nxt in waits:
                continue
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], node, nxt] if nxt in path else [node, nxt]
            if nxt not in state:
                found = visit(nxt, [*path, node])
                if found:
                    return found
        state[node] = 2
        return None

    for start in edges:
        if start not in waits and start not in state:
            found = visit(start, [])
            if found:
                return found
    return None
