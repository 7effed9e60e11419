"""The trainer's Prometheus text -> status.step/reward/klPerToken/..., and scrape failures."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Gauge, generate_latest

from distill_api import load_job
from distill_operator.builders.names import trainer_service_name
from distill_operator.progress import (
    ScrapeError,
    progress_status,
    progress_url,
    scrape,
    trainer_gauges,
)


def trainer_text(job: str, other_job: str = "", **values: float) -> str:
    """Metrics text as prometheus_client renders the trainer's gauges (for one or two jobs)."""
    registry = CollectorRegistry()
    for name, value in values.items():
        gauge = Gauge(name, name, ["distilljob"], registry=registry)
        gauge.labels(job).set(value)
        if other_job:
            gauge.labels(other_job).set(value + 1000)
    return generate_latest(registry).decode()


def test_gauges_of_this_job_only() -> None:
    text = trainer_text("a", "b", training_step=7, distill_kl_per_token=0.25, actor_lr=1e-6)
    assert trainer_gauges(text, "a") == {"training_step": 7.0, "distill_kl_per_token": 0.25}
    assert trainer_gauges(text, "b")["training_step"] == 1007.0


def test_nan_is_skipped() -> None:
    text = trainer_text("a", val_reward=float("nan"), training_step_reward=0.5)
    assert trainer_gauges(text, "a") == {"training_step_reward": 0.5}


def test_status_fields_and_checkpoint_uri(example_body) -> None:
    job = load_job(example_body("math-distill.yaml"))
    gauges = {
        "training_step": 120.0,
        "training_total_steps": 500.0,
        "training_step_reward": 0.625,
        "distill_kl_per_token": 0.031,
        "val_reward": 0.58,
        "training_last_checkpoint_step": 100.0,
    }
    assert progress_status(gauges, job) == {
        "step": 120,
        "totalSteps": 500,
        "reward": 0.625,
        "klPerToken": 0.031,
        "valReward": 0.58,
        "lastCheckpoint": {
            "uri": "s3://distill-checkpoints/math-distill/global_step_100/",
            "step": 100,
        },
    }
    # No checkpoint written yet: no lastCheckpoint; the final model once the trainer says so.
    assert "lastCheckpoint" not in progress_status({"training_last_checkpoint_step": 0}, job)
    assert "finalModel" not in progress_status({"training_final_model_saved": 0}, job)
    final = progress_status({"training_final_model_saved": 1}, job)
    assert final == {"finalModel": "s3://distill-checkpoints/math-distill/final/"}
    # Without spec.checkpoint nothing is kept beyond the pods: nothing to point at.
    job.spec.checkpoint = None
    gauges["training_final_model_saved"] = 1.0
    assert not {"lastCheckpoint", "finalModel"} & progress_status(gauges, job).keys()


def test_url_template_knows_the_trainer_service() -> None:
    long = "a" * 60
    url = progress_url("http://{service}.{namespace}.svc:9400/metrics", long, "ns")
    service = trainer_service_name(long)
    assert len(service) == 63 and service.endswith("-trainer")
    assert url == f"http://{service}.ns.svc:9400/metrics"
    assert progress_url("http://h/{name}/{namespace}", "j", "ns") == "http://h/j/ns"


@pytest.fixture
def http_server() -> Iterator[tuple[str, dict[str, tuple[int, bytes]]]]:
    """A local server answering each path with a (status, body) from the returned dict."""
    routes: dict[str, tuple[int, bytes]] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code, body = routes.get(self.path, (404, b"no such path"))
            self.send_response(code)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", routes
    server.shutdown()


def test_scrape_reads_and_fails_clearly(http_server) -> None:
    base, routes = http_server
    routes["/metrics"] = (200, trainer_text("j", training_step=3).encode())
    assert trainer_gauges(scrape(f"{base}/metrics", timeout=5), "j") == {"training_step": 3.0}
    routes["/broken"] = (500, b"oops")
    with pytest.raises(ScrapeError, match="500"):
        scrape(f"{base}/broken", timeout=5)
    with pytest.raises(ScrapeError, match="unparseable"):
        trainer_gauges("training_step{distilljob=j 3\n", "j")
