"""The Imagenette download against a local HTTP server serving a small archive made here."""

import hashlib
import io
import re
import shutil
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from prunexplain.cli import app
from prunexplain.config import UserError
from prunexplain.data.imagenette import CLASSES, download
from prunexplain.data.loaders import load_splits
from prunexplain.runs import Run
from prunexplain.train import train_stage
from tests.conftest import tiny_settings


def _archive() -> bytes:
    """imagenette2-160/{train,val}/<wnid>/*.JPEG: 2 train and 3 val images per class."""
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for split, count in (("train", 2), ("val", 3)):
            for wnid in CLASSES:
                for i in range(count):
                    image = io.BytesIO()
                    Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(image, "JPEG")
                    info = tarfile.TarInfo(f"imagenette2-160/{split}/{wnid}/{wnid}_{i}.JPEG")
                    info.size = image.tell()
                    image.seek(0)
                    tar.addfile(info, image)
    return buffer.getvalue()


ARCHIVE = _archive()
MD5 = hashlib.md5(ARCHIVE).hexdigest()


class _Server:
    """Serves `payload` at /imagenette2-160.tgz and records each request's Range header.

    Modes: "ranges" honours Range requests; "no-ranges" always sends the whole file (status 200);
    "truncate" announces the whole length but drops the connection halfway.
    """

    def __init__(self, payload: bytes, mode: str = "ranges") -> None:
        self.payload, self.mode, self.requests = payload, mode, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.requests.append(self.headers.get("Range"))
                start = 0
                if outer.mode == "ranges" and self.headers.get("Range"):
                    start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
                    if start >= len(outer.payload):
                        self.send_response(416)
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(outer.payload) - 1}/{len(outer.payload)}")
                else:
                    self.send_response(200)
                body = outer.payload[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if outer.mode == "truncate":
                    body, self.close_connection = body[: len(body) // 2], True
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/imagenette2-160.tgz"

    def __enter__(self):
        # A short poll interval: shutdown() waits for it, and the default 0.5 s would dominate the tests.
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _tree(tmp_path):
    """The archive's imagenette2-160 folder, extracted here without any download."""
    with tarfile.open(fileobj=io.BytesIO(ARCHIVE)) as tar:
        tar.extractall(tmp_path, filter="data")
    return tmp_path / "imagenette2-160"


def test_download_verifies_extracts_and_the_split_reads_it(tmp_path):
    with _Server(ARCHIVE) as server:
        folder = download("160", tmp_path, server.url, MD5, progress=False)
    assert folder == tmp_path / "imagenette2-160" and server.requests == [None]
    splits = load_splits(folder, 69, CLASSES)
    assert splits.train.classes == tuple(CLASSES.values()) and splits.train.classes[0] == "0-fish"
    assert (len(splits.train), len(splits.test), len(splits.valid)) == (20, 21, 9)
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob(".*extracting"))
    for images in (splits.train, splits.test, splits.valid):
        assert all(path.parent.name == list(CLASSES)[label] for path, label in zip(images.paths, images.labels))


def test_a_partial_download_resumes_with_a_range_request(tmp_path):
    half = len(ARCHIVE) // 2
    (tmp_path / "imagenette2-160.tgz.part").write_bytes(ARCHIVE[:half])
    with _Server(ARCHIVE) as server:
        download("160", tmp_path, server.url, MD5, progress=False)
    assert server.requests == [f"bytes={half}-"]
    assert (tmp_path / "imagenette2-160.tgz").read_bytes() == ARCHIVE


def test_a_server_that_ignores_ranges_makes_it_start_over(tmp_path):
    (tmp_path / "imagenette2-160.tgz.part").write_bytes(b"stale bytes")
    with _Server(ARCHIVE, mode="no-ranges") as server:
        download("160", tmp_path, server.url, MD5, progress=False)
    assert (tmp_path / "imagenette2-160.tgz").read_bytes() == ARCHIVE


def test_a_dropped_connection_keeps_the_part_for_the_next_run(tmp_path):
    with _Server(ARCHIVE, mode="truncate") as server, pytest.raises(UserError, match="download interrupted after"):
        download("160", tmp_path, server.url, MD5, progress=False)
    part = tmp_path / "imagenette2-160.tgz.part"
    half = len(ARCHIVE) // 2
    assert part.read_bytes() == ARCHIVE[:half]
    with _Server(ARCHIVE) as server:
        download("160", tmp_path, server.url, MD5, progress=False)
    assert server.requests == [f"bytes={half}-"] and (tmp_path / "imagenette2-160" / "train").is_dir()


def test_a_complete_part_file_is_verified_not_fetched(tmp_path):
    (tmp_path / "imagenette2-160.tgz.part").write_bytes(ARCHIVE)
    with _Server(ARCHIVE) as server:  # answers 416: the range starts past the end
        folder = download("160", tmp_path, server.url, MD5, progress=False)
    assert server.requests == [f"bytes={len(ARCHIVE)}-"] and (folder / "val").is_dir()


def test_finished_work_is_not_done_again(tmp_path):
    with _Server(ARCHIVE) as server:
        download("160", tmp_path, server.url, MD5, progress=False)
        download("160", tmp_path, server.url, MD5, progress=False)
        assert len(server.requests) == 1
        (tmp_path / "imagenette2-160").rename(tmp_path / "moved")  # archive kept: extraction only
        download("160", tmp_path, server.url, MD5, progress=False)
        assert len(server.requests) == 1 and (tmp_path / "imagenette2-160" / "val").is_dir()


def test_a_wrong_checksum_removes_the_download(tmp_path):
    expected = f"checksum mismatch \\(expected md5 {'0' * 32}, got {MD5}"
    with _Server(ARCHIVE) as server, pytest.raises(UserError, match=expected):
        download("160", tmp_path, server.url, "0" * 32, progress=False)
    assert not list(tmp_path.iterdir())


def test_a_corrupt_archive_and_an_unreachable_server_are_named(tmp_path):
    junk = b"this is not a gzip file" * 100
    with _Server(junk) as server, pytest.raises(UserError, match="imagenette2-160.tgz: cannot extract"):
        download("160", tmp_path, server.url, hashlib.md5(junk).hexdigest(), progress=False)
    assert not (tmp_path / "imagenette2-160").exists()
    with _Server(ARCHIVE) as server:
        url = server.url
    with pytest.raises(UserError, match=f"{url}: download failed"):
        download("160", tmp_path / "other", url, MD5, progress=False)


def test_scan_errors_name_the_folder(tmp_path):
    with pytest.raises(UserError, match=re.escape(f"{tmp_path / 'absent' / 'train'}: no such folder")):
        load_splits(tmp_path / "absent", 69, CLASSES)
    root = _tree(tmp_path)
    fish = root / "val" / "n01440764"
    for image in fish.iterdir():
        image.unlink()
    with pytest.raises(UserError, match=re.escape(f"{fish}: empty class folder")):
        load_splits(root, 69, CLASSES)
    fish.rmdir()
    (root / "val" / "n99999999").mkdir()
    mismatch = f"{root / 'val'}: class folders do not match (unknown: ['n99999999'], missing: ['n01440764'])"
    with pytest.raises(UserError, match=re.escape(mismatch)):
        load_splits(root, 69, CLASSES)
    shutil.rmtree(root / "val")
    with pytest.raises(UserError, match=re.escape(f"{root / 'val'}: no such folder")):
        load_splits(root, 69, CLASSES)


def test_the_cli_downloads_and_names_bad_input(tmp_path):
    runner = CliRunner()
    with _Server(ARCHIVE) as server:
        result = runner.invoke(app, ["data", "imagenette", "--size", "160", "--dest", str(tmp_path),
                                     "--url", server.url, "--md5", MD5])
    assert result.exit_code == 0, result.output
    assert f"Imagenette in {tmp_path / 'imagenette2-160'}" in result.output
    result = runner.invoke(app, ["data", "imagenette", "--size", "100", "--dest", str(tmp_path)])
    assert result.exit_code == 2
    assert "error: --size: unknown Imagenette size '100' (sizes: full, 320, 160)" in result.output


def test_a_run_trains_on_the_downloaded_folder(tmp_path):
    with _Server(ARCHIVE) as server:
        folder = download("160", tmp_path, server.url, MD5, progress=False)
    settings = tiny_settings(tmp_path, folder, 'data.dataset="imagenette"', "train.epochs=1")
    result = train_stage(settings, Run(settings.run_dir))
    assert result.epochs_trained == 1
    meta = torch.load(settings.run_dir / "train" / "model.pt", weights_only=True)["meta"]
    assert meta["classes"] == list(CLASSES.values())
