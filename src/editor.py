"""The face editor in the browser: one static page and a few JSON/PNG endpoints over src/'s model code.

    python inference.py --serve                      # checkpoints/best_vae.pth on http://127.0.0.1:7860
    python inference.py --serve --checkpoint checkpoints/gaussian/best_vae.pth --port 8000

The page (src/static/: HTML, CSS and plain JavaScript, nothing loaded from elsewhere) has four tabs:
Edit (a photo or a generated face, a slider per attribute), Sample (a prior or GMM grid), Morph
(slerp between two faces) and Traverse (one latent dimension from -3 to +3). What the model does is
src/studio.py's (over faces.py, editing.py and latent.py); this module keeps each browser's codes
and speaks HTTP.

Endpoints (errors are JSON {"error": "one line"} with a 4xx status, shown on the page):
    GET  /  /editor.js  /editor.css     the page, served from memory (no client path reaches the disk)
    GET  /api/info                      attributes, methods, samplers, dimensions by KL, limits
    POST /api/upload/{edit|a|b}         the image file as the body -> the face encoded once, kept
    POST /api/generated/{edit|a|b}      {sampler, temperature, seed, n, index} -> that sample, kept
    POST /api/samples                   {sampler, temperature, seed, n} -> {"images": [PNG data URLs]}
    POST /api/edit                      {values: {attribute: -1..1}, method, target | strength} -> PNG
    POST /api/morph                     {t: 0..1} -> PNG (slerp from face a to face b)
    POST /api/traverse                  {dim, value: -3..3} -> PNG (around the edited face, or z = 0)

Safe by default: the server binds 127.0.0.1 and answers only requests addressed to a loopback name
(no DNS rebinding); uploads are capped in bytes (while reading) and pixels (before decoding), and
only JPEG, PNG, WebP, GIF and BMP decoders run; nothing is written to disk; the sessions (a random
cookie each, holding a few codes: a few KB) are bounded, the least recently used dropped.
"""

import ipaddress
import json
import os
import secrets
import socket
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Literal
from urllib.parse import unquote

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from src.config import Config
from src.editing import DEFAULT_METHOD, DEFAULT_TARGET, LABEL, METHODS
from src.errors import UserError
from src.faces import MAX_PHOTO_PIXELS
from src.latent import SAMPLERS, TRAVERSE_RANGE
from src.pretrained import shipped_parts
from src.studio import (
    EditRequest,
    Fitted,
    MorphRequest,
    PickRequest,
    SampleRequest,
    Studio,
    TraverseRequest,
    data_url,
    first_shown,
    fitted_for,
    png,
)

STATIC = Path(__file__).resolve().parent / "static"
PAGES = {"/": ("editor.html", "text/html; charset=utf-8"), "/editor.js": ("editor.js", "text/javascript"),
         "/editor.css": ("editor.css", "text/css")}
# The page may load only from this server: a browser refuses anything else, whatever the page says.
CSP = "default-src 'self'; img-src 'self' data: blob:; script-src 'self'; style-src 'self'; connect-src 'self'"
MAX_UPLOAD_BYTES = 10 << 20      # a larger upload is refused while it is read
MAX_SESSIONS = 64                # browsers whose faces are kept; the least recently used go first
LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1", "[::1]"]
COOKIE = "vae_editor_session"
Slot = Literal["edit", "a", "b"]

# --------------------------------------------------------------------------- sessions

class Sessions:
    """Each browser's faces (slot -> code, a few KB), keyed by a random cookie; beyond `cap` the least
    recently used session is dropped, so memory stays flat however many browsers come and go."""

    def __init__(self, cap: int = MAX_SESSIONS):
        self.cap, self._items, self._lock = cap, OrderedDict(), threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str | None) -> dict | None:
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def new(self) -> tuple[str, dict]:
        key, state = secrets.token_urlsafe(24), {}
        with self._lock:
            self._items[key] = state
            while len(self._items) > self.cap:
                self._items.popitem(last=False)
        return key, state


# --------------------------------------------------------------------------- images in memory

def png_response(image: torch.Tensor, **headers: str) -> Response:
    return Response(png(image), media_type="image/png", headers={"Cache-Control": "no-store", **headers})


# --------------------------------------------------------------------------- the app

async def read_capped(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it passes `limit` bytes, whatever Content-Length says."""
    too_large = HTTPException(413, f"file too large: more than {limit // 2**20} MB; pass a smaller copy")
    if int(request.headers.get("content-length") or 0) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    if not size:
        raise UserError("the upload was empty; choose an image file")
    return b"".join(chunks)


def face_of(request: Request, slot: str) -> np.ndarray:
    code = request.state.session.get(slot)
    if code is None:
        what = {"edit": "upload a photo or pick a generated face", "a": "choose face A", "b": "choose face B"}[slot]
        raise UserError(f"{what} first (this server keeps the faces of its {request.app.state.sessions.cap} most "
                        "recent sessions)")
    return code


def create_app(model, cfg: Config, checkpoint: str | Path, align: bool, fitted: Fitted | None = None,
               host: str = "127.0.0.1", method: str = DEFAULT_METHOD, target: float = DEFAULT_TARGET,
               max_sessions: int = MAX_SESSIONS) -> FastAPI:
    """The editor's app for a trained model (in eval mode): `align` photos like CelebA or take their
    centre; `fitted` is fitted_for() unless given (a pretrained file's, or fitted on the training
    data); bound to `host`, which (when loopback) is the only kind of name requests may be addressed to."""
    studio = Studio(model, cfg, fitted or fitted_for(model, cfg, Path(checkpoint)), align)
    sessions = Sessions(max_sessions)
    pages = {path: ((STATIC / name).read_bytes(), media) for path, (name, media) in PAGES.items()}
    app = FastAPI(title="VAE face editor", docs_url=None, redoc_url=None, openapi_url=None)  # docs load a CDN
    app.state.studio, app.state.sessions = studio, sessions
    if is_loopback(host):
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=LOOPBACK_NAMES)

    @app.middleware("http")
    async def session_cookie(request: Request, call_next):
        """Every API request belongs to a session: the cookie's, or (none, or dropped) a new one."""
        key = request.cookies.get(COOKIE)
        state = sessions.get(key)
        fresh = state is None and request.url.path.startswith("/api/")
        if fresh:
            key, state = sessions.new()
        request.state.session = state
        response = await call_next(request)
        if fresh:
            response.set_cookie(COOKIE, key, httponly=True, samesite="strict")
        return response

    @app.exception_handler(UserError)
    async def user_error(request: Request, e: UserError):
        return JSONResponse({"error": str(e)}, status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        message = e.detail if e.status_code != 404 else f"no such page: {request.url.path}"
        return JSONResponse({"error": message}, status_code=e.status_code)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, e: RequestValidationError):
        first = e.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
        return JSONResponse({"error": f"bad request: {where}: {first.get('msg', 'invalid')}"}, status_code=400)

    def page(path: str):
        body, media = pages[path]
        return lambda: Response(body, media_type=media, headers={"Content-Security-Policy": CSP,
                                                                  "X-Content-Type-Options": "nosniff"})
    for path in pages:
        app.get(path, include_in_schema=False)(page(path))

    @app.get("/api/info")
    def info() -> dict:
        names = studio.fitted.attrs.names if studio.fitted.attrs is not None else []
        return {"checkpoint": Path(checkpoint).name, "model": model_name(Path(checkpoint)),
                "serve_another": "python inference.py --serve --checkpoint PATH", "image_size": cfg.data.image_size,
                "align": align,
                "attributes": names, "shown": first_shown(names), "methods": list(METHODS) + ([LABEL] if studio.fitted.attrs is not None and studio.fitted.attrs.conditioned
                                                else []), "method": method,
                "target": target, "labels": studio.fitted.attrs.conditioned if studio.fitted.attrs is not None else [],
                "samplers": [s for s in SAMPLERS if s != "gmm" or studio.fitted.gmm is not None],
                "dims": studio.fitted.dims, "traverse_range": TRAVERSE_RANGE, "notes": studio.fitted.notes,
                "max_upload_bytes": MAX_UPLOAD_BYTES, "max_photo_pixels": MAX_PHOTO_PIXELS}

    @app.post("/api/upload/{slot}")
    async def upload(slot: Slot, request: Request) -> dict:
        data = await read_capped(request, MAX_UPLOAD_BYTES)
        name = unquote(request.headers.get("x-filename") or "upload")[:100]  # only ever shown, never a path
        code, shown = await run_in_threadpool(studio.photo, data, name)  # off the event loop
        request.state.session[slot] = code
        return shown

    @app.post("/api/generated/{slot}")
    def generated(slot: Slot, body: PickRequest, request: Request) -> dict:
        code, shown = studio.generated(body)
        request.state.session[slot] = code
        return shown

    @app.post("/api/samples")
    def samples(body: SampleRequest) -> dict:
        return {"images": [data_url(image) for image in studio.decode(studio.codes(body))]}

    @app.post("/api/edit")
    def edit(body: EditRequest, request: Request) -> Response:
        image, probabilities = studio.edit(face_of(request, "edit"), body)
        return png_response(image, **{"X-Probabilities": json.dumps(probabilities)})

    @app.post("/api/morph")
    def morph(body: MorphRequest, request: Request) -> Response:
        return png_response(studio.morph(face_of(request, "a"), face_of(request, "b"), body.t))

    @app.post("/api/traverse")
    def traverse(body: TraverseRequest, request: Request) -> Response:
        return png_response(studio.traverse(request.state.session.get("edit"), body.dim, body.value))

    return app


def model_name(checkpoint: Path) -> str:
    """How the page names the model it serves."""
    if shipped_parts(checkpoint) is not None:
        return f"the shipped pretrained model ({checkpoint.name})"
    return f"{checkpoint.parent.name}/{checkpoint.name}"


# --------------------------------------------------------------------------- serving

class PortUnavailable(UserError):
    """The address to serve on cannot be listened on (taken, or not this machine's)."""


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listen(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: any free one), or a one-line UserError: taken before the model
    loads, so a busy port is said at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, which accepted sockets inherit: only then does asyncio set TCP_NODELAY on them,
    # without which each small answer waits ~40 ms for the client's delayed ACK
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        return sock
    except OSError as e:
        sock.close()
        reason = os.strerror(e.errno) if e.errno else str(e)
        raise PortUnavailable(f"cannot listen on {host}:{port} ({reason})") from None


def serve(app: FastAPI, sock: socket.socket, host: str) -> None:
    """Serve on `sock` (listen(host, ...)) until Ctrl-C, printing the address."""
    import uvicorn
    shown = f"[{host}]" if ":" in host else host
    print(f"face editor on http://{shown}:{sock.getsockname()[1]}  (Ctrl-C stops it)", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
