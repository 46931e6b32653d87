"""The study's FastAPI app: `create_app(study_dir, settings)`; `serve()` runs it with uvicorn.

Participants: `/` consent -> `/instructions` -> `/comprehension` (questions about the task, two
tries; `serve.comprehension`) -> `/task` (one picture at a time, plain HTML forms with keyboard
shortcuts) -> `/done` (completion code; with `serve.completion_url` a link there and a redirect after
a few seconds, in an MTurk ExternalQuestion HIT a form that submits the HIT). Failing the
comprehension check twice ends the study on a page that says so (no code), excludes the participant
for good and releases their tasks. A session cookie, set at consent, says who the participant is;
nothing a participant can request returns anyone's answers. A known id is resumed in another browser
only with its resume code or the platform session it started with.

Platforms (platforms.py): Prolific's PROLIFIC_PID, STUDY_ID and SESSION_ID and MTurk's workerId,
hitId and assignmentId are recorded with the participant. A worker previewing an MTurk HIT
(`assignmentId=ASSIGNMENT_ID_NOT_AVAILABLE`) sees what the study is, and nothing starts. Pages of an
ExternalQuestion HIT (a valid `turkSubmitTo`) may be framed by MTurk (security.FRAMED_POLICY) and
their session cookie is `SameSite=None; Secure; Partitioned`, the only kind a browser sends from
inside another site's frame (such HITs are served over https, as MTurk requires).

Programs (the load benchmark) use the same session through `/api/comprehension`, `/api/task` and
`/api/answers`.

Before serving, a frozen pre-registration (study/preregistration.md) must still have its hash
(preregistration.check_frozen); the study's first answer records that hash in the database.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field, ValidationError

from prunexplain.config import ServeSettings
from prunexplain.errors import UserError
from prunexplain.runs import StudyFolder
from prunexplain.study.preregistration import check_frozen, frozen
from prunexplain.study.server import admin, comprehension, platforms
from prunexplain.study.server.assign import plan_tasks
from prunexplain.study.server.catalog import Study, inside, load_study, stimulus_key
from prunexplain.study.server.guard import BodyLimit, OriginCheck, SecurityHeaders
from prunexplain.study.server.limits import OpenSessions, RateLimit, client_key
from prunexplain.study.server.pages import SCRIPT, STYLE, environment, instruction_sections
from prunexplain.study.server.platforms import Arrival
from prunexplain.study.server.security import (
    FRAMED_POLICY,
    SESSION_COOKIE,
    admin_token,
    check_token,
    completion_code,
    id_problem,
    resume_code,
    same_resume_code,
)
from prunexplain.study.server.store import COMPREHENSION_TRIES, Holds, Platform, Refused, Standing, Store, recorded

log = logging.getLogger(__name__)

# meta key of the frozen pre-registration's SHA-256, written with the study's first answer
PREREGISTERED = "preregistration_sha256"
REDIRECT_SECONDS = 5  # how long /done shows the code before it goes to the completion URL
_UNAVAILABLE = ("The study cannot save answers at the moment (a problem on the server). Your answers so far "
                "are safe. Please try again in a few minutes.")


class ConsentForm(BaseModel):
    """The consent page's form: the id from the URL (or empty), where it came from, the platform's
    session and study it came with (platforms.Arrival), MTurk's server to submit to, a resume code
    when continuing in another browser, the tick. Ids are checked by `security.id_problem` first,
    for a message that says what is wrong."""

    participant: str = ""
    source: str = Field("generated", pattern=r"^(mturk|prolific|generated)$")
    session_id: str = ""
    study_id: str = ""
    submit_to: str = Field("", max_length=100)
    resume: str = Field("", max_length=32)
    agree: str = Field(pattern=r"^yes$")

    def arrival(self) -> Arrival:
        """The platform's ids as the form gives them; none for a generated id, and MTurk's server only
        when it is one of MTurk's (else ignored)."""
        if not self.participant:
            return Arrival()
        submit_to = platforms.submit_origin(self.submit_to) if self.source == "mturk" else None
        return Arrival(self.source, self.participant, self.session_id, self.study_id, submit_to or "")


class ComprehensionIn(BaseModel):
    """Answers to the comprehension questions: question id -> chosen value."""

    answers: dict[str, str] = Field(max_length=20)


class AnswerIn(BaseModel):
    """One submitted answer; `submission_id` is made by the client, once per answer, and sent again on retry."""

    submission_id: uuid.UUID
    position: int = Field(ge=0, lt=100_000)
    answer: str = Field(min_length=1, max_length=64)


def create_app(study_dir: Path, settings: ServeSettings, clock: Callable[[], float] = time.time) -> FastAPI:
    """The app over one study folder. The manifest, the database there (if any) and the admin token
    are checked here, before serving, so a bad study fails with one line; the database is opened in
    the lifespan and closed on shutdown, which records a clean shutdown and checkpoints its WAL.
    Tasks of stimuli no longer served (an experiment left out this time) are released at start.
    `clock` drives reservations and rate limits, so tests move time instead of waiting."""
    study = load_study(Path(study_dir), settings.experiments)
    folder = StudyFolder(study.folder)
    answers, meta = recorded(folder.database)  # checked as the Store will find it, read only
    check_frozen(folder, answered=answers > 0)
    plan = frozen(folder)
    _check_first_answers_plan(folder, plan, meta)
    token, token_source = admin_token(study.folder)
    check_token(token, token_source)
    first = {PREREGISTERED: plan["sha256"]} if plan else {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        with Store(folder.database, clock=clock, at_first_answer=first) as store:
            released = store.release(set(study.stimuli))
            if released:
                log.warning("released %d unanswered tasks of stimuli not served now (experiments: %s)",
                            released, ", ".join(study.experiments))
            app.state.store, app.state.secret = store, store.secret
            app.state.keys = {stimulus_key(store.secret, s.id): s for s in study.stimuli.values()}
            app.state.key_of = {s.id: key for key, s in app.state.keys.items()}
            yield

    app = FastAPI(title="prunexplain study", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.study, app.state.settings = study, settings
    app.state.admin_token, app.state.admin_token_source = token, token_source
    app.state.templates = environment()
    app.state.holds = Holds(settings.reservation_minutes * 60, settings.start_minutes * 60)
    app.state.consents = RateLimit(settings.consents_per_minute, clock)
    app.state.admin_logins = RateLimit(settings.admin_logins_per_minute, clock)
    app.state.open_sessions = OpenSessions(settings.sessions_per_client)

    # the last added runs first: sizes are checked before anything reads a body
    app.add_middleware(SecurityHeaders)
    app.add_middleware(OriginCheck)
    app.add_middleware(BodyLimit, limit=settings.max_request_bytes)
    app.add_exception_handler(sqlite3.OperationalError, _store_unavailable)
    _participant_routes(app)
    _api_routes(app)
    app.include_router(admin.router)
    return app


def _check_first_answers_plan(folder: StudyFolder, plan: dict | None, meta: dict[str, str]) -> None:
    """The manifest must still record the pre-registration the first answer was collected under: a
    plan frozen again after that (file and hash changed together) is refused like a changed file."""
    first = meta.get(PREREGISTERED)
    if first and (plan or {}).get("sha256") != first:
        now = f"now {plan['sha256'][:12]}" if plan else "now none"
        raise UserError(f"{folder.manifest}: the pre-registration was frozen again after the first answer (SHA-256 "
                        f"{first[:12]} when answering began, {now}); restore the plan the answers were collected under")


async def _store_unavailable(request: Request, error: Exception) -> Response:
    """A full disk (or another failing write) is a 503 with a page that says what to do, not a 500;
    the failed transaction was rolled back, so the answer was not acknowledged and a retry is safe."""
    log.error("the study database failed on %s %s: %s", request.method, request.url.path, error)
    headers = {"Retry-After": "60"}
    if request.url.path.startswith("/api/"):
        return JSONResponse({"detail": _UNAVAILABLE}, 503, headers=headers)
    response = _message(request, 503, _UNAVAILABLE, "/task")
    response.headers.update(headers)
    return response


def render(request: Request, template: str, status: int = 200, **values) -> HTMLResponse:
    """A page; pages of an MTurk ExternalQuestion HIT (`_framed`) with the policy that lets MTurk frame them."""
    values.setdefault("title", "Picture study")
    if template == "message.html":
        values = {"code": None, "back": None, "redirect": None, "submit": None, **values}
    html = request.app.state.templates.get_template(template).render(**values)
    response = HTMLResponse(html, status_code=status)
    if _framed(request):
        response.headers["Content-Security-Policy"] = FRAMED_POLICY
    return response


def _framed(request: Request) -> bool:
    """The page is shown in MTurk's frame: the link or form says so, or the participant came that way."""
    standing = getattr(request.state, "standing", None)
    return getattr(request.state, "framed", False) or bool(standing and standing.submit_to)


def _message(request: Request, status: int, message: str, back: str | None = None) -> HTMLResponse:
    return render(request, "message.html", status, heading="Sorry", message=message, back=back)


def _session(request: Request) -> Standing | None:
    """The participant of the request's session cookie (kept on the request for `render`)."""
    standing = request.app.state.store.standing(request.cookies.get(SESSION_COOKIE))
    request.state.standing = standing
    return standing


def _done_code(request: Request, participant: str) -> str:
    settings: ServeSettings = request.app.state.settings
    return completion_code(settings.completion_code, request.app.state.secret, participant)


def _questions(request: Request, participant: str) -> list[comprehension.Question]:
    """The comprehension questions about the experiments of the participant's tasks."""
    study: Study = request.app.state.study
    keys = request.app.state.store.experiments_of(participant)
    return comprehension.questions(study.experiments[k] for k in keys if k in study.experiments)


def _needs_check(request: Request, standing: Standing) -> bool:
    """Whether the participant must pass the comprehension check before a task: asked of everyone
    who has not opened a task yet (one who started while the check was off carries on)."""
    settings: ServeSettings = request.app.state.settings
    return settings.comprehension and not standing.passed and not standing.started and standing.excluded is None


def _excluded_page(request: Request, standing: Standing) -> HTMLResponse:
    """The polite end for a participant who may not take part: no code, and what to do on the platform."""
    where = {
        "prolific": " Please return the study on Prolific (do not submit it: there is no completion code), "
                    "so that your place goes to someone else.",
        "mturk": " Please return the HIT on Mechanical Turk (do not submit it), so that it goes to someone else.",
    }.get(standing.source, " You can close this page now.")
    return render(request, "message.html", 403, heading="Thank you for your interest",
                  message="The answers to the questions about the instructions were not right in both tries, so "
                          f"you cannot take part in this study.{where}")


def _gate(request: Request, standing: Standing) -> Response | None:
    """Where a participant goes instead of the tasks: the end page when excluded, the comprehension
    check while it is due; None when they may answer."""
    if standing.excluded is not None:
        return _excluded_page(request, standing)
    if _needs_check(request, standing) and _questions(request, standing.id):
        return RedirectResponse("/comprehension", 303)
    return None


def _api_gate(request: Request, standing: Standing) -> JSONResponse | None:
    if standing.excluded is not None:
        return JSONResponse({"detail": f"you cannot take part in this study ({standing.excluded})",
                             "excluded": standing.excluded}, 403)
    if _needs_check(request, standing) and _questions(request, standing.id):
        return JSONResponse({"detail": "pass the comprehension check first (/api/comprehension)"}, 403)
    return None


def _participant_routes(app: FastAPI) -> None:
    @app.get("/", response_class=HTMLResponse)
    def consent_page(request: Request):
        """Consent first; a participant id comes from MTurk's workerId or Prolific's PROLIFIC_PID, and
        the platform's assignment (MTurk) or session (Prolific) binds the session to it. A worker who
        only previews an MTurk HIT sees what the study is; nothing is started or reserved."""
        arrival = platforms.arrival(request.query_params)
        request.state.framed = arrival.framed
        if arrival.preview:
            return _preview(request)
        current = _session(request)
        if current and arrival.participant in ("", current.id):
            return RedirectResponse("/task", 303)
        problem = id_problem(arrival.participant) or id_problem(arrival.session) or id_problem(arrival.study)
        if problem:
            return _message(request, 422, _id_message(problem))
        settings: ServeSettings = request.app.state.settings
        total = settings.tasks_per_participant + settings.attention_checks
        return render(request, "consent.html", arrival=arrival, tasks=total, comprehension=settings.comprehension)

    @app.post("/consent")
    async def consent(request: Request):
        try:
            fields = dict(parse_qsl((await request.body()).decode()))
        except UnicodeDecodeError:
            fields = {}
        request.state.framed = bool(platforms.submit_origin(fields.get("submit_to", "")))
        problem = next(filter(None, (id_problem(fields.get(name, "")) for name in ("participant", "session_id",
                                                                                   "study_id"))), None)
        if problem:
            return _message(request, 422, _id_message(problem), "/")
        try:
            form = ConsentForm.model_validate(fields)
        except ValidationError:
            return _message(request, 422, "Please tick the box to agree before you continue.", "/")
        wait = request.app.state.consents.take(client_key(request))
        if wait:
            return _too_many(request, wait, "Too many attempts from your network in a short time.")
        participant = form.participant or f"anon-{uuid.uuid4().hex[:12]}"
        source = form.source if form.participant else "generated"
        return _start(request, participant, source, form)

    @app.get("/resume", response_class=HTMLResponse)
    def resume_page(request: Request):
        """For a participant whose id was generated (no platform link): id and resume code by hand."""
        return render(request, "resume.html", arrival=Arrival(), failed=False)

    @app.get("/instructions", response_class=HTMLResponse)
    def instructions(request: Request):
        standing = _session(request)
        if standing is None:
            return RedirectResponse("/", 303)
        if standing.excluded is not None:
            return _excluded_page(request, standing)
        study: Study = request.app.state.study
        keys = [k for k in request.app.state.store.experiments_of(standing.id) if k in study.experiments]
        experiments = [study.experiments[k] for k in keys]
        check = _needs_check(request, standing) and bool(comprehension.questions(experiments))
        return render(request, "instructions.html", sections=instruction_sections(experiments),
                      shown_as=comprehension.shown_as(experiments), check=check,
                      start="/comprehension" if check else "/task", participant=standing.id,
                      resume=resume_code(request.app.state.secret, standing.id))

    @app.get("/comprehension", response_class=HTMLResponse)
    def comprehension_page(request: Request):
        standing = _session(request)
        if standing is None:
            return RedirectResponse("/", 303)
        return _comprehension(request, standing, {}, fresh=True)

    @app.post("/comprehension")
    async def comprehension_form(request: Request):
        """The comprehension check's form: right -> the tasks; wrong -> the page again, saying which
        answers were wrong; wrong in the last try -> the end (excluded)."""
        standing = _session(request)
        if standing is None:
            return _message(request, 401, "Your session has ended; please start again.", "/")
        try:
            answers = dict(parse_qsl((await request.body()).decode()))
        except UnicodeDecodeError:
            answers = {}
        return _comprehension(request, standing, answers, fresh=False)

    @app.get("/task", response_class=HTMLResponse)
    def task_page(request: Request):
        standing = _session(request)
        if standing is None:
            return RedirectResponse("/", 303)
        if (instead := _gate(request, standing)) is not None:
            return instead
        participant = standing.id
        task = request.app.state.store.current(participant)
        if task is None:
            return RedirectResponse("/done", 303)
        experiment = request.app.state.study.experiments[task.experiment]
        check = experiment.label(task.check_answer) if task.check_answer else None
        return render(
            request, "task.html", number=task.number, total=task.total, question=experiment.question,
            check=check, key=_key_of(request, task.stimulus), submission_id=uuid.uuid4(), position=task.position,
            options=experiment.choices, participant=participant,
            resume=resume_code(request.app.state.secret, participant),
        )

    @app.post("/task")
    async def answer_form(request: Request):
        """The task page's form; its submission id was written into the page, so a re-sent form is
        recognised as the same answer."""
        standing = _session(request)
        if standing is None:
            return _message(request, 401, "Your session has ended; please start again.", "/")
        if standing.excluded is not None:
            return _excluded_page(request, standing)
        if _needs_check(request, standing) and _questions(request, standing.id):
            return _message(request, 403, "Please answer the questions about the instructions first.",
                            "/comprehension")
        try:
            answer = AnswerIn.model_validate(dict(parse_qsl((await request.body()).decode())))
            ack = _record(request, standing.id, answer)
        except (ValidationError, UnicodeDecodeError):
            return _message(request, 422, "Please choose one of the answers.", "/task")
        except Refused as refused:
            return _message(request, refused.status, str(refused), "/task")
        return RedirectResponse("/done" if ack.done else "/task", 303)

    @app.get("/done", response_class=HTMLResponse)
    def done(request: Request):
        """The completion code; with `completion_url` also a link there and a redirect after a few
        seconds (a meta refresh: the pages run no inline script); for an MTurk ExternalQuestion HIT
        the form that submits the assignment with the code."""
        standing = _session(request)
        if standing is None:
            return RedirectResponse("/", 303)
        if standing.excluded is not None:
            return _excluded_page(request, standing)
        if not request.app.state.store.is_done(standing.id):
            return RedirectResponse("/task", 303)
        settings: ServeSettings = request.app.state.settings
        code = _done_code(request, standing.id)
        submit, link = None, None
        if standing.submit_to and standing.session_id:  # an ExternalQuestion HIT: submitted, not redirected
            submit = {"url": platforms.external_submit_url(standing.submit_to), "assignment": standing.session_id}
        elif settings.completion_url:
            link = platforms.completion_link(settings.completion_url, code)
        return render(request, "message.html", heading="Thank you!", message="You have answered every picture.",
                      code=code, redirect=link, seconds=REDIRECT_SECONDS, submit=submit)

    @app.get("/stimuli/{key}")
    def stimulus(request: Request, key: str):
        """A picture, by its opaque key, to participants and admins only; the file must still
        resolve inside the study folder when it is served (it may have been replaced by a link)."""
        found = request.app.state.keys.get(key)
        allowed = _session(request) is not None or admin.is_admin(request)
        path = inside(request.app.state.study.folder, found.id) if found and allowed else None
        if path is None:
            return Response("not found", 404, media_type="text/plain")
        response = FileResponse(path, stat_result=path.stat())
        del response.headers["last-modified"], response.headers["etag"]  # file times give the build order away
        return response

    @app.get("/static/study.js")
    def script():
        return Response(SCRIPT, media_type="text/javascript")

    @app.get("/static/study.css")
    def style():
        return Response(STYLE, media_type="text/css")

    @app.get("/favicon.ico")
    def favicon():
        return Response(status_code=204)  # browsers ask for it; a 404 would only fill their logs

    @app.get("/healthz")
    def health():
        return {"ok": True}


def _preview(request: Request) -> HTMLResponse:
    """What an MTurk worker sees before accepting the HIT: the study, how many pictures, the questions."""
    settings: ServeSettings = request.app.state.settings
    study: Study = request.app.state.study
    examples = {}
    for experiment in study.experiments.values():
        examples.setdefault(experiment.question, [option.label for option in experiment.choices])
    return render(request, "preview.html", tasks=settings.tasks_per_participant + settings.attention_checks,
                  examples=examples, comprehension=settings.comprehension)


def _comprehension(request: Request, standing: Standing, answers: dict[str, str], fresh: bool) -> Response:
    """The comprehension page, or where the participant goes instead; with `answers` (not `fresh`) one
    attempt graded and recorded first."""
    if standing.excluded is not None:
        return _excluded_page(request, standing)
    asked = _questions(request, standing.id)
    if not _needs_check(request, standing) or not asked:
        return RedirectResponse("/task", 303)
    values = {"questions": asked, "chosen": answers, "wrong": [], "missing": False,
              "tries_left": COMPREHENSION_TRIES - standing.attempts}
    if fresh:
        return render(request, "comprehension.html", **values)
    if any(q.id not in answers for q in asked):
        return render(request, "comprehension.html", 422, **{**values, "missing": True})
    wrong = comprehension.wrong(asked, answers)
    standing = request.app.state.store.comprehension(standing.id, passed=not wrong)
    if standing.passed:
        return RedirectResponse("/task", 303)
    if standing.excluded is not None:
        return _excluded_page(request, standing)
    return render(request, "comprehension.html", 200, **{**values, "wrong": wrong,
                                                          "tries_left": COMPREHENSION_TRIES - standing.attempts})


def _id_message(problem: str) -> str:
    return (f"This participant id cannot be used: {problem}. Please open the study with the link from the "
            "platform you came from, unchanged.")


def _too_many(request: Request, wait: float, why: str) -> HTMLResponse:
    seconds = math.ceil(wait)
    response = _message(request, 429, f"{why} Please wait about {seconds} seconds and try again.", "/")
    response.headers["Retry-After"] = str(seconds)
    return response


def _start(request: Request, participant: str, source: str, form: ConsentForm) -> Response:
    """Start or resume `participant` and set their session cookie; the pages that refuse say why."""
    settings: ServeSettings = request.app.state.settings
    study: Study = request.app.state.study
    store: Store = request.app.state.store
    client, holds = client_key(request), request.app.state.holds
    current = _session(request)
    trusted = (current is not None and current.id == participant) or (
        bool(form.resume) and same_resume_code(form.resume, request.app.state.secret, participant))
    sessions: OpenSessions = request.app.state.open_sessions
    known = store.known(participant)
    arrival = form.arrival()
    if form.resume and not known:  # a resume code continues a session; it never starts one
        return render(request, "resume.html", 409, arrival=Arrival(form.source), failed=True)
    if not known and sessions.full(client, lambda p: store.holds_places(p, holds)):
        return _too_many(request, settings.start_minutes * 60,
                         "Too many unfinished sessions were started from your network.")
    rng = random.Random(f"{settings.seed}:{participant}")
    platform = Platform(arrival.study or None, arrival.session or None, arrival.submit_to or None)
    try:
        session = store.start(participant, source, lambda loads: plan_tasks(study, settings, loads, rng), holds,
                              binding=arrival.binding or None, trusted=trusted, platform=platform)
    except Refused as refused:
        return _refused_start(request, refused, arrival, form)
    if session is None:
        return render(request, "message.html", heading="Thank you for your interest",
                      message="Every picture of this study has enough answers; there is nothing left to do.")
    response = RedirectResponse("/task" if session.resumed else "/instructions", 303)
    if arrival.submit_to:  # in MTurk's frame: a cookie of a third-party frame (see the module's docstring)
        response.raw_headers.append((b"set-cookie", f"{SESSION_COOKIE}={session.token}; HttpOnly; Path=/; "
                                                    "SameSite=None; Secure; Partitioned".encode()))
    else:
        response.set_cookie(SESSION_COOKIE, session.token, httponly=True, samesite="lax", path="/")
    if not session.resumed:
        sessions.add(client, participant)
    log.info("participant %r (%s) %s", participant, source, "resumed" if session.resumed else "started")
    return response


def _refused_start(request: Request, refused: Refused, arrival: Arrival, form: ConsentForm) -> HTMLResponse:
    """409: the id is someone's session, so ask for its resume code; 503: places only held, not gone."""
    if refused.status == 409:
        log.warning("refused to hand participant %r's session to another browser", arrival.participant)
        return render(request, "resume.html", 409, arrival=arrival, failed=bool(form.resume))
    settings: ServeSettings = request.app.state.settings
    minutes = math.ceil(settings.start_minutes)
    response = render(request, "message.html", 503, heading="Please come back a little later",
                      message=f"Every picture still free is reserved by people taking part right now. Places "
                              f"that are not used come free again; please try again in about {minutes} minutes.")
    response.headers["Retry-After"] = str(minutes * 60)
    return response


def _key_of(request: Request, stimulus_id: str) -> str:
    return request.app.state.key_of[stimulus_id]


def _record(request: Request, participant: str, answer: AnswerIn):
    study: Study = request.app.state.study
    return request.app.state.store.record(
        participant, str(answer.submission_id), answer.position, answer.answer,
        lambda key: study.experiments[key].options if key in study.experiments else (),
    )


def _api_routes(app: FastAPI) -> None:
    @app.get("/api/comprehension")
    def api_questions(request: Request):
        """The comprehension questions as JSON (without their answers), for programs."""
        standing = _session(request)
        if standing is None:
            return JSONResponse({"detail": "no session; consent first"}, 401)
        asked = _questions(request, standing.id) if _needs_check(request, standing) else []
        return {"required": bool(asked), "passed": standing.passed, "attempts": standing.attempts,
                "tries": COMPREHENSION_TRIES, "excluded": standing.excluded,
                "questions": [q.as_json() for q in asked]}

    @app.post("/api/comprehension")
    def api_comprehension(request: Request, given: ComprehensionIn):
        """One attempt at the comprehension check, graded and recorded as the page's form is."""
        standing = _session(request)
        if standing is None:
            return JSONResponse({"detail": "no session; consent first"}, 401)
        if standing.excluded is not None:
            return _api_gate(request, standing)
        asked = _questions(request, standing.id) if _needs_check(request, standing) else []
        if not asked:
            return {"passed": True, "wrong": [], "attempts": standing.attempts, "excluded": None}
        missing = [q.id for q in asked if q.id not in given.answers]
        if missing:
            return JSONResponse({"detail": f"answer every question (missing: {', '.join(missing)})"}, 422)
        wrong = comprehension.wrong(asked, given.answers)
        standing = request.app.state.store.comprehension(standing.id, passed=not wrong)
        return {"passed": standing.passed, "wrong": wrong, "attempts": standing.attempts,
                "excluded": standing.excluded}

    @app.get("/api/task")
    def api_task(request: Request):
        """The current task as JSON: what the page shows, for programs such as the load benchmark."""
        standing = _session(request)
        if standing is None:
            return JSONResponse({"detail": "no session; consent first"}, 401)
        if (refused := _api_gate(request, standing)) is not None:
            return refused
        task = request.app.state.store.current(standing.id)
        if task is None:
            return {"done": True, "code": _done_code(request, standing.id)}
        experiment = request.app.state.study.experiments[task.experiment]
        return {
            "done": False, "position": task.position, "total": task.total, "experiment": task.experiment,
            "question": experiment.question, "image": f"/stimuli/{_key_of(request, task.stimulus)}",
            "check": task.check_answer, "options": [option.value for option in experiment.choices],
        }

    @app.post("/api/answers")
    def api_answer(request: Request, answer: AnswerIn):
        standing = _session(request)
        if standing is None:
            return JSONResponse({"detail": "no session; consent first"}, 401)
        if (refused := _api_gate(request, standing)) is not None:
            return refused
        try:
            ack = _record(request, standing.id, answer)
        except Refused as refused:
            return JSONResponse({"detail": str(refused)}, refused.status)
        return {"status": ack.status, "position": ack.position, "done": ack.done}


def serve(study_dir: Path, settings: ServeSettings, access_log: bool = False) -> None:
    """Run the study with uvicorn until stopped (Ctrl-C); the store is closed on the way out."""
    import uvicorn

    app = create_app(study_dir, settings)
    base = f"http://{settings.host}:{settings.port}"
    log.info("participants: %s/ (add ?workerId=... or ?PROLIFIC_PID=...)", base)
    log.info("admin: %s/admin, token from %s", base, app.state.admin_token_source)
    uvicorn.run(app, host=settings.host, port=settings.port, access_log=access_log, log_config=None)
