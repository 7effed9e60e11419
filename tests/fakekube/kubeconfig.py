"""A kubeconfig file pointing at the fake server (context "fake", bearer token auth)."""

from __future__ import annotations

from pathlib import Path

import yaml

CONTEXT = "fake"


def kubeconfig(url: str, namespace: str = "default") -> dict:
    """The kubeconfig document; the token is accepted but never checked by the fake server."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CONTEXT, "cluster": {"server": url}}],
        "users": [{"name": CONTEXT, "user": {"token": "fakekube-token"}}],
        "contexts": [
            {
                "name": CONTEXT,
                "context": {"cluster": CONTEXT, "user": CONTEXT, "namespace": namespace},
            }
        ],
        "current-context": CONTEXT,
        "preferences": {},
    }


def write_kubeconfig(path: Path, url: str, namespace: str = "default") -> Path:
    path.write_text(yaml.safe_dump(kubeconfig(url, namespace), sort_keys=False))
    path.chmod(0o600)
    return path
