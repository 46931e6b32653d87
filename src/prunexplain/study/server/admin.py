"""Admin pages behind the study's token: progress per experiment, stimulus and participant, and the
participant flow (consented, comprehension, completed, excluded and why).

The token is sent as `Authorization: Bearer <token>` (scripts) or, after the login form, in an
HttpOnly, SameSite=Strict cookie (browsers); a participant's session cookie never opens these
pages. Participant ids are shown through autoescaped templates only (templates/admin_*.html).
"""

from __future__ import annotations

import datetime as dt
import math
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

from prunexplain.config import ServeSettings
from prunexplain.study.server.catalog import Study
from prunexplain.study.server.limits import client_key
from prunexplain.study.server.security import ADMIN_COOKIE, completion_code, same_token

router = APIRouter()


def is_admin(request: Request) -> bool:
    header = request.headers.get("authorization", "")
    bearer = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else None
    given = bearer or request.cookies.get(ADMIN_COOKIE)
    return same_token(given, request.app.state.admin_token)


def _page(request: Request, template: str, status: int = 200, **values) -> HTMLResponse:
    html = request.app.state.templates.get_template(template).render(title="Study admin", **values)
    return HTMLResponse(html, status_code=status)


def progress(request: Request) -> dict:
    """Everything the admin pages show, as JSON-ready values; `flow` is the participant flow
    (server/flow.py), as `study export` writes it to flow.json."""
    study: Study = request.app.state.study
    settings: ServeSettings = request.app.state.settings
    store = request.app.state.store
    per_stimulus = store.stimulus_progress(request.app.state.holds)
    k = settings.answers_per_stimulus
    stimuli = [
        {"experiment": s.experiment, "file": s.id, "answers": per_stimulus.get(s.id, (0, 0))[0],
         "reserved": per_stimulus.get(s.id, (0, 0))[1]}
        for s in study.stimuli.values()
    ]
    experiments = []
    for key in study.experiments:
        rows = [s for s in stimuli if s["experiment"] == key]
        experiments.append({"key": key, "stimuli": len(rows), "answers": sum(s["answers"] for s in rows),
                            "target": k * len(rows), "complete": sum(s["answers"] >= k for s in rows)})
    people = store.participant_progress()
    secret = store.secret
    rows = [
        {**row, "completed": row["completed_at"] is not None, "comprehension_passed": bool(row["comprehension_passed"]),
         "started": dt.datetime.fromtimestamp(row["created_at"], dt.UTC).strftime("%Y-%m-%d %H:%M"),
         "code": completion_code(settings.completion_code, secret, row["id"]) if row["completed_at"] else ""}
        for row in people
    ]
    answered, passed = sum(r["checks"] for r in people), sum(r["checks_passed"] for r in people)
    return {
        "participants": {"started": len(people), "completed": sum(r["completed"] for r in rows)},
        "checks": {"answered": answered, "passed": passed, "pass_rate": passed / answered if answered else None},
        "experiments": experiments, "stimuli": stimuli, "participant_rows": rows, "flow": store.flow(),
    }


@router.get("/admin", response_class=HTMLResponse)
def overview(request: Request):
    if not is_admin(request):
        return _page(request, "admin_login.html", 401, failed=False, wait=None)
    return _page(request, "admin_overview.html", p=progress(request))


@router.post("/admin/login")
async def login(request: Request):
    """The login form, rate-limited per client address so the token cannot be guessed by trying."""
    wait = request.app.state.admin_logins.take(client_key(request))
    if wait:
        response = _page(request, "admin_login.html", 429, failed=False, wait=math.ceil(wait))
        response.headers["Retry-After"] = str(math.ceil(wait))
        return response
    token = dict(parse_qsl((await request.body()).decode(errors="replace"))).get("token", "")
    if not same_token(token, request.app.state.admin_token):
        return _page(request, "admin_login.html", 401, failed=True, wait=None)
    response = RedirectResponse("/admin", 303)
    response.set_cookie(ADMIN_COOKIE, token, httponly=True, samesite="strict", path="/")
    return response


@router.get("/admin/stimuli", response_class=HTMLResponse)
def stimuli_page(request: Request):
    if not is_admin(request):
        return _page(request, "admin_login.html", 401, failed=False, wait=None)
    settings: ServeSettings = request.app.state.settings
    return _page(request, "admin_stimuli.html", rows=progress(request)["stimuli"], k=settings.answers_per_stimulus)


@router.get("/admin/api/progress")
def progress_json(request: Request):
    if not is_admin(request):
        return JSONResponse({"detail": "admin token required"}, 401)
    return progress(request)
