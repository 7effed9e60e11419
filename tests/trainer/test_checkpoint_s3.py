"""Checkpoints on S3, against a real S3 API: moto's server on a loopback port, with IAM
authentication switched on (requests are signature-checked), reached through AWS_ENDPOINT_URL
exactly as MinIO would be. Nothing in boto3 is patched.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer
from transformers import AutoModelForCausalLM, AutoTokenizer

from distill_trainer.checkpoint import CheckpointStoreError, open_store
from distill_trainer.checkpoint.store import MIB, S3Store, readable_dir
from distill_trainer.cli import main
from distill_trainer.config import RunOptions
from distill_trainer.driver import run_job

BUCKET = "distill-ckpt"
ALLOW_S3 = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
}


@pytest.fixture(scope="module")
def s3_server() -> Iterator[dict[str, str]]:
    """The endpoint and one IAM user's keys; every request after set-up must be signed by them."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    setup = {"endpoint_url": endpoint, "region_name": "us-east-1"}
    root = {"aws_access_key_id": "setup", "aws_secret_access_key": "setup", **setup}
    iam = boto3.client("iam", **root)
    iam.create_user(UserName="trainer")
    iam.put_user_policy(UserName="trainer", PolicyName="s3", PolicyDocument=json.dumps(ALLOW_S3))
    key = iam.create_access_key(UserName="trainer")["AccessKey"]
    boto3.client("s3", **root).create_bucket(Bucket=BUCKET)
    previous = httpx.post(f"{endpoint}/moto-api/reset-auth", content=b"0").json()
    try:
        yield {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    finally:
        limit = previous["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"].encode()
        httpx.post(f"{endpoint}/moto-api/reset-auth", content=limit)
        server.stop()


@pytest.fixture
def s3_env(s3_server: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name, value in s3_server.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    return s3_server


def test_store_round_trip_with_multipart_upload(s3_env, tmp_path: Path) -> None:
    store = S3Store(f"s3://{BUCKET}/unit", multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB)
    big = os.urandom(11 * MIB)
    (tmp_path / "src" / "actor").mkdir(parents=True)
    (tmp_path / "src" / "actor" / "model.safetensors").write_bytes(big)
    (tmp_path / "src" / "config.json").write_text("{}")
    store.upload_dir(tmp_path / "src", "global_step_1")
    store.write_bytes("global_step_1/manifest.json", b'{"step": 1}')
    # 11 MiB in 5 MiB parts: a multipart upload of 3 parts (S3 says so in the ETag).
    head = store.client.head_object(Bucket=BUCKET, Key="unit/global_step_1/actor/model.safetensors")
    assert head["ETag"].strip('"').endswith("-3")
    assert store.list_dirs() == ["global_step_1"]
    assert store.list_files("global_step_1") == {
        "actor/model.safetensors": len(big),
        "config.json": 2,
        "manifest.json": 11,
    }
    # The AWS console's "Create folder" leaves an empty `actor/` object: a marker, not a file.
    store.client.put_object(Bucket=BUCKET, Key="unit/global_step_1/actor/", Body=b"")
    with readable_dir(store, "global_step_1") as local:
        assert (local / "actor" / "model.safetensors").read_bytes() == big
    assert store.read_bytes("global_step_1/manifest.json") == b'{"step": 1}'
    with pytest.raises(FileNotFoundError, match=rf"s3://{BUCKET}/unit/none\.json"):
        store.read_bytes("none.json")
    store.remove("global_step_1/manifest.json")
    assert "manifest.json" not in store.list_files("global_step_1")
    store.delete("global_step_1")
    assert store.list_dirs() == [] and store.list_files("global_step_1") == {}


def test_wrong_credentials_or_bucket_give_one_error_naming_the_bucket(
    s3_env, monkeypatch, capsys, make_document, tmp_path: Path
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(CheckpointStoreError) as err:
        open_store(f"s3://{BUCKET}/jobs")
    message = str(err.value)
    assert f"bucket {BUCKET!r} at {s3_env['AWS_ENDPOINT_URL']}" in message
    assert "access denied" in message and "checkpoint.secretRef" in message
    # Through the CLI: exit code 2 and that one error, before any model is loaded.
    job = tmp_path / "job.json"
    job.write_text(json.dumps(make_document(checkpoint={"uri": f"s3://{BUCKET}/jobs"})))
    assert main(["run", str(job), "--backend", "inprocess", "--no-progress"]) == 2
    stderr = capsys.readouterr().err.strip().splitlines()
    assert stderr[0] == "error: cannot run tiny-job:"
    assert len(stderr) == 2 and f"bucket {BUCKET!r}" in stderr[1] and "access denied" in stderr[1]

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_env["AWS_SECRET_ACCESS_KEY"])
    with pytest.raises(CheckpointStoreError, match=r"bucket 'no-such-bucket' .* does not exist"):
        open_store("s3://no-such-bucket/jobs")


def test_a_run_checkpoints_to_s3_and_resumes_from_it(s3_env, make_job, tmp_path: Path) -> None:
    uri = f"s3://{BUCKET}/jobs/tiny"
    options = RunOptions(backend="inprocess", output_dir=tmp_path / "out", progress=False)
    checkpoint = {"uri": uri, "keep": 1}
    training = {"totalSteps": 2, "saveFreq": 1, "testFreq": 100}
    first = run_job(make_job(checkpoint=checkpoint, training=training), options)
    store = open_store(uri)
    assert store.list_dirs() == ["final", "global_step_2"]  # step 1 pruned once 2 committed
    assert first.last_checkpoint == f"{uri}/global_step_2" and first.final_model == f"{uri}/final"
    files = store.list_files("global_step_2")
    manifest = json.loads(store.read_bytes("global_step_2/manifest.json"))
    assert manifest["files"] == {k: v for k, v in files.items() if k != "manifest.json"}
    assert {"actor/model.safetensors", "actor/trainer_state.pt", "driver_state.pt"} <= set(files)
    with readable_dir(store, "final") as final:
        AutoModelForCausalLM.from_pretrained(final)
        AutoTokenizer.from_pretrained(final)
    # Extending the run (totalSteps is a schedule field) continues from the S3 checkpoint.
    training["totalSteps"] = 3
    second = run_job(make_job(checkpoint=checkpoint, training=training), options)
    assert [int(m["training/step"]) for m in second.history] == [3]
    assert store.list_dirs() == ["final", "global_step_3"]
