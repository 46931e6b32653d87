"""Secrets of the self-hosted study: the admin token, completion codes, and the headers every page gets."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import unicodedata
from pathlib import Path

from prunexplain.errors import UserError
from prunexplain.runs import StudyFolder
from prunexplain.study.server.platforms import FRAMING_ORIGINS

log = logging.getLogger(__name__)

TOKEN_ENV = "PRUNEXPLAIN_ADMIN_TOKEN"
SESSION_COOKIE = "prx_session"
ADMIN_COOKIE = "prx_admin"
MIN_TOKEN_LENGTH = 16  # a guessable admin token would open every answer; generated ones have 43 characters
MAX_ID_LENGTH = 128

# Control characters (Cc), invisible format characters (Cf: bidi overrides, zero-width), surrogates
# and line separators: an id with them prints differently from what it is in the admin page and the
# export (U+202E turns `abc` into `cba` on screen).
_HIDDEN_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}

# No inline script or style is allowed, so an id or text that slipped through escaping still could
# not run; the pages are never framed, never sniffed as another type, never sent with a referrer.
_POLICY = {"default-src": "'none'", "img-src": "'self'", "style-src": "'self'", "script-src": "'self'",
           "form-action": "'self'", "frame-ancestors": "'none'", "base-uri": "'none'"}


def _policy(**directives: str) -> str:
    return "; ".join(f"{name} {value}" for name, value in {**_POLICY, **directives}.items())


# Pages of an MTurk ExternalQuestion HIT: MTurk's pages frame them, and the last one posts the
# completion code to MTurk's externalSubmit. Only these origins; everything else as above.
FRAMED_POLICY = _policy(**{"frame-ancestors": " ".join(FRAMING_ORIGINS),
                           "form-action": " ".join(["'self'", *FRAMING_ORIGINS])})

HEADERS = {
    "Content-Security-Policy": _policy(),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def admin_token(study_dir: Path) -> tuple[str, str]:
    """(token, where it comes from): $PRUNEXPLAIN_ADMIN_TOKEN, else `study/admin_token`, created
    with mode 0600 on first use so only the account running the server can read it."""
    from_env = os.environ.get(TOKEN_ENV, "").strip()
    if from_env:
        return from_env, f"${TOKEN_ENV}"
    path = StudyFolder(study_dir).admin_token
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            log.warning("%s was readable by others; set its mode to 0600", path)
            path.chmod(0o600)
        token = path.read_text().strip()
        if token:
            return token, str(path)
        path.unlink()
        return admin_token(study_dir)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(32) + "\n")
    log.info("generated the admin token in %s", path)
    return path.read_text().strip(), str(path)


def check_token(token: str, source: str) -> None:
    """A UserError when the admin token is too short to resist guessing."""
    if len(token) < MIN_TOKEN_LENGTH:
        raise UserError(f"the admin token from {source} has {len(token)} characters; use at least "
                        f"{MIN_TOKEN_LENGTH} (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")


def same_token(given: str | None, token: str) -> bool:
    """Constant-time comparison, so response times do not leak how much of a guess was right."""
    return bool(given) and hmac.compare_digest(given.encode(), token.encode())


def completion_code(fixed: str | None, secret: bytes, participant: str) -> str:
    """The study's fixed code, or one per participant that the admin can recompute but nobody can guess."""
    if fixed:
        return fixed
    return hmac.new(secret, f"completion:{participant}".encode(), hashlib.sha256).hexdigest()[:10].upper()


def resume_code(secret: bytes, participant: str) -> str:
    """The code a participant types to continue in another browser, e.g. `K3QJ7-PA2MX`: a keyed hash
    of the id, so it is never stored, cannot be guessed from the id, and the pages can show it again."""
    digest = hmac.new(secret, f"resume:{participant}".encode(), hashlib.sha256).digest()
    code = base64.b32encode(digest).decode()[:10]
    return f"{code[:5]}-{code[5:]}"


def same_resume_code(given: str, secret: bytes, participant: str) -> bool:
    """Compared in constant time; case, spaces and dashes do not matter."""
    typed = "".join(given.split()).replace("-", "").upper()
    return same_token(typed, resume_code(secret, participant).replace("-", ""))


def id_problem(text: str) -> str | None:
    """Why `text` cannot be a participant id (or platform session id), or None when it can."""
    if len(text) > MAX_ID_LENGTH:
        return f"it is longer than {MAX_ID_LENGTH} characters"
    hidden = next((c for c in text if unicodedata.category(c) in _HIDDEN_CATEGORIES), None)
    if hidden is not None:
        return f"it contains an invisible or control character (U+{ord(hidden):04X})"
    return None
