"""Mechanical Turk packaging: input CSVs, HIT layouts, and publishing the stimuli to S3.

A HIT shows one stimulus (`${image_url}`, filled from the input CSV's `image_url` column). The
layouts (templates/layout.html, with one instructions template per kind of task) are a `crowd-form`
with one required radio button per answer option: the worker reads the option's label ("Algorithm 1
(left)", "Cassette Player") while the form submits its raw value (`alg1`, `2-cassetteplayer`) under
the name `<group>.label`, so the answer column `Answer.<group>.label` names an option that
`prunexplain analyze` reads like the study's true/false columns. (A `crowd-classifier` would show
workers its categories as they are submitted, i.e. the raw values.) What is asked, which options
there are and their labels come from the experiment spec (`prunexplain.experiments`).

These files also serve MTurk's requester website (a project with the layout, a batch from the input
CSV). Through MTurk's API instead, `prunexplain study mturk create|status|collect|approve`
(`prunexplain.study.hits`) makes one HIT per input row from the same layout, and reads the submitted
`<group>.label` back into the batch-results columns `prunexplain analyze` reads.
"""

from __future__ import annotations

import hashlib
import logging
import mimetypes
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from jinja2 import Environment, PackageLoader, StrictUndefined

from prunexplain.config import UserError
from prunexplain.experiments import NONE, SHOWN_AS, Experiment, display_name
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
    """The HIT layout of an experiment as HTML (MTurk fills `${image_url}`): the options in the
    order the pages lay them out (`Kind.choices`), labelled for people, submitting raw values."""
    kind = experiment.kind
    choices = kind.choices(classes)
    return _TEMPLATES.get_template("layout.html").render(
        crowd_elements=CROWD_ELEMENTS, kind=kind, choices=choices, answer=f"{kind.answer_group}.label",
        instructions=f"{kind.template}.html", shown=SHOWN_AS[experiment.rendering],
        class_names=[display_name(c) for c in classes], none_label=kind.label(NONE, classes),
    )


def write_layout(path: Path, experiment: Experiment, classes: list[str]) -> Path:
    return write_text(path, layout(experiment, classes))


# Workers' browsers fetch the stimuli anonymously: said wherever a bucket is named.
READABLE = ("workers' browsers fetch the images without credentials: the bucket policy must let anyone read "
            "them, or publish with --public-read")


@dataclass
class PublishResult:
    uploaded: int
    unchanged: int
    base_url: str
    public_read: bool = False

    def summary(self) -> str:
        access = ("uploaded objects are public-read" if self.public_read else READABLE)
        return (f"{self.uploaded} files uploaded, {self.unchanged} already there; set "
                f"--set study.url_prefix=\"{self.base_url}\" and rebuild to point the input CSVs at them; {access}")


def publish(study_dir: Path, bucket: str, prefix: str = "", endpoint_url: str | None = None,
            public_read: bool = False) -> PublishResult:
    """Upload every stimulus PNG of the study folder to `s3://bucket/<prefix><path>`.

    Credentials come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, a profile),
    never from the project. A file whose MD5 equals the object's ETag is not sent again, so an
    interrupted upload resumes (with `public_read`, objects already there get the ACL too).

    Workers load the images anonymously, so they must be readable by anyone: through the bucket's
    policy, or with `public_read`, the object ACL `public-read` the original study uploaded with
    (experiments/utils.py, upload_to_s3). Buckets that enforce object ownership refuse ACLs; for
    those, the bucket policy is the way.
    """
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    files = sorted(p for p in Path(study_dir).glob("*/*.png"))
    if not files:
        raise UserError(f"{study_dir}: no stimuli to publish; run `prunexplain study build` first")
    client = boto3.client("s3", endpoint_url=endpoint_url)
    extra = {"ACL": "public-read"} if public_read else {}
    try:
        existing = _etags(client, bucket, prefix)
        uploaded = 0
        for path in files:
            key = prefix + path.relative_to(study_dir).as_posix()
            body = path.read_bytes()
            if existing.get(key) == hashlib.md5(body).hexdigest():
                if public_read:  # published before without the ACL: a rerun with --public-read must open it
                    client.put_object_acl(Bucket=bucket, Key=key, ACL="public-read")
                continue
            content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            client.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type, **extra)
            uploaded += 1
    except NoCredentialsError:
        raise UserError("study publish: no AWS credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY") from None
    except ClientError as error:
        details = error.response["Error"]
        hint = ("; the bucket refuses ACLs: let workers read through its bucket policy instead of --public-read"
                if details.get("Code") == "AccessControlListNotSupported" else "")
        raise UserError(f"study publish: s3://{bucket}: {details.get('Message', error)}{hint}") from None
    except BotoCoreError as error:
        raise UserError(f"study publish: {error}") from None
    host = endpoint_url.rstrip("/") + f"/{bucket}/" if endpoint_url else f"https://{bucket}.s3.amazonaws.com/"
    base = host + prefix
    log.info("published %d files to s3://%s/%s (%d unchanged)%s", uploaded, bucket, prefix, len(files) - uploaded,
             " with ACL public-read" if public_read else "")
    if not public_read:
        log.info("s3://%s/%s: %s", bucket, prefix, READABLE)
    return PublishResult(uploaded, len(files) - uploaded, base, public_read)


def _etags(client, bucket: str, prefix: str) -> dict[str, str]:
    """Key -> MD5 of the objects already under the prefix (single-part uploads: the ETag)."""
    etags = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            etags[item["Key"]] = item["ETag"].strip('"')
    return etags
