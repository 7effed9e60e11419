"""Change history and watch subscriptions.

Every stored change is an `Event` with the global resourceVersion it produced. A watch replays the
history after its `resourceVersion` and then follows new events through an asyncio queue in the
server's loop. Filters apply per watcher the way the real server does: an object that starts
matching a selector arrives as ADDED, one that stops matching as DELETED.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fakekube.errors import expired

HISTORY_LIMIT = 20_000


@dataclass(frozen=True)
class Event:
    rv: int
    type: str
    key: tuple[str, str]
    obj: dict[str, Any]
    old: dict[str, Any] | None = None


@dataclass(eq=False)
class Watcher:
    key: tuple[str, str]
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)


def visible(
    event: Event, namespace: str | None, match: Callable[[dict[str, Any]], bool]
) -> tuple[str, dict[str, Any]] | None:
    """The (type, object) a watcher with this filter sees for an event, or None."""

    def selected(obj: dict[str, Any] | None) -> bool:
        if obj is None:
            return False
        return (namespace is None or obj["metadata"].get("namespace") == namespace) and match(obj)

    now, before = selected(event.obj), selected(event.old)
    if event.type != "MODIFIED":
        return (event.type, event.obj) if now else None
    if now:
        return ("MODIFIED" if before else "ADDED", event.obj)
    return ("DELETED", event.obj) if before else None


@dataclass
class WatchHub:
    history: list[Event] = field(default_factory=list)
    watchers: set[Watcher] = field(default_factory=set)

    def publish(self, event: Event) -> None:
        self.history.append(event)
        if len(self.history) > HISTORY_LIMIT:
            del self.history[: HISTORY_LIMIT // 2]
        for watcher in list(self.watchers):
            if watcher.key == event.key:
                watcher.loop.call_soon_threadsafe(watcher.queue.put_nowait, event)

    def since(self, key: tuple[str, str], rv: int) -> list[Event]:
        """Events of one resource after `rv`; 410 Expired where history no longer reaches."""
        if self.history and rv < self.history[0].rv - 1:
            raise expired(f"too old resource version: {rv} ({self.history[0].rv - 1})")
        return [event for event in self.history if event.rv > rv and event.key == key]

    def subscribe(self, key: tuple[str, str], loop: asyncio.AbstractEventLoop) -> Watcher:
        watcher = Watcher(key, loop)
        self.watchers.add(watcher)
        return watcher

    def unsubscribe(self, watcher: Watcher) -> None:
        self.watchers.discard(watcher)
