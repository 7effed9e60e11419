"""Live processes for the chart tests: the operator against FakeKube, HTTP polling, scraping.

`from chart.live import ...`. Every wait polls a condition against a deadline; none sleeps blind.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client.parser import text_string_to_metric_families

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """(status, body); status 0 when nothing listens yet."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")
    except OSError:
        return 0, ""


def _forever() -> bool:
    return True


def wait_until(
    check: Callable[[], T], what: str, timeout: float = 60.0, alive: Callable[[], bool] = _forever
) -> T:
    """Poll `check` every 0.1 s until it returns something truthy; fail after `timeout` seconds
    or as soon as `alive()` turns false (the process we wait on died)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline or not alive():
            raise TimeoutError(f"{what}: not within {timeout:.0f} s (alive={alive()})")
        time.sleep(0.1)


def metric_names(exposition: str) -> set[str]:
    """Metric family names in a Prometheus text exposition (`foo` for `foo_total`, `foo_bucket`)."""
    return {family.name for family in text_string_to_metric_families(exposition)}


def samples(exposition: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
    ]


class Process:
    """A child process with its output in a log file; `stop()` terminates it (then kills)."""

    def __init__(self, command: list[str], log_path: Path, env: dict[str, str]) -> None:
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.popen = subprocess.Popen(
                command, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT
            )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self, tail: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:]

    def stop(self) -> None:
        if self.alive():
            self.popen.terminate()
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def _with_port(arg: str, ports: dict[str, int]) -> str:
    flag = arg.split("=")[0]
    return f"{flag}={ports[flag]}" if flag in ports else arg


def start_operator(args: list[str], kubeconfig: str, log_dir: Path) -> tuple[Process, int]:
    """`python -m distill_operator ARGS` with the chart's ports replaced by free ones; returns the
    process (once /healthz answers) and its metrics port."""
    liveness, metrics = free_port(), free_port()
    ports = {"--liveness-port": liveness, "--metrics-port": metrics}
    args = [_with_port(arg, ports) for arg in args]
    process = Process(
        [sys.executable, "-m", "distill_operator", *args],
        log_dir / f"operator-{liveness}.log",
        {"KUBECONFIG": kubeconfig, "PYTHONUNBUFFERED": "1"},
    )
    try:
        wait_until(
            lambda: http_get(f"http://127.0.0.1:{liveness}/healthz")[0] == 200,
            "operator liveness",
            alive=process.alive,
        )
    except TimeoutError:
        process.stop()
        raise AssertionError(f"operator did not start:\n{process.log()}") from None
    return process, metrics


def scrape(port: int) -> str:
    status, body = http_get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200, f"/metrics on :{port} answered {status}"
    return body


def deep_get(obj: Any, *keys: str) -> Any:
    for key in keys:
        obj = (obj or {}).get(key)
    return obj


class Prometheus:
    """A real Prometheus (Debian's package) on 127.0.0.1, scraping `targets` every second.

    `targets` maps a scrape job name to host:port; `rule_files` are loaded as well.
    """

    def __init__(
        self, binary: str, targets: dict[str, str], workdir: Path, rule_files: tuple[Path, ...] = ()
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        every_second = {"scrape_interval": "1s", "scrape_timeout": "900ms"}
        config = {
            "global": {**every_second, "evaluation_interval": "1s"},
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [
                {"job_name": name, "static_configs": [{"targets": [address]}]}
                for name, address in targets.items()
            ],
        }
        config_path = workdir / "prometheus.yml"
        config_path.write_text(json.dumps(config))  # JSON is YAML
        self.process = Process(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            workdir / "prometheus.log",
            {},
        )
        try:
            wait_until(
                lambda: http_get(f"{self.url}/-/ready")[0] == 200,
                "prometheus ready",
                alive=self.process.alive,
            )
        except TimeoutError:
            self.process.stop()
            raise AssertionError(f"prometheus did not start:\n{self.process.log()}") from None

    def api(self, path: str, **params: str | float) -> Any:
        status, body = http_get(f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}")
        reply = json.loads(body) if body else {}
        assert status == 200 and reply.get("status") == "success", f"{path} {params}: {body}"
        return reply["data"]

    def query_range(self, expr: str, start: float, end: float) -> list[dict[str, Any]]:
        return self.api("query_range", query=expr, start=start, end=end, step=1)["result"]

    def stop(self) -> None:
        self.process.stop()


def has_finite_value(series: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(v)) for s in series for _, v in s.get("values", []))
