"""read_dataset over S3, against moto's server on loopback (the same path MinIO would take)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from distill_trainer import data


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    yield endpoint
    server.stop()


def test_read_dataset_from_s3(s3_endpoint: str, tmp_path: Path) -> None:
    paths = data.prep_arithmetic(tmp_path, train=12, test=3, seed=3, max_operand=20)
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket="distill-data")
    client.upload_file(str(paths["train"]), "distill-data", "arith/train.parquet")
    records = data.read_dataset("s3://distill-data/arith/train.parquet")
    assert records == data.read_dataset(str(paths["train"]))
    assert len(records) == 12


def test_s3_uri_without_key_is_rejected(s3_endpoint: str) -> None:
    with pytest.raises(ValueError, match="s3://bucket/key"):
        data.read_dataset("s3://only-bucket")


def test_missing_s3_object_raises(s3_endpoint: str) -> None:
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="empty")
    with pytest.raises(FileNotFoundError, match=r"s3://empty/none\.parquet"):
        data.read_dataset("s3://empty/none.parquet")
