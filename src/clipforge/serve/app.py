"""The HTTP service: FastAPI routes over :class:`~clipforge.serve.service.Service`.

Endpoints (the OpenAPI description is served at ``/openapi.json``)::

    GET  /                  the search page (static files under /static, no external resources)
    GET  /v1/health         status, model, index size, load (public even with a token)
    POST /v1/embed/text     JSON {"texts": [...]}                               → unit vectors
    POST /v1/embed/image    multipart 'files' | JSON {"images": [base64], "urls": [...]} → unit vectors
    POST /v1/search         JSON {"text"|"image"|"url"|"row", "k"} | multipart 'file' (+ 'k')
    POST /v1/classify       JSON {"image"|"url", "labels", "templates"?} | multipart 'file' + 'labels'
    GET  /thumbs/{row}      JPEG thumbnail of an indexed image (rows of the index only)

Errors are JSON ``{"error": message}`` with a 4xx status (413 too large, 415 wrong content type,
422 invalid fields, 429/503 overloaded with Retry-After); an unexpected failure is logged and
answered with a bare 500 that reveals nothing of the server (see :mod:`clipforge.serve.middleware`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from clipforge.serve.limits import InputError
from clipforge.serve.middleware import Gate, Guard, Overloaded
from clipforge.serve.schemas import (
    ClassifyRequest, ClassifyResponse, EmbedResponse, ErrorBody, Health, ImageEmbedRequest, SearchRequest,
    SearchResponse, TextEmbedRequest,
)
from clipforge.serve.service import Service

STATIC_DIR = Path(__file__).resolve().parent / "static"
ERRORS = {code: {"model": ErrorBody} for code in (400, 401, 403, 404, 413, 415, 422, 429, 502, 503)}


def create_app(service: Service) -> FastAPI:
    """The ASGI app serving ``service`` (run it with uvicorn, ``clipforge serve`` or ServerThread)."""
    from clipforge import __version__

    limits = service.limits
    compute = Gate(limits.max_concurrency, limits.max_queue, limits.queue_timeout_s)
    thumbs = Gate(2, 64, limits.queue_timeout_s)
    pools = {compute: ThreadPoolExecutor(limits.max_concurrency, "clipforge-compute"),
             thumbs: ThreadPoolExecutor(2, "clipforge-thumbs")}

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        for pool in pools.values():
            pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="clipforge", version=__version__, docs_url=None, redoc_url=None, lifespan=lifespan,
                  description="CLIP embeddings, image search and zero-shot classification.")
    app.state.service, app.state.gates = service, {"compute": compute, "thumbs": thumbs}

    async def run(gate: Gate, fn: Callable, *args: Any) -> Any:
        async with gate.compute_slot():
            return await asyncio.get_running_loop().run_in_executor(pools[gate], functools.partial(fn, *args))

    _add_error_handlers(app)
    _add_page(app)
    _add_api(app, service, run, compute, thumbs)
    app.add_middleware(Guard, token=service.config.token, max_body_bytes=limits.max_body_bytes,
                       gates={"/v1/": compute, "/thumbs/": thumbs})
    return app


def _add_api(app: FastAPI, service: Service, run: Callable, compute: Gate, thumbs: Gate) -> None:
    """The /v1 endpoints and thumbnails; ``run(gate, fn, *args)`` computes on the gate's worker threads."""
    @app.get("/v1/health", response_model=Health, tags=["service"])
    async def health() -> dict:
        index, encoder, config = service.index, service.encoder, service.config
        return {"status": "ok", "model": Path(encoder.name).name, "dim": encoder.dim,
                "image_size": encoder.image_size, "index_size": len(index) if index else None,
                "index_kind": index.info.get("kind") if index else None, "in_flight": compute.admitted,
                "capacity": compute.capacity, "auth": config.token is not None, "url_fetch": config.allow_url_fetch}

    @app.post("/v1/embed/text", response_model=EmbedResponse, responses=ERRORS, tags=["embed"])
    async def embed_text(body: TextEmbedRequest) -> dict:
        vectors = await run(compute, service.embed_texts, body.texts)
        return _embeddings(service, vectors)

    @app.post("/v1/embed/image", response_model=EmbedResponse, responses=ERRORS, tags=["embed"],
              openapi_extra=_body_doc(ImageEmbedRequest, {"files": _FILES}))
    async def embed_image(request: Request) -> dict:
        body, files = await _parse(request, ImageEmbedRequest, service.limits, lists=("images", "urls"))
        uploads = [await f.read() for f in files.get("files", []) + files.get("file", [])]
        return _embeddings(service, await run(compute, service.embed_images, uploads, body.images, body.urls))

    @app.post("/v1/search", response_model=SearchResponse, responses=ERRORS, tags=["search"],
              openapi_extra=_body_doc(SearchRequest, {"file": _FILE, "k": {"type": "integer"}}))
    async def search(request: Request) -> dict:
        body, files = await _parse(request, SearchRequest, service.limits, ints=("k", "row"))
        return await run(compute, service.search, body, await _one_file(files))

    @app.post("/v1/classify", response_model=ClassifyResponse, responses=ERRORS, tags=["classify"],
              openapi_extra=_body_doc(ClassifyRequest, {"file": _FILE, "labels": _STRINGS, "templates": _STRINGS}))
    async def classify(request: Request) -> dict:
        body, files = await _parse(request, ClassifyRequest, service.limits, lists=("labels", "templates"))
        return await run(compute, service.classify, body, await _one_file(files))

    @app.get("/thumbs/{row}", responses={200: {"content": {"image/jpeg": {}}}, **ERRORS}, tags=["search"])
    async def thumbnail(row: int) -> Response:
        data = await run(thumbs, service.thumbnail, row)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


def _embeddings(service: Service, vectors) -> dict:
    return {"model": Path(service.encoder.name).name, "dim": service.encoder.dim, "embeddings": vectors.tolist()}


# ---- request parsing (JSON or multipart) ---------------------------------------------------------

_FILE = {"type": "string", "format": "binary"}
_FILES = {"type": "array", "items": _FILE}
_STRINGS = {"type": "array", "items": {"type": "string"}}


def _body_doc(model: type[BaseModel], form_fields: dict[str, dict]) -> dict:
    """OpenAPI requestBody for an endpoint that takes JSON or multipart form data."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": model.model_json_schema()},
        "multipart/form-data": {"schema": {"type": "object", "properties": form_fields}},
    }}}


async def _parse(request: Request, model: type[BaseModel], limits, lists: tuple[str, ...] = (),
                 ints: tuple[str, ...] = ()) -> tuple[Any, dict[str, list[UploadFile]]]:
    """The body as ``model`` plus the uploaded files by field name; InputError on anything malformed."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if ctype == "application/json":
            return model.model_validate_json(await request.body()), {}
        if ctype != "multipart/form-data":
            raise InputError(415, f"send application/json or multipart/form-data, not {ctype or 'no content type'!r}")
        form = await request.form(max_files=limits.max_batch, max_fields=limits.max_labels + 16,
                                  max_part_size=max(4096, 4 * limits.max_text_chars))
        files: dict[str, list[UploadFile]] = {}
        fields: dict[str, Any] = {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                files.setdefault(key, []).append(value)
            elif key in lists:
                fields.setdefault(key, []).append(value)
            elif key in fields:
                raise InputError(422, f"form field {key!r} given more than once")
            else:
                fields[key] = _to_int(key, value) if key in ints else value
        return model.model_validate(fields), files
    except ValidationError as err:
        raise InputError(422, _summarize(err.errors())) from None


def _to_int(key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise InputError(422, f"form field {key!r} must be an integer, got {value[:40]!r}") from None


async def _one_file(files: dict[str, list[UploadFile]]) -> bytes | None:
    given = [f for name, fs in files.items() for f in fs]
    unknown = sorted(set(files) - {"file"})
    if unknown:
        raise InputError(422, f"unexpected file field(s) {unknown}; upload the image as 'file'")
    if len(given) > 1:
        raise InputError(422, "upload one image as 'file'")
    return await given[0].read() if given else None


def _summarize(errors: list[dict]) -> str:
    parts = []
    for e in errors[:5]:
        if e.get("type") == "json_invalid":
            parts.append(f"the body is not valid JSON ({(e.get('ctx') or {}).get('error', 'parse error')})")
            continue
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "invalid request: " + "; ".join(parts) + more


# ---- errors and the page -------------------------------------------------------------------------


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(InputError)
    async def _input_error(request: Request, err: InputError) -> JSONResponse:
        return JSONResponse({"error": err.message}, status_code=err.status)

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, err: Overloaded) -> JSONResponse:
        return JSONResponse({"error": err.message}, status_code=err.status, headers={"Retry-After": "1"})

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _summarize(list(err.errors()))}, status_code=422)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, err: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(err.detail)}, status_code=err.status_code, headers=err.headers)


def _add_page(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


__all__ = ["create_app"]
