"""Imagenette: its labels and a resumable, verified download.

The archives and their MD5 checksums are the ones fast.ai publishes (torchvision lists the same).
A download goes to `<archive>.part` and resumes from there with an HTTP Range request; the file
becomes the archive only once its checksum matches; extraction goes to a temp folder renamed at
the end, with tarfile's `data` filter (no absolute paths, links or devices outside the folder).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from prunexplain.config import UserError

log = logging.getLogger(__name__)

# WordNet-id folders -> the study's class labels (sorted ids give the labels' order).
CLASSES: dict[str, str] = {
    "n01440764": "0-fish",
    "n02102040": "1-dog",
    "n02979186": "2-cassetteplayer",
    "n03000684": "3-chainsaw",
    "n03028079": "4-church",
    "n03394916": "5-frenchhorn",
    "n03417042": "6-garbagetruck",
    "n03425413": "7-gaspump",
    "n03445777": "8-golfball",
    "n03888605": "9-parachute",
}

# The labels as the study showed them to people (its panel titles, `classes_show` in
# experiments_prep.ipynb): the words a participant reads, not the file-name labels above.
DISPLAY_NAMES: dict[str, str] = {
    "0-fish": "Fish",
    "1-dog": "Dog",
    "2-cassetteplayer": "Cassette Player",
    "3-chainsaw": "Chainsaw",
    "4-church": "Church",
    "5-frenchhorn": "Frenchhorn",
    "6-garbagetruck": "Garbage Truck",
    "7-gaspump": "Gaspump",
    "8-golfball": "Golfball",
    "9-parachute": "Parachute",
}

_BASE = "https://s3.amazonaws.com/fast-ai-imageclas"
ARCHIVES: dict[str, tuple[str, str]] = {
    "full": (f"{_BASE}/imagenette2.tgz", "fe2fc210e6bb7c5664d602c3cd71e612"),
    "320": (f"{_BASE}/imagenette2-320.tgz", "3df6f0d01a2c9592104656642f5e78a3"),
    "160": (f"{_BASE}/imagenette2-160.tgz", "e793b78cc4c9e9a4ccc0c1155377a412"),
}
# The top folder inside each archive, named for the archive rather than for a mirror's URL.
FOLDERS: dict[str, str] = {"full": "imagenette2", "320": "imagenette2-320", "160": "imagenette2-160"}
_CHUNK = 1 << 20


def download(size: str, dest: Path, url: str | None = None, md5: str | None = None, progress: bool = True) -> Path:
    """Download, verify and extract one Imagenette archive into `dest`; returns the dataset folder.

    `url` and `md5` replace the published ones (a mirror, or a test server). Work already done is
    skipped: an extracted folder returns at once, a verified archive is not fetched again, and a
    partial download resumes.
    """
    if size not in ARCHIVES:
        raise UserError(f"--size: unknown Imagenette size {size!r} (sizes: {', '.join(ARCHIVES)})")
    url, md5 = url or ARCHIVES[size][0], md5 or ARCHIVES[size][1]
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    folder = dest / FOLDERS[size]
    archive = dest / f"{FOLDERS[size]}.tgz"
    if folder.is_dir():
        log.info("Imagenette already in %s", folder)
        return folder
    if not (archive.exists() and _md5(archive) == md5):
        part = archive.with_name(archive.name + ".part")
        _fetch(url, part, progress)
        found = _md5(part)
        if found != md5:
            part.unlink()
            raise UserError(f"{archive}: checksum mismatch (expected md5 {md5}, got {found}); the download was removed")
        os.replace(part, archive)
    _extract(archive, folder)
    log.info("Imagenette extracted to %s", folder)
    return folder


def _fetch(url: str, part: Path, progress: bool) -> None:
    """Append the rest of `url` to `part`, starting over when the server ignores the Range header."""
    have = part.stat().st_size if part.exists() else 0
    response = _open(url, have)
    if response is None:
        return
    with response:
        if have and response.status != 206:
            log.info("%s ignores Range requests: downloading from the start", url)
            have = 0
        length = response.headers.get("Content-Length")
        expected = int(length) if length else None
        received = _copy(response, part, have, expected, progress, url)
    if expected is not None and received < expected:
        # urllib returns a short body without an error when the connection drops mid-transfer.
        raise UserError(
            f"{url}: download interrupted after {have + received} of {have + expected} bytes; "
            f"{part} is kept, run again to resume"
        )


def _open(url: str, have: int) -> http.client.HTTPResponse | None:
    """The server's response from byte `have` on; None when the part file already holds everything."""
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        return urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # range starts at the end: the checksum decides if it is whole
            return None
        raise UserError(f"{url}: download failed (HTTP {error.code} {error.reason})") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        raise UserError(f"{url}: download failed ({getattr(error, 'reason', error)}); run again to resume") from None


def _copy(response, part: Path, have: int, expected: int | None, progress: bool, url: str) -> int:
    """Stream the body into `part` (appending after `have` bytes); returns the bytes received."""
    total = have + expected if expected is not None else None
    bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=part.name, disable=not progress)
    received = 0
    try:
        with open(part, "ab" if have else "wb") as out, bar:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    except (OSError, http.client.HTTPException) as error:
        raise UserError(f"{url}: download interrupted ({error}); {part} is kept, run again to resume") from None
    return received


def _md5(path: Path) -> str:
    """Hex MD5 of a file read in chunks: the archives are up to 1.5 GB, too big to read at once."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _extract(archive: Path, folder: Path) -> None:
    """Extract into a temp folder, then move the dataset folder into place in one rename."""
    tmp = folder.with_name(f".{folder.name}.extracting")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
    except (tarfile.TarError, OSError, EOFError) as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"{archive}: cannot extract ({error})") from None
    inner = tmp / folder.name
    if not inner.is_dir():
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"{archive}: expected a top folder {folder.name}/ inside the archive")
    os.replace(inner, folder)
    shutil.rmtree(tmp)

