"""The annotation web app (FastAPI): server-rendered pages (Jinja2, autoescaped), one small static script, a JSON API.

Pages: ``/a/{token}`` (an annotator's current item; every task is a mode of this one page), ``/stats/{token}``
(admin only). API (every call needs ``Authorization: Bearer TOKEN``): ``GET /api/next``, ``GET /api/assignments/{id}``,
``POST /api/submit``, ``POST /api/undo``, ``GET /api/progress``, ``GET /api/stats`` (admin).

Every error is JSON ``{"error": message}`` with a 4xx status; request bodies over ``max_body_bytes`` are refused
(413) while being read. Every response carries a Content-Security-Policy that allows only this server's own script
and style sheet (no inline script, no other origin), and ``Referrer-Policy: no-referrer`` (the page URL holds a token).
"""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.exceptions import HTTPException as StarletteHTTPException

from preftune.data.formats import prompt_text
from preftune.feedback.store import Assignment, FeedbackError, FeedbackStore, Unauthorized

HERE = Path(__file__).parent
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'none'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                    "X-Frame-Options": "DENY", "Cache-Control": "no-store"}
DEFAULT_MAX_BODY = 64 * 1024


class BodyTooLarge(FeedbackError):
    status = 413


class BadRequest(FeedbackError):
    status = 400


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


async def _json_body(request: Request, limit: int) -> dict:
    """The request's JSON object, read with a size limit (a declared length over it is refused before reading)."""
    declared = request.headers.get("content-length")
    if declared is not None and not declared.isdigit():
        raise BadRequest("Content-Length must be a number of bytes")
    if declared is not None and int(declared) > limit:
        raise BodyTooLarge(f"request body over {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"request body over {limit} bytes")
        chunks.append(chunk)
    try:
        raw = b"".join(chunks)
        data = json.loads(raw) if raw.strip() else {}  # no body: an empty object (POST /api/undo needs nothing)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise FeedbackError("the request body must be JSON") from None
    if not isinstance(data, dict):
        raise FeedbackError("the request body must be a JSON object")
    return data


def assignment_json(a: Assignment) -> dict:
    """An assignment as the annotator sees it: responses in screen order, never the item's own indices."""
    return {"assignment_id": a.id, "task": a.task, "prompt": prompt_text(a.prompt), "responses": a.shown_responses,
            "rules": a.rules}


def create_app(store: FeedbackStore, *, max_body_bytes: int = DEFAULT_MAX_BODY) -> FastAPI:
    app = FastAPI(title="preftune annotate", docs_url=None, redoc_url=None, openapi_url=None)
    templates = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True))
    templates.filters["fmt"] = lambda x: "–" if x is None else f"{x:.3f}"
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        try:
            response = await call_next(request)
        except Exception:  # a bug must still answer JSON, never a bare 500 page or a dropped connection
            response = _error(500, "internal error")
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        return response

    @app.exception_handler(FeedbackError)
    async def feedback_error(request: Request, err: FeedbackError):
        return _error(err.status, str(err))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        return _error(err.status_code, str(err.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception):
        return _error(500, "internal error")

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(422, f"{where}: {first.get('msg', 'invalid request')}")

    def page(name: str, status: int = 200, **context) -> HTMLResponse:
        return HTMLResponse(templates.get_template(name).render(**context), status_code=status)

    def who(request: Request, *, admin: bool = False):
        annotator = store.authenticate(_token(request))
        if admin and not annotator.is_admin:
            raise Unauthorized("this needs the admin token")
        return annotator

    @app.get("/", response_class=HTMLResponse)
    def index():
        return page("index.html")

    @app.get("/a/{token}", response_class=HTMLResponse)
    def annotate_page(token: str):
        try:
            annotator = store.authenticate(token)
        except Unauthorized:
            return page("index.html", status=401, message="This link is not valid.")
        item = store.next_assignment(annotator)
        progress = store.progress(annotator)
        return page("annotate.html", annotator=annotator.name, token=token, item=item,
                    prompt=prompt_text(item.prompt) if item else "", responses=item.shown_responses if item else [],
                    progress=progress)

    @app.get("/stats/{token}", response_class=HTMLResponse)
    def stats_page(token: str):
        from preftune.feedback.stats import feedback_stats

        try:
            annotator = store.authenticate(token)
        except Unauthorized:
            return page("index.html", status=401, message="This link is not valid.")
        if not annotator.is_admin:
            return page("index.html", status=403, message="The statistics page needs the admin link.")
        return page("stats.html", stats=feedback_stats(store.path))

    @app.get("/api/next")
    def api_next(request: Request):
        annotator = who(request)
        item = store.next_assignment(annotator)
        p = store.progress(annotator)
        return {"item": assignment_json(item) if item else None, "progress": {"done": p.done, "total": p.total}}

    @app.get("/api/assignments/{assignment_id}")
    def api_assignment(assignment_id: int, request: Request):
        return assignment_json(store.get_assignment(who(request), assignment_id))

    @app.get("/api/progress")
    def api_progress(request: Request):
        p = store.progress(who(request))
        return {"done": p.done, "total": p.total}

    @app.post("/api/submit")
    async def api_submit(request: Request):
        annotator = who(request)
        body = await _json_body(request, max_body_bytes)
        extra = sorted(set(body) - {"submission_id", "assignment_id", "answer", "comment"})
        if extra:
            raise FeedbackError(f"unexpected field(s): {', '.join(extra)}")
        assignment_id = body.get("assignment_id")
        if not isinstance(assignment_id, int) or isinstance(assignment_id, bool):
            raise FeedbackError("assignment_id must be a whole number")
        if "answer" not in body:
            raise FeedbackError("answer is missing")
        from starlette.concurrency import run_in_threadpool

        receipt = await run_in_threadpool(store.submit, annotator, body.get("submission_id"), assignment_id,
                                          body["answer"], body.get("comment") or "")
        return {"ok": True, "id": receipt.id, "submission_id": receipt.submission_id, "duplicate": receipt.duplicate}

    @app.post("/api/undo")
    async def api_undo(request: Request):
        annotator = who(request)
        await _json_body(request, max_body_bytes)
        return {"ok": True, "assignment_id": store.undo_last(annotator)}

    @app.get("/api/stats")
    def api_stats(request: Request):
        from preftune.feedback.stats import feedback_stats

        who(request, admin=True)
        return feedback_stats(store.path)

    return app
