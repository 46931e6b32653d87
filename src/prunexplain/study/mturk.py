"""Mechanical Turk packaging: input CSVs, HIT layouts, and publishing the stimuli to S3.

A HIT shows one stimulus (`${image_url}`, filled from the input CSV's `image_url` column). The
layouts (templates/layout.html, with one instructions template per kind of task) use Amazon's crowd
HTML elements: a `crowd-classifier` named after the kind's answer group (`algorithms`, `classes`)
whose categories are the answer options themselves, so its answer column `Answer.<group>.label`
names an option that `prunexplain analyze` reads like the study's true/false columns. What is
asked and which options there are comes from the experiment spec (`prunexplain.experiments`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import mimetypes
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from jinja2 import Environment, PackageLoader, StrictUndefined

from prunexplain.config import UserError
from prunexplain.experiments import NONE, SHOWN_AS, Experiment
from prunexplain.runs import write_csv, write_text

log = logging.getLogger(__name__)

CROWD_ELEMENTS = "https://assets.crowd.aws/crowd-html-elements.js"

# Autoescaped: class labels and texts go into HTML attributes and elements.
_TEMPLATES = Environment(loader=PackageLoader("prunexplain.study", "templates"), autoescape=True,
                         undefined=StrictUndefined, keep_trailing_newline=True)


def input_rows(files: list[str], url_prefix: str, seed: int) -> list[dict]:
    """MTurk input rows (`image_url`) of one experiment, in an order shuffled from `seed`, so
    neighbouring HITs do not show the same image or model."""
    order = np.random.default_rng([seed, 2]).permutation(len(files))
    return [{"image_url": url_prefix + files[i]} for i in order]


def write_input(path: Path, files: list[str], url_prefix: str, seed: int) -> Path:
    return write_csv(path, input_rows(files, url_prefix, seed))


def layout(experiment: Experiment, classes: list[str]) -> str:
    """The HIT layout of an experiment as HTML (MTurk fills `${image_url}`)."""
    kind = experiment.kind
    categories = json.dumps(kind.options(classes)).replace('"', "'")
    return _TEMPLATES.get_template("layout.html").render(
        crowd_elements=CROWD_ELEMENTS, kind=kind, categories=categories, instructions=f"{kind.template}.html",
        shown=SHOWN_AS[experiment.rendering], classes=classes, none_value=NONE,
    )


def write_layout(path: Path, experiment: Experiment, classes: list[str]) -> Path:
    return write_text(path, layout(experiment, classes))


@dataclass
class PublishResult:
    uploaded: int
    unchanged: int
    base_url: str

    def summary(self) -> str:
        return (f"{self.uploaded} files uploaded, {self.unchanged} already there; set "
                f"--set study.url_prefix=\"{self.base_url}\" and rebuild to point the input CSVs at them")


def publish(study_dir: Path, bucket: str, prefix: str = "", endpoint_url: str | None = None) -> PublishResult:
    """Upload every stimulus PNG of the study folder to `s3://bucket/<prefix><path>`.

    Credentials come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, a profile),
    never from the project. A file whose MD5 equals the object's ETag is not sent again, so an
    interrupted upload resumes.
    """
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    files = sorted(p for p in Path(study_dir).glob("*/*.png"))
    if not files:
        raise UserError(f"{study_dir}: no stimuli to publish; run `prunexplain study build` first")
    client = boto3.client("s3", endpoint_url=endpoint_url)
    try:
        existing = _etags(client, bucket, prefix)
        uploaded = 0
        for path in files:
            key = prefix + path.relative_to(study_dir).as_posix()
            body = path.read_bytes()
            if existing.get(key) == hashlib.md5(body).hexdigest():
                continue
            content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            client.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)
            uploaded += 1
    except NoCredentialsError:
        raise UserError("study publish: no AWS credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY") from None
    except ClientError as error:
        raise UserError(f"study publish: s3://{bucket}: {error.response['Error'].get('Message', error)}") from None
    except BotoCoreError as error:
        raise UserError(f"study publish: {error}") from None
    host = endpoint_url.rstrip("/") + f"/{bucket}/" if endpoint_url else f"https://{bucket}.s3.amazonaws.com/"
    base = host + prefix
    log.info("published %d files to s3://%s/%s (%d unchanged)", uploaded, bucket, prefix, len(files) - uploaded)
    return PublishResult(uploaded, len(files) - uploaded, base)


def _etags(client, bucket: str, prefix: str) -> dict[str, str]:
    """Key -> MD5 of the objects already under the prefix (single-part uploads: the ETag)."""
    etags = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            etags[item["Key"]] = item["ETag"].strip('"')
    return etags
