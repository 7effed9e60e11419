"""Grader settings: env vars, CLI flags on top, and bad values named the way they were given."""

from __future__ import annotations

import pytest

from distill_grader.config import GraderSettings, load_settings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ["GRADER_PORT", "GRADER_WORKERS", "DISTILL_JOB_NAME", "GRADER_ITEM_TIMEOUT_S"]:
        monkeypatch.delenv(name, raising=False)
    settings = load_settings([])
    assert settings == GraderSettings(
        host="0.0.0.0",
        port=8000,
        workers=2,
        item_timeout_s=10.0,
        request_timeout_s=120.0,
        max_batch=4096,
        max_response_chars=32768,
        max_body_bytes=64 * 2**20,
        job_name="local",
    )


def test_flags_override_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRADER_PORT", "9000")
    monkeypatch.setenv("GRADER_WORKERS", "3")
    monkeypatch.setenv("GRADER_MAX_BATCH", "128")
    monkeypatch.setenv("DISTILL_JOB_NAME", "job-a")
    monkeypatch.setenv("GRADER_REQUEST_TIMEOUT_S", "30")
    settings = load_settings(["--workers", "5", "--item-timeout-s", "2.5"])
    assert (settings.port, settings.workers, settings.max_batch) == (9000, 5, 128)
    assert (settings.item_timeout_s, settings.job_name) == (2.5, "job-a")
    assert settings.request_timeout_s == 30.0
    assert load_settings(["--request-timeout-s", "45"]).request_timeout_s == 45.0
    assert load_settings(["--job-name", "job-b"]).job_name == "job-b"


@pytest.mark.parametrize(
    ("env", "argv", "named"),
    [
        ({"GRADER_WORKERS": "many"}, [], "--workers / GRADER_WORKERS"),
        ({}, ["--item-timeout-s", "0"], "--item-timeout-s / GRADER_ITEM_TIMEOUT_S"),
        ({}, ["--port", "70000"], "--port / GRADER_PORT"),
        ({}, ["--request-timeout-s", "-1"], "--request-timeout-s / GRADER_REQUEST_TIMEOUT_S"),
        ({}, ["--log-level", "loud"], "--log-level / GRADER_LOG_LEVEL"),
    ],
)
def test_bad_values_exit_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    argv: list[str],
    named: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_info:
        load_settings(argv)
    assert exit_info.value.code == 2
    assert named in capsys.readouterr().err
