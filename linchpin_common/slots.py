"""How many of something each key holds at once (connections or logins per
address at the gateway, requests in flight per user at the connector)."""

from __future__ import annotations

__all__ = ["Slots"]


class Slots:
    """At most ``per_key`` held at once per key; memory follows the keys
    holding at least one."""

    def __init__(self, per_key: int):
        if per_key < 1:
            raise ValueError("a slot limit must be at least 1")
        self.per_key = per_key
        self._held: dict[str, int] = {}

    def acquire(self, key: str) -> bool:
        n = self._held.get(key, 0)
        if n >= self.per_key:
            return False
        self._held[key] = n + 1
        return True

    def release(self, key: str) -> None:
        n = self._held.get(key, 0) - 1
        if n > 0:
            self._held[key] = n
        else:
            self._held.pop(key, None)

    def held(self, key: str) -> int:
        return self._held.get(key, 0)

    def __len__(self) -> int:
        return len(self._held)
