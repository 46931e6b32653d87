"""The study's FastAPI app: `create_app(study_dir, settings)`; `serve()` runs it with uvicorn.

Participants: `/` consent -> `/instructions` -> `/task` (one picture at a time, plain HTML forms
with keyboard shortcuts) -> `/done` (completion code). A session cookie, set at consent, says who
the participant is; nothing a participant can request returns anyone's answers. Programs (the load
benchmark) use the same session through `/api/task` and `/api/answers`.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import uuid
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
from prunexplain.study.server.pages import SCRIPT, STYLE, environment, instruction_sections
from prunexplain.study.server.security import HEADERS, SESSION_COOKIE, admin_token, completion_code
from prunexplain.study.server.store import Refused, Store, check_existing

log = logging.getLogger(__name__)

_ID = r"^[^\x00-\x1f\x7f]{1,128}$"  # any printable text: ids are escaped wherever they are shown


class ConsentForm(BaseModel):
    """The consent page's form: the id from the URL (or empty), where it came from, and the tick."""

    participant: str = Field("", max_length=128, pattern=r"^[^\x00-\x1f\x7f]*$")
    source: str = Field("generated", pattern=r"^(mturk|prolific|generated)$")
    agree: str = Field(pattern=r"^yes$")


class AnswerIn(BaseModel):
    """One submitted answer; `submission_id` is made by the client, once per answer, and sent again on retry."""

    submission_id: uuid.UUID
    position: int = Field(ge=0, lt=100_000)
    answer: str = Field(min_length=1, max_length=64)


def create_app(study_dir: Path, settings: ServeSettings) -> FastAPI:
    """The app over one study folder. The manifest, the database there (if any) and the admin token
    are checked here, before serving, so a bad study fails with one line; the database is opened in
    the lifespan and closed on shutdown, which records a clean shutdown and checkpoints its WAL."""
    study = load_study(Path(study_dir), settings.experiments)
    database = StudyFolder(study.folder).database
    check_existing(database)
    token, token_source = admin_token(study.folder)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        with Store(database) as store:
            app.state.store = store
            app.state.keys = {stimulus_key(store.secret, s.id): s for s in study.stimuli.values()}
            app.state.key_of = {s.id: key for key, s in app.state.keys.items()}
            yield

    app = FastAPI(title="prunexplain study", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.study, app.state.settings = study, settings
    app.state.admin_token, app.state.admin_token_source = token, token_source
    app.state.templates = environment()

    app.add_middleware(_SecurityHeaders)
    _participant_routes(app)
    _api_routes(app)
    app.include_router(admin.router)
    return app


class _SecurityHeaders:
    """Adds security.HEADERS to every response. Plain ASGI: with Starlette's `@app.middleware`
    wrapper instead, the server spent 1.5x the CPU per answer in the load benchmark."""

    def __init__(self, app) -> None:
        self.app = app
        self.headers = [(name.lower().encode(), value.encode()) for name, value in HEADERS.items()]

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(name, value) for name, value in self.headers if name not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, with_headers)


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
    return completion_code(settings.completion_code, request.app.state.store.secret, participant)


def _participant_routes(app: FastAPI) -> None:
    @app.get("/", response_class=HTMLResponse)
    def consent_page(request: Request):
        """Consent first; a participant id comes from MTurk's workerId or Prolific's PROLIFIC_PID."""
        given = {"mturk": request.query_params.get("workerId"), "prolific": request.query_params.get("PROLIFIC_PID")}
        source, participant = next(((s, p) for s, p in given.items() if p), ("generated", ""))
        current = _session(request)
        if current and participant in ("", current):
            return RedirectResponse("/task", 303)
        if participant and not re.match(_ID, participant):
            return _message(request, 422, "This participant id cannot be used.")
        settings: ServeSettings = request.app.state.settings
        total = settings.tasks_per_participant + settings.attention_checks
        return render(request, "consent.html", participant=participant, source=source, tasks=total)

    @app.post("/consent")
    async def consent(request: Request):
        try:
            form = ConsentForm.model_validate(dict(parse_qsl((await request.body()).decode())))
        except (ValidationError, UnicodeDecodeError):
            return _message(request, 422, "Please tick the box to agree before you continue.", "/")
        participant = form.participant or f"anon-{uuid.uuid4().hex[:12]}"
        source = form.source if form.participant else "generated"
        return _start(request, participant, source)

    @app.get("/instructions", response_class=HTMLResponse)
    def instructions(request: Request):
        participant = _session(request)
        if participant is None:
            return RedirectResponse("/", 303)
        study: Study = request.app.state.study
        keys = request.app.state.store.experiments_of(participant)
        return render(request, "instructions.html", sections=instruction_sections(study.experiments[k] for k in keys))

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
            request, "task.html", number=task.position + 1, total=task.total, question=experiment.question,
            check=check, key=_key_of(request, task.stimulus), submission_id=uuid.uuid4(), position=task.position,
            options=experiment.choices,
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
        return FileResponse(path)

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


def _start(request: Request, participant: str, source: str) -> Response:
    settings: ServeSettings = request.app.state.settings
    study: Study = request.app.state.study
    rng = random.Random(f"{settings.seed}:{participant}")
    token = request.app.state.store.start(
        participant, source, lambda loads: plan_tasks(study, settings, loads, rng), settings.reservation_minutes * 60
    )
    if token is None:
        return render(request, "message.html", heading="Thank you for your interest",
                      message="Every picture of this study has enough answers; there is nothing left to do.")
    response = RedirectResponse("/instructions", 303)
    response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="lax", path="/")
    log.info("participant %r (%s) started", participant, source)
    return response


def _key_of(request: Request, stimulus_id: str) -> str:
    return request.app.state.key_of[stimulus_id]


def _record(request: Request, participant: str, answer: AnswerIn):
    study: Study = request.app.state.study
    return request.app.state.store.record(
        participant, str(answer.submission_id), answer.position, answer.answer,
        lambda key: study.experiments[key].options,
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
