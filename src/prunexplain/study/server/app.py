"""The study's FastAPI app: `create_app(study_dir, settings)`; `serve()` runs it with uvicorn.

Participants: `/` consent -> `/instructions` -> `/task` (one picture at a time, plain HTML forms
with keyboard shortcuts) -> `/done` (completion code). A session cookie, set at consent, says who
the participant is; nothing a participant can request returns anyone's answers. A known id is
resumed in another browser only with its resume code or the platform session it started with.
Programs (the load benchmark) use the same session through `/api/task` and `/api/answers`.
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
from prunexplain.runs import StudyFolder
from prunexplain.study.server import admin
from prunexplain.study.server.assign import plan_tasks
from prunexplain.study.server.catalog import Study, inside, load_study, stimulus_key
from prunexplain.study.server.guard import BodyLimit, OriginCheck, SecurityHeaders
from prunexplain.study.server.limits import OpenSessions, RateLimit, client_key
from prunexplain.study.server.pages import SCRIPT, STYLE, environment, instruction_sections
from prunexplain.study.server.security import (
    SESSION_COOKIE,
    admin_token,
    check_token,
    completion_code,
    id_problem,
    resume_code,
    same_resume_code,
)
from prunexplain.study.server.store import Holds, Refused, Store, check_existing

log = logging.getLogger(__name__)

# MTurk's placeholder while a worker only previews a HIT: no assignment to bind a session to yet.
_PREVIEW = "ASSIGNMENT_ID_NOT_AVAILABLE"
_UNAVAILABLE = ("The study cannot save answers at the moment (a problem on the server). Your answers so far "
                "are safe. Please try again in a few minutes.")


class ConsentForm(BaseModel):
    """The consent page's form: the id from the URL (or empty), where it came from, the platform's
    session it came with (`binding`), a resume code when continuing in another browser, the tick.
    Ids are checked by `security.id_problem` first, for a message that says what is wrong."""

    participant: str = ""
    source: str = Field("generated", pattern=r"^(mturk|prolific|generated)$")
    binding: str = Field("", max_length=300)
    resume: str = Field("", max_length=32)
    agree: str = Field(pattern=r"^yes$")


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
    database = StudyFolder(study.folder).database
    check_existing(database)
    token, token_source = admin_token(study.folder)
    check_token(token, token_source)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        with Store(database, clock=clock) as store:
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
    values.setdefault("title", "Picture study")
    if template == "message.html":
        values = {"code": None, "back": None, **values}
    html = request.app.state.templates.get_template(template).render(**values)
    return HTMLResponse(html, status_code=status)


def _message(request: Request, status: int, message: str, back: str | None = None) -> HTMLResponse:
    return render(request, "message.html", status, heading="Sorry", message=message, back=back)


def _session(request: Request) -> str | None:
    return request.app.state.store.session_participant(request.cookies.get(SESSION_COOKIE))


def _done_code(request: Request, participant: str) -> str:
    settings: ServeSettings = request.app.state.settings
    return completion_code(settings.completion_code, request.app.state.secret, participant)


def _participant_routes(app: FastAPI) -> None:
    @app.get("/", response_class=HTMLResponse)
    def consent_page(request: Request):
        """Consent first; a participant id comes from MTurk's workerId or Prolific's PROLIFIC_PID, and
        the platform's assignment (MTurk) or session (Prolific) binds the session to it."""
        source, participant, binding = _from_platform(request.query_params)
        current = _session(request)
        if current and participant in ("", current):
            return RedirectResponse("/task", 303)
        problem = id_problem(participant) or id_problem(binding)
        if problem:
            return _message(request, 422, _id_message(problem))
        settings: ServeSettings = request.app.state.settings
        total = settings.tasks_per_participant + settings.attention_checks
        return render(request, "consent.html", participant=participant, source=source, binding=binding, tasks=total)

    @app.post("/consent")
    async def consent(request: Request):
        try:
            fields = dict(parse_qsl((await request.body()).decode()))
        except UnicodeDecodeError:
            fields = {}
        problem = id_problem(fields.get("participant", "")) or id_problem(fields.get("binding", ""))
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
        return render(request, "resume.html", participant="", source="generated", binding="", failed=False)

    @app.get("/instructions", response_class=HTMLResponse)
    def instructions(request: Request):
        participant = _session(request)
        if participant is None:
            return RedirectResponse("/", 303)
        study: Study = request.app.state.study
        keys = [k for k in request.app.state.store.experiments_of(participant) if k in study.experiments]
        return render(request, "instructions.html", sections=instruction_sections(study.experiments[k] for k in keys),
                      participant=participant, resume=resume_code(request.app.state.secret, participant))

    @app.get("/task", response_class=HTMLResponse)
    def task_page(request: Request):
        participant = _session(request)
        if participant is None:
            return RedirectResponse("/", 303)
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
        participant = _session(request)
        if participant is None:
            return _message(request, 401, "Your session has ended; please start again.", "/")
        try:
            answer = AnswerIn.model_validate(dict(parse_qsl((await request.body()).decode())))
            ack = _record(request, participant, answer)
        except (ValidationError, UnicodeDecodeError):
            return _message(request, 422, "Please choose one of the answers.", "/task")
        except Refused as refused:
            return _message(request, refused.status, str(refused), "/task")
        return RedirectResponse("/done" if ack.done else "/task", 303)

    @app.get("/done", response_class=HTMLResponse)
    def done(request: Request):
        participant = _session(request)
        if participant is None:
            return RedirectResponse("/", 303)
        if not request.app.state.store.is_done(participant):
            return RedirectResponse("/task", 303)
        return render(request, "message.html", heading="Thank you!", message="You have answered every picture.",
                      code=_done_code(request, participant))

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


def _from_platform(query) -> tuple[str, str, str]:
    """(source, participant id, binding) from the study link's query: MTurk's workerId with its
    assignmentId and hitId, or Prolific's PROLIFIC_PID with its SESSION_ID; else a generated id."""
    if query.get("workerId"):
        assignment = query.get("assignmentId", "")
        bound = assignment and assignment != _PREVIEW
        return "mturk", query["workerId"], f"mturk:{assignment}:{query.get('hitId', '')}" if bound else ""
    if query.get("PROLIFIC_PID"):
        session = query.get("SESSION_ID", "")
        return "prolific", query["PROLIFIC_PID"], f"prolific:{session}" if session else ""
    return "generated", "", ""


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
    trusted = _session(request) == participant or (
        bool(form.resume) and same_resume_code(form.resume, request.app.state.secret, participant))
    sessions: OpenSessions = request.app.state.open_sessions
    known = store.known(participant)
    if form.resume and not known:  # a resume code continues a session; it never starts one
        return render(request, "resume.html", 409, participant="", source=form.source, binding="", failed=True)
    if not known and sessions.full(client, lambda p: store.holds_places(p, holds)):
        return _too_many(request, settings.start_minutes * 60,
                         "Too many unfinished sessions were started from your network.")
    rng = random.Random(f"{settings.seed}:{participant}")
    try:
        session = store.start(participant, source, lambda loads: plan_tasks(study, settings, loads, rng), holds,
                              binding=form.binding or None, trusted=trusted)
    except Refused as refused:
        return _refused_start(request, refused, participant, form)
    if session is None:
        return render(request, "message.html", heading="Thank you for your interest",
                      message="Every picture of this study has enough answers; there is nothing left to do.")
    response = RedirectResponse("/task" if session.resumed else "/instructions", 303)
    response.set_cookie(SESSION_COOKIE, session.token, httponly=True, samesite="lax", path="/")
    if not session.resumed:
        sessions.add(client, participant)
    log.info("participant %r (%s) %s", participant, source, "resumed" if session.resumed else "started")
    return response


def _refused_start(request: Request, refused: Refused, participant: str, form: ConsentForm) -> HTMLResponse:
    """409: the id is someone's session, so ask for its resume code; 503: places only held, not gone."""
    if refused.status == 409:
        log.warning("refused to hand participant %r's session to another browser", participant)
        return render(request, "resume.html", 409, participant=participant, source=form.source, binding=form.binding,
                      failed=bool(form.resume))
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
    @app.get("/api/task")
    def api_task(request: Request):
        """The current task as JSON: what the page shows, for programs such as the load benchmark."""
        participant = _session(request)
        if participant is None:
            return JSONResponse({"detail": "no session; consent first"}, 401)
        task = request.app.state.store.current(participant)
        if task is None:
            return {"done": True, "code": _done_code(request, participant)}
        experiment = request.app.state.study.experiments[task.experiment]
        return {
            "done": False, "position": task.position, "total": task.total, "experiment": task.experiment,
            "question": experiment.question, "image": f"/stimuli/{_key_of(request, task.stimulus)}",
            "check": task.check_answer, "options": [option.value for option in experiment.choices],
        }

    @app.post("/api/answers")
    def api_answer(request: Request, answer: AnswerIn):
        participant = _session(request)
        if participant is None:
            return JSONResponse({"detail": "no session; consent first"}, 401)
        try:
            ack = _record(request, participant, answer)
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
