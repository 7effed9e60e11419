"""The object store: CRUD with the API server's semantics, one global resourceVersion counter.

Covers uid/creationTimestamp/generation bookkeeping, the status subresource split, optimistic
concurrency (409 on a stale resourceVersion), finalizers (DELETE only marks while any remain),
ownerReference garbage collection (Background and Orphan; Foreground deletes dependents first,
synchronously, instead of via the `foregroundDeletion` finalizer) and CRD registration. Methods are
synchronous and thread-safe; garbage collection runs through `schedule` (the server loop's
`call_soon_threadsafe`) so that, as in a real cluster, it happens after the DELETE has answered.
"""

from __future__ import annotations

import copy
import threading
import uuid
from collections.abc import Callable
from typing import Any

from fakekube import admission, collector, errors, events, meta, schema
from fakekube.patches import apply_patch
from fakekube.resources import Registry, Resource
from fakekube.watch import Event, WatchHub

Obj = dict[str, Any]
Matcher = Callable[[Obj], bool]
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
CRDS = ("apiextensions.k8s.io", "customresourcedefinitions")


class Store:
    """Objects by (group, plural) then (namespace, name); see the module docstring."""

    def __init__(
        self, registry: Registry, schedule: Callable[[Callable[[], None]], Any] | None = None
    ):
        self.registry = registry
        self.hub = WatchHub()
        self.lock = threading.RLock()
        self._objects: dict[tuple[str, str], dict[tuple[str, str], Obj]] = {}
        self._uids: dict[str, tuple[tuple[str, str], str, str]] = {}
        self._rv = 0
        self._schedule = schedule or (lambda fn: fn())
        namespaces = self.registry.find("", "v1", "namespaces")
        assert namespaces is not None
        for name in DEFAULT_NAMESPACES:
            self.create(namespaces, None, {"metadata": {"name": name}})

    @property
    def resource_version(self) -> int:
        return self._rv

    # -- reading ---------------------------------------------------------------------------------
    def get(self, res: Resource, namespace: str | None, name: str) -> Obj:
        if storage := self._storage(res):
            return self._present(res, self.get(storage, namespace, name))
        with self.lock:
            return self._present(res, copy.deepcopy(self._stored(res, namespace, name)))

    def list(self, res: Resource, namespace: str | None, match: Matcher) -> tuple[list[Obj], int]:
        if storage := self._storage(res):
            items, rv = self.list(storage, namespace, lambda o: match(self._present(res, o)))
            return [self._present(res, item) for item in items], rv
        with self.lock:
            objs = self._objects.get(res.key, {})
            items = [
                self._present(res, copy.deepcopy(obj))
                for (ns, _), obj in sorted(objs.items())
                if (namespace is None or ns == namespace) and match(obj)
            ]
            return items, self._rv

    def _stored(self, res: Resource, namespace: str | None, name: str) -> Obj:
        obj = self._objects.get(res.key, {}).get((namespace or "", name))
        if obj is None:
            raise errors.not_found(res, name)
        return obj

    def _storage(self, res: Resource) -> Resource | None:
        """The resource whose objects `res` serves under other field names, if any."""
        alias = events.ALIASES.get(res.key)
        return self.registry.find(*alias) if alias else None

    def storage_key(self, res: Resource) -> tuple[str, str]:
        alias = events.ALIASES.get(res.key)
        return (alias[0], alias[2]) if alias else res.key

    def present(self, res: Resource, obj: Obj) -> Obj:
        """A copy of a stored object as `res` shows it (idempotent on presented objects)."""
        return self._present(res, copy.deepcopy(obj))

    @staticmethod
    def _present(res: Resource, obj: Obj) -> Obj:
        """Stored objects are version-agnostic; label them with the version asked for."""
        if res.key in events.ALIASES:
            return events.from_core(copy.deepcopy(obj), res.api_version)
        obj["apiVersion"] = res.api_version
        return obj

    # -- writing ---------------------------------------------------------------------------------
    def _store(self, res: Resource, obj: Obj, kind: str, old: Obj | None) -> Obj:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        if kind == "DELETED":
            self._objects[res.key].pop(key, None)
            self._uids.pop(obj["metadata"]["uid"], None)
        else:
            self._objects.setdefault(res.key, {})[key] = obj
            self._uids[obj["metadata"]["uid"]] = (res.key, *key)
        self.hub.publish(Event(self._rv, kind, res.key, copy.deepcopy(obj), old))
        return self._present(res, copy.deepcopy(obj))

    def create(
        self, res: Resource, namespace: str | None, body: Obj, field_validation: str | None = None
    ) -> Obj:
        obj = copy.deepcopy(body) if isinstance(body, dict) else None
        if obj is None:
            raise errors.bad_request("the request body must be a JSON object")
        if storage := self._storage(res):
            if problems := events.v1_errors(obj):
                raise errors.invalid(res, (obj.get("metadata") or {}).get("name", ""), problems)
            return self._present(res, self.create(storage, namespace, events.to_core(obj)))
        md = obj["metadata"] = obj.get("metadata") or {}
        if not md.get("name") and md.get("generateName"):
            md["name"] = meta.generate_name(md["generateName"])
        name = md.get("name") or ""
        if not name:
            raise errors.invalid(
                res,
                "",
                [errors.required_value("metadata.name", "name or generateName is required")],
            )
        with self.lock:
            self._place(res, namespace, md)
            if name_errors := meta.name_errors(res, name):
                raise errors.invalid(res, name, name_errors)
            obj.update(apiVersion=res.api_version, kind=res.kind)
            for key in (*meta.SERVER_OWNED, "resourceVersion", "selfLink", "managedFields"):
                md.pop(key, None)
            md.update(uid=str(uuid.uuid4()), creationTimestamp=meta.now())
            if res.tracks_generation:
                md["generation"] = 1
            if res.status_subresource:
                obj.pop("status", None)
            self._admit(res, obj, None, field_validation)
            if (md.get("namespace", ""), name) in self._objects.get(res.key, {}):
                raise errors.already_exists(res, name)
            if res.key == CRDS:
                self._establish(obj)
            return self._store(res, obj, "ADDED", None)

    def _place(self, res: Resource, namespace: str | None, md: Obj) -> None:
        if not res.namespaced:
            md.pop("namespace", None)
            return
        if namespace and md.get("namespace") and md["namespace"] != namespace:
            raise errors.bad_request(
                "the namespace of the provided object does not match the "
                "namespace sent on the request"
            )
        md["namespace"] = namespace or md.get("namespace") or "default"
        if ("", md["namespace"]) not in self._objects.get(("", "namespaces"), {}):
            raise errors.namespace_not_found(md["namespace"])

    def _establish(self, crd: Obj) -> None:
        """What the CRD controllers do: accept the names, mark it established, serve it."""
        res = self.registry.find("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        spec, name = crd.get("spec") or {}, crd["metadata"]["name"]
        expected = f"{spec.get('names', {}).get('plural')}.{spec.get('group')}"
        if name != expected:
            why = 'must be spec.names.plural+"."+spec.group'
            raise errors.invalid(res, name, [errors.invalid_value("metadata.name", name, why)])
        crd["status"] = {
            "acceptedNames": crd["spec"]["names"],
            "storedVersions": [v["name"] for v in crd["spec"]["versions"] if v.get("storage")],
            "conditions": [
                {
                    "type": kind,
                    "status": "True",
                    "reason": reason,
                    "message": "",
                    "lastTransitionTime": meta.now(),
                }
                for kind, reason in (
                    ("NamesAccepted", "NoConflicts"),
                    ("Established", "InitialNamesAccepted"),
                )
            ],
        }
        self.registry.add_crd(crd)

    def replace(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        body: Obj,
        subresource: str | None = None,
        field_validation: str | None = None,
    ) -> Obj:
        if not isinstance(body, dict):
            raise errors.bad_request("the request body must be a JSON object")
        if storage := self._storage(res):
            replaced = self.replace(storage, namespace, name, events.to_core(body), subresource)
            return self._present(res, replaced)
        with self.lock:
            old = self._stored(res, namespace, name)
            new = self._merge_update(res, old, copy.deepcopy(body), subresource)
            self._admit(res, new, old, field_validation)
            # Compared after defaulting, so omitting a defaulted field is no spec change.
            if res.tracks_generation and meta.desired_state(new) != meta.desired_state(old):
                new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
            if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
                return self._remove(res, new, old)
            if new == old:
                return self._present(res, copy.deepcopy(old))
            if res.key == CRDS:
                self.registry.add_crd(new)
            return self._store(res, new, "MODIFIED", copy.deepcopy(old))

    def _merge_update(self, res: Resource, old: Obj, new: Obj, subresource: str | None) -> Obj:
        """The object a PUT produces: server-owned fields kept, the status split applied."""
        md = new.get("metadata") or {}
        rv = md.get("resourceVersion")
        if rv and rv != old["metadata"]["resourceVersion"]:
            raise errors.conflict(res, old["metadata"]["name"], errors.STALE)
        if md.get("name") and md["name"] != old["metadata"]["name"]:
            raise errors.bad_request(
                f"the name of the object ({md['name']}) does not match the "
                f"name on the URL ({old['metadata']['name']})"
            )
        if subresource == "status":
            status = new.get("status")
            new = copy.deepcopy(old)
            new.pop("status", None)
            if status is not None:
                new["status"] = status
        else:
            new["metadata"] = md
            if res.status_subresource:
                new.pop("status", None)
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
        new.update(apiVersion=res.api_version, kind=res.kind)
        md = new["metadata"]
        for key in ("name", "namespace", "resourceVersion", *meta.SERVER_OWNED):
            md.pop(key, None)
            if key in old["metadata"]:
                md[key] = old["metadata"][key]
        self._check_finalizers(res, old, new)
        return new

    @staticmethod
    def _admit(res: Resource, obj: Obj, old: Obj | None, field_validation: str | None) -> None:
        """Defaults and validation: ObjectMeta for all, then the CRD schema or built-in rules."""
        if problems := meta.metadata_errors(obj["metadata"]):
            raise errors.invalid(res, obj["metadata"]["name"], problems)
        if res.custom:
            schema.admit(res, obj, old, field_validation)
        else:
            admission.admit(res, obj, old)

    @staticmethod
    def _check_finalizers(res: Resource, old: Obj, new: Obj) -> None:
        if not old["metadata"].get("deletionTimestamp"):
            return
        added = set(new["metadata"].get("finalizers") or []) - set(
            old["metadata"].get("finalizers") or []
        )
        if added:
            raise errors.invalid(
                res,
                old["metadata"]["name"],
                [
                    errors.forbidden(
                        "metadata.finalizers",
                        "no new finalizers can be added if the object is being deleted",
                    )
                ],
            )

    def patch(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        patch: Any,
        content_type: str,
        subresource: str | None = None,
        field_validation: str | None = None,
    ) -> Obj:
        with self.lock:
            old = self.get(res, namespace, name)
            patched = apply_patch(old, patch, content_type, res.custom)
            return self.replace(res, namespace, name, patched, subresource, field_validation)

    # -- deleting --------------------------------------------------------------------------------
    def delete(
        self, res: Resource, namespace: str | None, name: str, options: Obj | None = None
    ) -> Obj:
        options = options or {}
        if storage := self._storage(res):
            return self._present(res, self.delete(storage, namespace, name, options))
        with self.lock:
            obj = self._stored(res, namespace, name)
            self._check_preconditions(res, obj, options.get("preconditions") or {})
            policy = options.get("propagationPolicy") or (
                "Orphan" if options.get("orphanDependents") else "Background"
            )
            if policy == "Foreground":
                collector.collect_garbage(self, obj["metadata"]["uid"], orphan=False)
            if obj["metadata"].get("finalizers"):
                if obj["metadata"].get("deletionTimestamp"):
                    return self._present(res, copy.deepcopy(obj))
                marked = copy.deepcopy(obj)
                marked["metadata"].update(
                    deletionTimestamp=meta.now(), deletionGracePeriodSeconds=0
                )
                return self._store(res, marked, "MODIFIED", copy.deepcopy(obj))
            return self._remove(
                res, copy.deepcopy(obj), copy.deepcopy(obj), orphan=policy == "Orphan"
            )

    @staticmethod
    def _check_preconditions(res: Resource, obj: Obj, preconditions: Obj) -> None:
        for key in ("uid", "resourceVersion"):
            wanted, actual = preconditions.get(key), obj["metadata"].get(key)
            if wanted and wanted != actual:
                label = "UID" if key == "uid" else "ResourceVersion"
                raise errors.conflict(
                    res,
                    obj["metadata"]["name"],
                    f"Precondition failed: {label} "
                    f"in precondition: {wanted}, {label} in object meta: {actual}",
                )

    def delete_collection(
        self, res: Resource, namespace: str | None, match: Matcher, options: Obj | None = None
    ) -> list[Obj]:
        items, _ = self.list(res, namespace, match)
        return [self.delete(res, namespace, o["metadata"]["name"], options) for o in items]

    def _remove(self, res: Resource, obj: Obj, old: Obj, orphan: bool = False) -> Obj:
        gone = self._store(res, obj, "DELETED", old)
        uid = obj["metadata"]["uid"]
        self._schedule(lambda: collector.collect_garbage(self, uid, orphan))
        if res.key == ("", "namespaces"):
            self._schedule(lambda: collector.empty_namespace(self, obj["metadata"]["name"]))
        if res.key == CRDS:
            self._drop_custom_resources(obj)
        return gone

    def _drop_custom_resources(self, crd: Obj) -> None:
        key = (crd["spec"]["group"], crd["spec"]["names"]["plural"])
        res = self.registry.any_version(*key)
        self.registry.remove_crd(crd)
        for obj in list(self._objects.get(key, {}).values()) if res else []:
            self._store(res, copy.deepcopy(obj), "DELETED", copy.deepcopy(obj))

    def objects(self) -> list[tuple[Resource, Obj]]:
        """Every stored object (a copy) with a resource that serves it."""
        with self.lock:
            return [
                (res, copy.deepcopy(obj))
                for key, objs in self._objects.items()
                if (res := self.registry.any_version(*key)) is not None
                for obj in objs.values()
            ]

    def uid_exists(self, uid: str) -> bool:
        return uid in self._uids
