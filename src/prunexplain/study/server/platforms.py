"""Where participants come from and go back to: Prolific, Mechanical Turk, or a plain link. Torch-free.

- Arrival: the study link's query as the server keeps it. MTurk appends `workerId`, `assignmentId`,
  `hitId` and `turkSubmitTo` (ExternalQuestion HITs; a worker who only previews a HIT gets
  `assignmentId=ASSIGNMENT_ID_NOT_AVAILABLE` and no workerId); Prolific appends `PROLIFIC_PID`,
  `STUDY_ID` and `SESSION_ID`.
- Going back: Prolific's completion URL with the code (`completion_link`); MTurk's `externalSubmit`
  form, posted to the `turkSubmitTo` that MTurk gave, which must be one of MTurk's two servers
  (`submit_origin`): anything else is ignored, so a crafted link cannot send a worker's code elsewhere.
- `external_question`: the ExternalQuestion XML that makes a HIT show the study in MTurk's frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, urlsplit
from xml.sax.saxutils import escape

# MTurk's placeholder while a worker only previews a HIT: no assignment to bind a session to yet.
PREVIEW = "ASSIGNMENT_ID_NOT_AVAILABLE"
# The servers an ExternalQuestion form may post its results to (production and sandbox).
SUBMIT_ORIGINS = ("https://www.mturk.com", "https://workersandbox.mturk.com")
# The pages that frame an ExternalQuestion: the worker site (worker.mturk.com) and the older
# www.mturk.com, and the sandbox; externalSubmit may redirect between them, so forms may go there too.
FRAMING_ORIGINS = ("https://www.mturk.com", "https://worker.mturk.com", "https://workersandbox.mturk.com")
EXTERNAL_QUESTION_SCHEMA = (
    "http://mechanicalturk.amazonaws.com/AWSMechanicalTurkDataSchemas/2006-07-14/ExternalQuestion.xsd"
)
MAX_FRAME_HEIGHT = 10_000


@dataclass(frozen=True)
class Arrival:
    """Who opens the study and from where: `source` mturk | prolific | generated, the participant id
    ('' when the server is to make one), the platform's `session` (MTurk assignmentId, Prolific
    SESSION_ID) and `study` (MTurk hitId, Prolific STUDY_ID), MTurk's checked `submit_to` origin
    ('' unless the study runs as an ExternalQuestion), and `preview` (MTurk shows the HIT before a
    worker accepts it: nothing may start)."""

    source: str = "generated"
    participant: str = ""
    session: str = ""
    study: str = ""
    submit_to: str = ""
    preview: bool = False

    @property
    def binding(self) -> str:
        """What binds a session to the platform's (see store.Store.start): the assignment with its
        HIT, or Prolific's session; '' when there is none."""
        if not self.session:
            return ""
        return f"mturk:{self.session}:{self.study}" if self.source == "mturk" else f"{self.source}:{self.session}"

    @property
    def framed(self) -> bool:
        """Shown inside MTurk's frame (an ExternalQuestion HIT, previewed or accepted)."""
        return self.preview or bool(self.submit_to)


def arrival(query) -> Arrival:
    """The study link's query (a mapping) as an Arrival; a preview carries no participant."""
    assignment = query.get("assignmentId", "")
    if assignment == PREVIEW:
        return Arrival("mturk", preview=True, study=query.get("hitId", ""),
                       submit_to=submit_origin(query.get("turkSubmitTo", "")) or "")
    if query.get("workerId"):
        submit_to = submit_origin(query.get("turkSubmitTo", "")) if assignment else None
        return Arrival("mturk", query["workerId"], assignment, query.get("hitId", ""), submit_to or "")
    if query.get("PROLIFIC_PID"):
        return Arrival("prolific", query["PROLIFIC_PID"], query.get("SESSION_ID", ""), query.get("STUDY_ID", ""))
    return Arrival()


def submit_origin(turk_submit_to: str) -> str | None:
    """MTurk's server from `turkSubmitTo` (`https://www.mturk.com/` or the sandbox's), or None for
    anything else: another host, scheme, port, path, query or credentials."""
    try:
        parts = urlsplit(turk_submit_to.strip())
    except ValueError:
        return None
    origin = f"{parts.scheme}://{parts.netloc}"
    if origin not in SUBMIT_ORIGINS or parts.path not in ("", "/") or parts.query or parts.fragment:
        return None
    return origin


def external_submit_url(origin: str) -> str:
    """Where an ExternalQuestion posts `assignmentId` and its answers."""
    if origin not in SUBMIT_ORIGINS:
        raise ValueError(f"{origin!r} is not one of MTurk's servers ({', '.join(SUBMIT_ORIGINS)})")
    return f"{origin}/mturk/externalSubmit"


def completion_link(template: str, code: str) -> str:
    """The completion URL (`ServeSettings.completion_url`) with `{code}` replaced by the code, quoted."""
    return template.replace("{code}", quote(code, safe=""))


def external_question(url: str, frame_height: int = 0) -> str:
    """The ExternalQuestion XML of a HIT that shows `url` (https, as MTurk requires) in a frame of
    `frame_height` pixels (0: as high as the worker's window)."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.netloc:
        raise ValueError(f"{url!r}: MTurk shows only https:// URLs in an ExternalQuestion")
    if not 0 <= frame_height <= MAX_FRAME_HEIGHT:
        raise ValueError(f"frame height {frame_height}: give 0 (the whole window) to {MAX_FRAME_HEIGHT} pixels")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<ExternalQuestion xmlns="{EXTERNAL_QUESTION_SCHEMA}">'
            f"<ExternalURL>{escape(url)}</ExternalURL><FrameHeight>{frame_height}</FrameHeight>"
            "</ExternalQuestion>\n")
