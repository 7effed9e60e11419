"""A fake Kubernetes API server for tests: real HTTP, real clients (kubernetes, kopf, kubectl).

    from fakekube import FakeKube
    with FakeKube(crds=[crd_path]) as kube:
        kube.url, kube.kubeconfig, kube.api_client(), kube.requests
        kube.get(group, version, plural, namespace, name) / kube.list(...) / kube.wait_for(fn)

pytest fixtures `fake_kube` / `fake_kube_env` are in `fakekube.fixtures`. kopf's default login
reads $KUBECONFIG through the kubernetes library, which fixes it at import: run kopf inside
`kube.as_default_kubeconfig()` (or `fake_kube_env`), or pass it KUBECONFIG in a subprocess.

Module map: `resources` (kinds served), `store` (objects, resourceVersions, finalizers),
`collector` (ownerReference GC), `watch` + `streaming` (history and watch streams), `schema` +
`cel` (CRD defaulting, pruning, validation, CEL rules, ratcheting), `admission` + `podspec`
(built-in kinds' defaults and checks), `events` (events.k8s.io/v1 over core/v1 Events),
`patches`, `selectors`, `tables` (kubectl get), `discovery`, `server` (aiohttp routes),
`kubeconfig`, `harness` (`FakeKube`), `fixtures`, `sample` (a test CRD).

Not emulated (requests get a clear error or the documented simplification): server-side apply
and dryRun (415/400), pagination (`limit` is ignored, everything comes in one page), periodic
watch bookmarks, protobuf, authentication/RBAC enforcement (requests are only recorded), the
controllers (no ReplicaSets/Pods from Deployments, no Endpoints), conversion between CRD
versions, and `format` checks. Strategic merge patch is simplified (see `patches`); Foreground
deletion removes dependents synchronously; namespace deletion is immediate.
"""

from fakekube.errors import ApiError
from fakekube.harness import FakeKube, load_crds
from fakekube.server import RequestRecord

__all__ = ["ApiError", "FakeKube", "RequestRecord", "load_crds"]
