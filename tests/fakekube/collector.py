"""The garbage collector and namespace deletion, run after the DELETE that triggers them.

Background policy: a dependent whose every owner is gone is deleted (its own finalizers and
dependents apply); a dependent with another live owner only loses the dangling ownerReference.
Orphan policy: dependents lose the reference and stay.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fakekube.errors import ApiError

if TYPE_CHECKING:
    from fakekube.store import Store

log = logging.getLogger(__name__)
MERGE = "application/merge-patch+json"


def _safely(action: Callable[[], Any]) -> None:
    """A dependent may vanish between the scan and the call; the collector doesn't mind."""
    try:
        action()
    except ApiError as exc:
        log.debug("garbage collector: %s", exc.message)


def collect_garbage(store: Store, owner_uid: str, orphan: bool) -> None:
    """Delete, or release, the dependents of a deleted owner (see the module docstring)."""
    with store.lock:
        for res, obj in store.objects():
            refs = obj["metadata"].get("ownerReferences") or []
            if not any(ref.get("uid") == owner_uid for ref in refs):
                continue
            rest = [ref for ref in refs if ref.get("uid") != owner_uid]
            namespace, name = obj["metadata"].get("namespace"), obj["metadata"]["name"]
            if orphan or any(store.uid_exists(ref.get("uid", "")) for ref in rest):
                released = {"metadata": {"ownerReferences": rest or None}}
                _safely(
                    lambda r=res, n=namespace, o=name, p=released: store.patch(r, n, o, p, MERGE)
                )
            else:
                _safely(lambda r=res, n=namespace, o=name: store.delete(r, n, o))


def empty_namespace(store: Store, namespace: str) -> None:
    """Delete every object of a deleted namespace."""
    with store.lock:
        for res, obj in store.objects():
            if obj["metadata"].get("namespace") == namespace:
                _safely(lambda r=res, o=obj["metadata"]["name"]: store.delete(r, namespace, o))
