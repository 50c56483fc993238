"""One idiom for every life cycle in the project: states as an Enum, a
transition table, one error.

A life cycle (a gateway session, a proxied request, the device's handshake,
a node's ownership of a client) declares its states as an :class:`enum.Enum`
and every transition it allows as ``(state, input) -> next state`` in a
:class:`Transitions` table, next to a diagram in its module docstring.  The
owner keeps its current state in a plain attribute (nothing per instance but
that attribute: a gateway holds tens of thousands of sessions) and asks the
table for the next one::

    before = self.state
    self.state = _LIFE.next(before, "accept")

An input the table does not list is a bug in the caller and raises
:class:`IllegalTransition`; inputs that may legitimately arrive and mean
nothing in a state (network noise) are listed as ``ignored`` and answered by
:meth:`Transitions.ignores`, so they are declared rather than silently
dropped.  Outputs (what the owner does on a transition) live beside the
owner's input methods, which are the only places that call :meth:`next`.

Why not Automat: its machines are built per instance of a class with
method-shaped inputs and outputs, where these owners need a state that costs
one attribute, tables that tests can walk (every ``(state, input)`` pair is
either a transition, ignored or an error), and inputs that are plain strings
read from the wire.
"""

from __future__ import annotations

import enum
from typing import Generic, Iterable, Mapping, TypeVar

S = TypeVar("S", bound=enum.Enum)


class IllegalTransition(RuntimeError):
    """An input the current state does not allow: a bug, never network input."""

    def __init__(self, machine: str, state: enum.Enum, event: str):
        super().__init__(f"{machine}: input {event!r} is not allowed in state {state.name}")
        self.machine, self.state, self.event = machine, state, event


class Transitions(Generic[S]):
    """The transition table of one life cycle."""

    __slots__ = ("name", "states", "_next", "_ignored")

    def __init__(self, name: str, states: type[S], table: Mapping[tuple[S, str], S],
                 ignored: Iterable[tuple[S, str]] = ()):
        self.name = name
        self.states = states
        self._next = dict(table)
        self._ignored = frozenset(ignored)
        for state, event in list(self._next) + list(self._ignored):
            if not isinstance(state, states):
                raise TypeError(f"{name}: {state!r} is not a {states.__name__}")
        clash = self._ignored & self._next.keys()
        if clash:
            raise ValueError(f"{name}: inputs both ignored and taken: {sorted(map(str, clash))}")

    def next(self, state: S, event: str) -> S:
        """The state after ``event`` in ``state``; raises :class:`IllegalTransition`."""
        try:
            return self._next[state, event]
        except KeyError:
            raise IllegalTransition(self.name, state, event) from None

    def allows(self, state: S, event: str) -> bool:
        return (state, event) in self._next

    def ignores(self, state: S, event: str) -> bool:
        """True for an input declared as meaning nothing in ``state``."""
        return (state, event) in self._ignored

    def inputs(self) -> frozenset[str]:
        return frozenset(event for _, event in self._next) | frozenset(event for _, event in self._ignored)

    def reachable(self, start: S) -> frozenset[S]:
        """Every state some sequence of inputs leads to from ``start``."""
        seen, todo = {start}, [start]
        while todo:
            here = todo.pop()
            for (state, _), target in self._next.items():
                if state is here and target not in seen:
                    seen.add(target)
                    todo.append(target)
        return frozenset(seen)
