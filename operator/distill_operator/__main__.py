"""Run the DistillJob operator.

    python -m distill_operator [--namespace NS ... | --all-namespaces]
        [--peering NAME | --standalone] [--liveness-port 8080] [--metrics-port 9100]
        [--progress-interval 30] [--progress-url-template URL] [--log-format json|full|plain]
        [--job-run-as-user 1000|none] [--no-network-policy] [--dashboard-peers JSON]
        [--metrics-peers JSON] [--verbose | --debug]

Credentials: the pod's service account in a cluster, else KUBECONFIG / ~/.kube/config.
Serves kopf's liveness probe on :LIVENESS_PORT/healthz and Prometheus metrics on
:METRICS_PORT/metrics. See docs/operator.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys

import kopf
import prometheus_client

from distill_operator import progress
from distill_operator.apply import REQUEST_TIMEOUT_S, Kube, load_api_client
from distill_operator.builders.labels import JOB_LABEL
from distill_operator.builders.options import DEFAULT_OPTIONS, BuildOptions
from distill_operator.handlers import OWNED_KINDS, OperatorConfig, new_memo, register

PREFIX = "distill.dev"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m distill_operator",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        dest="namespaces",
        default=[],
        help="serve only this namespace (repeatable; globs allowed)",
    )
    scope.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        help="serve every namespace (the default when no --namespace is given)",
    )
    peering = parser.add_mutually_exclusive_group()
    peering.add_argument(
        "--peering", metavar="NAME", help="coordinate replicas through this kopf peering object"
    )
    peering.add_argument(
        "--standalone",
        action="store_true",
        help="no peering (one replica); default: kopf's auto-detection",
    )
    parser.add_argument("--liveness-port", type=int, default=8080)
    parser.add_argument("--metrics-port", type=int, default=9100, help="0 disables")
    parser.add_argument(
        "--progress-interval",
        type=float,
        default=30.0,
        help="seconds between scrapes of a running trainer's metrics",
    )
    parser.add_argument("--progress-timeout", type=float, default=5.0)
    parser.add_argument(
        "--progress-url-template",
        default=progress.DEFAULT_URL_TEMPLATE,
        help="placeholders: {name}, {namespace}, {service} (the trainer Service)",
    )
    parser.add_argument("--log-format", choices=["json", "full", "plain"], default="json")
    jobs = parser.add_argument_group("job pods", "what the cluster decides about a job's pods")
    jobs.add_argument(
        "--job-run-as-user",
        type=_user_id,
        default=DEFAULT_OPTIONS.run_as_user,
        help="uid (and gid, fsGroup) of the job's pods; `none` leaves them to the platform "
        "(OpenShift's restricted SCC)",
    )
    jobs.add_argument(
        "--no-network-policy",
        dest="network_policy",
        action="store_false",
        help="no NetworkPolicy in front of each job's Ray pods",
    )
    jobs.add_argument(
        "--dashboard-peers",
        type=_peers,
        default=DEFAULT_OPTIONS.dashboard_peers,
        help="JSON list of NetworkPolicyPeers that may reach the Ray dashboard (job API); "
        "default: KubeRay's operator pods in any namespace",
    )
    jobs.add_argument(
        "--metrics-peers",
        type=_peers,
        default=DEFAULT_OPTIONS.metrics_peers,
        help="JSON list of NetworkPolicyPeers that may scrape the Ray pods' metrics ports "
        "(this operator and Prometheus); default: any namespace",
    )
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("--verbose", action="store_true", help="kopf's verbose logging")
    verbosity.add_argument("--debug", action="store_true", help="also the HTTP traffic")
    return parser.parse_args(argv)


def _user_id(text: str) -> int | None:
    if text.lower() == "none":
        return None
    uid = int(text)
    if uid <= 0:
        raise argparse.ArgumentTypeError("a non-root uid (> 0), or `none`")
    return uid


def _peers(text: str) -> tuple[dict[str, object], ...]:
    try:
        peers = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from error
    if not isinstance(peers, list) or not all(isinstance(p, dict) for p in peers):
        raise argparse.ArgumentTypeError("a JSON list of NetworkPolicyPeer objects")
    return tuple(peers)


def configure_settings(settings: kopf.OperatorSettings) -> None:
    """kopf settings that differ from its defaults, each for a reason."""
    # The status schema is strict (no preserve-unknown-fields): kopf's default status.kopf
    # progress would be pruned by the API server, so progress and diff-base go to annotations.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PREFIX, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{PREFIX}/finalizer"
    # kopf pauses every peer that does not hold the single highest priority, so replicas that
    # all keep the default (0) would all pause. A random priority per process elects one.
    settings.peering.priority = random.randint(1, 1_000_000)
    settings.posting.reporting_component = "distill-operator"
    settings.posting.reporting_instance = (
        os.environ.get("POD_ID") or os.environ.get("HOSTNAME") or "distill-operator"
    )
    # Owned children are watched only to notice deletions: the API server sends just the
    # labelled ones (kopf's handler filters alone would stream every ConfigMap of the cluster).
    for resource in OWNED_KINDS:
        settings.watching.label_selectors[resource] = JOB_LABEL
    # Load balancers drop idle long-polls silently; a server-side timeout renews the watch.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = REQUEST_TIMEOUT_S
    settings.networking.connect_timeout = 10


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    kopf.configure(
        verbose=args.verbose,
        debug=args.debug,
        log_format=kopf.LogFormat[args.log_format.upper()],
        log_refkey="k8s",
    )
    config = OperatorConfig(
        progress_url_template=args.progress_url_template,
        progress_interval=args.progress_interval,
        progress_timeout=args.progress_timeout,
        build=BuildOptions(
            run_as_user=args.job_run_as_user,
            network_policy=args.network_policy,
            dashboard_peers=args.dashboard_peers,
            metrics_peers=args.metrics_peers,
        ),
    )
    registry = kopf.OperatorRegistry()
    register(registry, config)

    # An explicit registry starts without kopf's default login: use the official client's
    # (service account in a pod, else KUBECONFIG), the same as our own API calls.
    kopf.on.login(registry=registry)(kopf.login_via_client)

    @kopf.on.startup(registry=registry)
    def _settings(settings: kopf.OperatorSettings, **_: object) -> None:
        configure_settings(settings)

    if args.metrics_port:
        prometheus_client.start_http_server(args.metrics_port)
    kopf.run(
        registry=registry,
        memo=new_memo(Kube(load_api_client()), config),
        clusterwide=not args.namespaces,
        namespaces=args.namespaces,
        standalone=True if args.standalone else None,
        peering_name=args.peering,
        liveness_endpoint=f"http://0.0.0.0:{args.liveness_port}/healthz",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
