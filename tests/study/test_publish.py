"""`study publish` against a real S3 protocol server (moto's server mode) on 127.0.0.1."""

import socket

import boto3
import pytest
from typer.testing import CliRunner

from prunexplain.cli import app
from prunexplain.config import UserError
from prunexplain.study.mturk import publish


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def s3(monkeypatch):
    from moto.server import ThreadedMotoServer

    for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=url)
    client.create_bucket(Bucket="stimuli")
    yield url, client
    server.stop()


@pytest.fixture
def study_dir(tmp_path):
    study = tmp_path / "runs" / "x" / "study"
    for name, body in {"exp1/0_nonpruned_0-disk_2pruned.png": b"\x89PNG one",
                       "exp2/0_0-disk_nonpruned.png": b"\x89PNG two"}.items():
        (study / name).parent.mkdir(parents=True, exist_ok=True)
        (study / name).write_bytes(body)
    (study / "manifest.json").write_text("{}")
    return study


def test_stimuli_are_uploaded_once_with_their_content(s3, study_dir):
    url, client = s3
    result = publish(study_dir, "stimuli", "pilot/", url)
    assert (result.uploaded, result.unchanged) == (2, 0) and result.base_url == f"{url}/stimuli/pilot/"
    body = client.get_object(Bucket="stimuli", Key="pilot/exp1/0_nonpruned_0-disk_2pruned.png")
    assert body["Body"].read() == b"\x89PNG one" and body["ContentType"] == "image/png"
    (study_dir / "exp2" / "0_0-disk_nonpruned.png").write_bytes(b"\x89PNG changed")
    again = publish(study_dir, "stimuli", "pilot/", url)
    assert (again.uploaded, again.unchanged) == (1, 1)
    changed = client.get_object(Bucket="stimuli", Key="pilot/exp2/0_0-disk_nonpruned.png")["Body"].read()
    assert changed == b"\x89PNG changed"


def test_cli_publishes_and_names_a_missing_bucket(s3, study_dir):
    url, _ = s3
    run = study_dir.parent
    publish_to = ["study", "publish", "--run", str(run), "--endpoint-url", url, "--bucket"]
    done = CliRunner().invoke(app, [*publish_to, "stimuli"])
    assert done.exit_code == 0 and "2 files uploaded" in done.output and "study.url_prefix" in done.output
    missing = CliRunner().invoke(app, [*publish_to, "nope"])
    assert missing.exit_code == 2 and "s3://nope" in missing.output and "Traceback" not in missing.output


def test_publishing_needs_stimuli(tmp_path):
    with pytest.raises(UserError, match="run `prunexplain study build` first"):
        publish(tmp_path, "stimuli")


def _public(client, key: str) -> bool:
    grants = client.get_object_acl(Bucket="stimuli", Key=key)["Grants"]
    return any(g["Grantee"].get("URI", "").endswith("/global/AllUsers") and g["Permission"] == "READ" for g in grants)


def test_public_read_uploads_with_the_acl_the_original_used(s3, study_dir, caplog):
    """The original uploaded every stimulus with ACL public-read (experiments/utils.py, upload_to_s3):
    --public-read does the same, also for objects an earlier publish left private; without it the
    summary and the log say workers need the bucket readable (bucket policy or --public-read)."""
    url, client = s3
    key = "exp1/0_nonpruned_0-disk_2pruned.png"
    with caplog.at_level("INFO", logger="prunexplain.study.mturk"):
        private = publish(study_dir, "stimuli", "", url)
    assert not _public(client, key) and "bucket policy" in private.summary() and "--public-read" in private.summary()
    assert any("bucket policy" in r.getMessage() and "--public-read" in r.getMessage() for r in caplog.records)
    again = publish(study_dir, "stimuli", "", url, public_read=True)
    assert (again.uploaded, again.unchanged) == (0, 2) and _public(client, key)
    assert "public-read" in again.summary() and "bucket policy" not in again.summary()


def test_cli_public_read_and_its_help(s3, study_dir):
    url, client = s3
    command = ["study", "publish", "--run", str(study_dir.parent), "--endpoint-url", url, "--bucket", "stimuli"]
    done = CliRunner().invoke(app, [*command, "--public-read"])
    assert done.exit_code == 0 and _public(client, "exp2/0_0-disk_nonpruned.png")
    shown = CliRunner().invoke(app, ["study", "publish", "--help"], env={"COLUMNS": "200"})
    assert "--public-read" in shown.output and "readable by anyone" in " ".join(shown.output.split())
