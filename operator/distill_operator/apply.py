"""Idempotent create-or-patch of owned objects with the official kubernetes client.

One generic path for every kind (core, apps, ray.io, distill.dev): `ApiClient.call_api` with the
resource URL and an explicit JSON merge patch. The typed APIs would send strategic-merge patches
for built-in kinds and merge patches for custom ones; one patch semantics for all is easier to
reason about (our manifests are the whole desired state of the fields they list).
"""

from __future__ import annotations

import logging
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from distill_api import API_VERSION, KIND, PLURAL

logger = logging.getLogger(__name__)

FIELD_MANAGER = "distill-operator"
USER_AGENT = "distill-operator/0.1.0"
MERGE_PATCH = "application/merge-patch+json"
REQUEST_TIMEOUT_S = 30  # one slow API server call must not hold a handler thread for minutes
PLURALS = {
    "ConfigMap": "configmaps",
    "Service": "services",
    "Deployment": "deployments",
    "RayJob": "rayjobs",
    "NetworkPolicy": "networkpolicies",
    KIND: PLURAL,
}


def object_path(
    api_version: str, kind: str, namespace: str, name: str = "", subresource: str = ""
) -> str:
    """The REST path of a namespaced collection, object or subresource."""
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{prefix}/namespaces/{namespace}/{PLURALS[kind]}"
    for part in (name, subresource):
        path += f"/{part}" if part else ""
    return path


def load_api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """In-cluster service account when available, else KUBECONFIG / ~/.kube/config."""
    configuration = client.Configuration()
    try:
        if kubeconfig is not None:
            raise config.ConfigException("a kubeconfig was given")
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    api_client = client.ApiClient(configuration)
    api_client.user_agent = USER_AGENT  # tells our calls apart in API server audit logs
    return api_client


class OwnedByAnother(Exception):
    """An object with the wanted name exists but belongs to someone else."""


class Kube:
    """The few calls the handlers make; each maps to one entry of rbac.REQUIRED_PERMISSIONS."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self.api = api_client

    def _call(self, method: str, path: str, body: Any = None, **query: str) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = MERGE_PATCH if method == "PATCH" else "application/json"
        return self.api.call_api(
            path,
            method,
            query_params=list(query.items()),
            header_params=headers,
            body=body,
            response_type="object",
            auth_settings=["BearerToken"],
            _return_http_data_only=True,
            _request_timeout=REQUEST_TIMEOUT_S,
        )

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        path = object_path(obj["apiVersion"], obj["kind"], meta["namespace"])
        return self._call("POST", path, obj, fieldManager=FIELD_MANAGER)

    def patch(
        self, api_version: str, kind: str, namespace: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]:
        path = object_path(api_version, kind, namespace, name)
        return self._call("PATCH", path, patch, fieldManager=FIELD_MANAGER)

    def patch_if_exists(
        self, api_version: str, kind: str, namespace: str, name: str, patch: dict[str, Any]
    ) -> bool:
        """`patch`, except that a missing object is no error (returns False)."""
        try:
            self.patch(api_version, kind, namespace, name, patch)
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._call("GET", object_path(api_version, kind, namespace, name))
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def ensure(
        self,
        obj: dict[str, Any],
        owner_uid: str,
        patch: dict[str, Any] | None = None,
        create: bool = True,
    ) -> str:
        """Create `obj`, or merge-patch the existing one with `patch` (default: `obj` itself).

        Returns "created" or "patched"; the same manifest patches to a no-op, so it is safe to
        repeat. An existing object controlled by another owner uid raises OwnedByAnother.
        `create=False`: only an existing object is patched ("absent" when there is none).
        """
        version, kind, meta = obj["apiVersion"], obj["kind"], obj["metadata"]
        if create:
            try:
                self.create(obj)
                return "created"
            except ApiException as error:
                if error.status != 409:
                    raise
        existing = self.get(version, kind, meta["namespace"], meta["name"])
        if existing is None and not create:
            return "absent"
        existing = existing or {}
        owners = existing.get("metadata", {}).get("ownerReferences") or []
        if not any(ref.get("controller") and ref.get("uid") == owner_uid for ref in owners):
            raise OwnedByAnother(
                f"{kind} {meta['namespace']}/{meta['name']} exists and is not "
                f"controlled by this DistillJob (uid {owner_uid})"
            )
        changes = obj if patch is None else patch
        self.patch(version, kind, meta["namespace"], meta["name"], changes)
        return "patched"

    def get_distilljob(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.get(API_VERSION, KIND, namespace, name)

    def patch_distilljob_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        path = object_path(API_VERSION, KIND, namespace, name, "status")
        self._call("PATCH", path, {"status": status}, fieldManager=FIELD_MANAGER)
