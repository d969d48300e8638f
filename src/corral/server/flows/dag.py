"""A flow's jobs as a graph of dependencies. Pure.

A Dag is checked when built: every dependency names a job of the flow, no job depends on
itself, and there is no cycle (the error shows one, `a -> b -> c -> a`, read "a depends on b").
It then answers in time proportional to the jobs and edges involved: a topological order,
each job's upstream and downstream jobs, and the jobs above or below one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence

from corral.errors import FlowInvalid


class Dag:
    """Jobs and their dependencies (`depends_on`), in the order the flow lists them."""

    def __init__(self, dependencies: Mapping[str, Sequence[str]], flow: str | None = None) -> None:
        self._upstream = {name: tuple(dict.fromkeys(deps)) for name, deps in dependencies.items()}
        problems = []
        for name, upstream in self._upstream.items():
            if name in upstream:
                problems.append(f"job {name!r} depends on itself; remove it from its depends_on")
            unknown = [dep for dep in upstream if dep not in self._upstream]
            if unknown:
                problems.append(
                    f"job {name!r} depends on {_names(unknown)}, not a job of this flow "
                    f"(jobs: {_names(self._upstream, limit=20)})"
                )
        if problems:
            raise FlowInvalid(problems, flow)
        self._downstream: dict[str, list[str]] = {name: [] for name in self._upstream}
        for name, upstream in self._upstream.items():
            for dep in upstream:
                self._downstream[dep].append(name)
        self.order = self._topological_order(flow)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Dag) and self._upstream == other._upstream

    __hash__ = None  # type: ignore[assignment]

    @property
    def jobs(self) -> tuple[str, ...]:
        return tuple(self._upstream)

    def upstream(self, name: str) -> tuple[str, ...]:
        return self._upstream[name]

    def downstream(self, name: str) -> Sequence[str]:
        return self._downstream[name]

    def ancestors(self, name: str) -> set[str]:
        """Every job `name` depends on, directly or not."""
        return _reach(self._upstream, [name])

    def descendants(self, names: Iterable[str]) -> set[str]:
        """Every job that depends, directly or not, on one of `names` (not `names` themselves)."""
        return _reach(self._downstream, names)

    def _topological_order(self, flow: str | None) -> tuple[str, ...]:
        """Kahn's algorithm, taking ready jobs in the flow's order; FlowInvalid on a cycle."""
        waiting = {name: len(upstream) for name, upstream in self._upstream.items()}
        ready = deque(name for name, count in waiting.items() if count == 0)
        order = []
        while ready:
            name = ready.popleft()
            order.append(name)
            for child in self._downstream[name]:
                waiting[child] -= 1
                if waiting[child] == 0:
                    ready.append(child)
        if len(order) < len(self._upstream):
            cycle = self._cycle({name for name, count in waiting.items() if count})
            raise FlowInvalid(
                [
                    f"jobs depend on each other in a cycle: {' -> '.join(cycle)} "
                    "(X -> Y: X depends on Y); remove one of these dependencies"
                ],
                flow,
            )
        return tuple(order)

    def _cycle(self, stuck: set[str]) -> list[str]:
        """A cycle among `stuck` (jobs Kahn's algorithm never freed): each has an upstream job
        in `stuck`, so following those edges must come back to a job already seen."""
        name = next(name for name in self._upstream if name in stuck)
        path: list[str] = []
        seen: dict[str, int] = {}
        while name not in seen:
            seen[name] = len(path)
            path.append(name)
            name = next(dep for dep in self._upstream[name] if dep in stuck)
        return [*path[seen[name] :], name]


def _reach(edges: Mapping[str, Sequence[str]], starts: Iterable[str]) -> set[str]:
    found: set[str] = set()
    todo = [next_name for start in starts for next_name in edges[start]]
    while todo:
        name = todo.pop()
        if name not in found:
            found.add(name)
            todo.extend(edges[name])
    return found


def _names(names: Iterable[str], limit: int | None = None) -> str:
    listed = list(names)
    shown = ", ".join(repr(name) for name in listed[:limit])
    if limit is not None and len(listed) > limit:
        shown += f" and {len(listed) - limit} more"
    return shown
