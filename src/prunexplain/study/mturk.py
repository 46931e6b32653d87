"""Mechanical Turk packaging: input CSVs, HIT layouts, and publishing the stimuli to S3.

A HIT shows one stimulus (`${image_url}`, filled from the input CSV's `image_url` column). The
layouts use Amazon's crowd HTML elements: a `crowd-classifier` named `algorithms` (experiment 1)
or `classes` (experiment 2) whose categories are the answer options themselves, so its answer
column `Answer.<name>.label` names an option that `prunexplain analyze` reads like the study's
true/false columns.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import mimetypes
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prunexplain.config import UserError
from prunexplain.runs import write_csv, write_text

log = logging.getLogger(__name__)

CROWD_ELEMENTS = "https://assets.crowd.aws/crowd-html-elements.js"

EXP1_QUESTION = "Which algorithm is more reasonable?"
EXP2_QUESTION = "What is on the picture?"

_EXP1_INSTRUCTIONS = """
<p>Two algorithms looked at the same photo and both named the same class (the title says which).
Beside the original photo in the middle, each algorithm's picture shows which parts of the photo
it relied on for that decision: <b>{shown}</b>.</p>
<p>Judge which algorithm relied on parts that make more sense for recognising the class.</p>
<ul>
  <li><b>alg1</b>: Algorithm 1, the picture on the left, is more reasonable.</li>
  <li><b>alg2</b>: Algorithm 2, the picture on the right, is more reasonable.</li>
  <li><b>none</b>: both are equally reasonable (or equally unreasonable).</li>
</ul>
"""

_SHOWN = {
    "occlusion": "only the parts it used most are visible, everything else is black",
    "heatmap": "red marks the parts it used most, blue the parts it hardly used",
}

_EXP2_INSTRUCTIONS = """
<p>Only a small part of a photo is visible; the rest is black. The visible part is what a computer
program looked at most when it recognised the photo.</p>
<p>Choose the class you think the photo shows. If you cannot tell, choose <b>none</b>.</p>
<p>Classes: {classes}.</p>
"""


def input_rows(files: list[str], url_prefix: str, seed: int) -> list[dict]:
    """MTurk input rows (`image_url`) of one experiment, in an order shuffled from `seed`, so
    neighbouring HITs do not show the same image or model."""
    order = np.random.default_rng([seed, 2]).permutation(len(files))
    return [{"image_url": url_prefix + files[i]} for i in order]


def write_input(path: Path, files: list[str], url_prefix: str, seed: int) -> Path:
    return write_csv(path, input_rows(files, url_prefix, seed))


def layout(kind: str, variant: str, classes: list[str]) -> str:
    """The HIT layout of an experiment as HTML (MTurk fills `${image_url}`)."""
    if kind == "exp1":
        name, question, options = "algorithms", EXP1_QUESTION, ["alg1", "alg2", "none"]
        instructions = _EXP1_INSTRUCTIONS.format(shown=_SHOWN[variant])
    else:
        name, question, options = "classes", EXP2_QUESTION, [*classes, "none"]
        instructions = _EXP2_INSTRUCTIONS.format(classes=html.escape(", ".join(classes)))
    categories = html.escape(json.dumps(options).replace('"', "'"))
    return f"""<script src="{CROWD_ELEMENTS}"></script>
<crowd-form answer-format="flatten-objects">
  <crowd-classifier name="{name}" categories="{categories}" header="{html.escape(question)}">
    <classification-target>
      <img src="${{image_url}}" alt="stimulus" style="max-width: 100%; max-height: 70vh">
    </classification-target>
    <full-instructions header="Instructions">{instructions}</full-instructions>
    <short-instructions>{instructions}</short-instructions>
  </crowd-classifier>
</crowd-form>
"""


def write_layout(path: Path, kind: str, variant: str, classes: list[str]) -> Path:
    return write_text(path, layout(kind, variant, classes))


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
    base = (endpoint_url.rstrip("/") + f"/{bucket}/" if endpoint_url else f"https://{bucket}.s3.amazonaws.com/") + prefix
    log.info("published %d files to s3://%s/%s (%d unchanged)", uploaded, bucket, prefix, len(files) - uploaded)
    return PublishResult(uploaded, len(files) - uploaded, base)


def _etags(client, bucket: str, prefix: str) -> dict[str, str]:
    """Key -> MD5 of the objects already under the prefix (single-part uploads: the ETag)."""
    etags = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            etags[item["Key"]] = item["ETag"].strip('"')
    return etags
