"""The OpenAI-compatible HTTP API, health, readiness and metrics endpoints (FastAPI).

Health: /health answers 200 while the process can serve or is getting there, and 503 once the engine loop
has died (`EngineWorker.failure`) or one engine step has run longer than `engine_stall_timeout_s` (a kernel
that hangs without raising), so that the kubelet's liveness probe restarts the pod; /ready answers 200 only
while generation requests are taken.

Every accepted request ends: besides the engine's own timeout, the HTTP side gives up on a request
`backstop_s` after it came in (the request timeout plus a margin for the step in flight; none without a
request timeout), whatever the engine does. Tokenizing runs in a thread, so a long prompt does not hold up other requests or the probes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException

from moe_runtime.api.body_limit import BodyLimit
from moe_runtime.api.choices import Choices, Limits, chat_choices, completion_choices
from moe_runtime.api.limits import RequestLimits
from moe_runtime.api.protocol import (
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    ErrorResponse,
    models_body,
    validation_error,
)
from moe_runtime.api.responses import CHAT, COMPLETIONS, Answer, Endpoint
from moe_runtime.draining import CloseWhenDraining
from moe_runtime.engine.scheduler import QueueFull
from moe_runtime.engine.sequence import Sequence
from moe_runtime.engine.worker import EngineFailed, EngineWorker
from moe_runtime.faults import Faults
from moe_runtime.metrics import REFUSAL_REASONS, RuntimeMetrics
from moe_runtime.model.lora import AdapterError, AdapterNotFound

log = logging.getLogger(__name__)

RETRY_AFTER_S = "1"


class Phase(StrEnum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"  # the engine loop died: only a restart helps
    STALLED = "stalled"  # one engine step has run past the stall timeout: only a restart helps


@dataclass
class ServingState:
    """What the endpoints need; filled in once the engine has loaded."""

    metrics: RuntimeMetrics
    request_timeout_s: float | None
    max_request_bytes: int = RequestLimits.max_request_bytes
    backstop_margin_s: float | None = None  # None: max(2 s, 10% of the request timeout)
    engine_stall_timeout_s: float | None = None  # None: a step may run for ever
    phase: Phase = Phase.LOADING
    worker: EngineWorker | None = None
    model_name: str = ""
    limits: Limits | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    reported_unhealthy: bool = False  # logged when it turns so, not at every probe
    faults: Faults = field(default_factory=Faults)  # --inject-faults

    def activate(self, worker: EngineWorker, model_name: str, limits: Limits) -> None:
        self.worker, self.model_name, self.limits = worker, model_name, limits
        if self.phase is Phase.LOADING:
            self.phase = Phase.READY

    @property
    def current_phase(self) -> Phase:
        if self.worker is None:
            return self.phase
        if self.worker.failure is not None:
            return Phase.FAILED
        if self.stalled_for() is not None:
            return Phase.STALLED
        return self.phase

    def stalled_for(self) -> float | None:
        """Seconds the engine step in flight has run, once that is past the stall timeout; else None."""
        limit, worker = self.engine_stall_timeout_s, self.worker
        running = None if worker is None else worker.seconds_in_step()
        return running if limit is not None and running is not None and running > limit else None

    def unhealthy(self) -> tuple[Phase, str] | None:
        """FAILED or STALLED and why, while the process needs a restart; None while it can serve or is getting
        there (a step that ends after the stall timeout makes it healthy again)."""
        if self.worker is None:
            return None
        if self.worker.failure is not None:
            return Phase.FAILED, str(self.worker.failure)
        if (injected := self.faults.unhealthy()) is not None:
            return Phase.FAILED, injected
        if (stalled := self.stalled_for()) is not None:
            why = (
                f"one engine step has run for {stalled:.0f} s, past the stall timeout of "
                f"{self.engine_stall_timeout_s:g} s: a kernel may hang"
            )
            return Phase.STALLED, why
        return None

    def backstop_s(self) -> float | None:
        """Seconds after which the HTTP side gives up on an accepted request: the engine times it out first
        unless it is stuck; the margin covers the step in flight at the deadline."""
        timeout = self.request_timeout_s
        if timeout is None:
            return None
        margin = self.backstop_margin_s
        return timeout + (max(2.0, 0.1 * timeout) if margin is None else margin)


GENERATION_ERRORS = {
    400: {"model": ErrorResponse, "description": "Invalid request"},
    404: {"model": ErrorResponse, "description": "No such model or LoRA adapter (model_not_found)"},
    429: {"model": ErrorResponse, "description": "Waiting queue full"},
    503: {"model": ErrorResponse, "description": "Loading or shutting down"},
    504: {"model": ErrorResponse, "description": "Request timed out"},
}


def create_app(state: ServingState) -> FastAPI:
    app = FastAPI(title="moe_runtime", version="0.1.0")
    app.add_middleware(BodyLimit, max_bytes=state.max_request_bytes, on_refused=lambda: _count(state, 413))
    app.add_middleware(CloseWhenDraining, draining=lambda: state.phase is Phase.DRAINING)
    _install_error_handlers(app, state)
    _document_400_instead_of_422(app)

    @app.get("/health", responses={503: {"description": "The engine failed or stalled: restart"}})
    async def health() -> JSONResponse:
        unhealthy = state.unhealthy()
        if unhealthy is None:
            state.reported_unhealthy = False
            return JSONResponse({"status": "ok"})
        phase, why = unhealthy
        if not state.reported_unhealthy:
            state.reported_unhealthy = True
            log.critical("unhealthy: %s", why)
        return JSONResponse({"status": phase.value, "error": why}, status_code=503)

    @app.get("/ready", responses={503: {"description": "Loading, draining, failed or stalled"}})
    async def ready() -> JSONResponse:
        phase = state.current_phase
        return JSONResponse({"status": phase.value}, status_code=200 if phase is Phase.READY else 503)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        # `?name[]=...` keeps only those families, as the Prometheus client libraries' handlers do: a router
        # reading four gauges several times a second need not make the pod render everything
        names = request.query_params.getlist("name[]")
        return Response(state.metrics.render(names), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", responses={503: GENERATION_ERRORS[503]})
    async def models() -> dict:
        if state.worker is None:
            raise _unavailable(state)
        return models_body(state.model_name, state.created, state.worker.adapter_models())

    @app.post("/v1/completions", responses=GENERATION_ERRORS)
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await _generate(state, request, body, completion_choices, COMPLETIONS)

    @app.post("/v1/chat/completions", responses=GENERATION_ERRORS)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await _generate(state, request, body, chat_choices, CHAT)

    return app


def _unavailable(state: ServingState) -> ApiError:
    phase = state.current_phase
    return ApiError(
        503,
        f"The engine {phase.value}; the server must restart"
        if phase in (Phase.FAILED, Phase.STALLED)
        else f"The server is {phase.value}",
        type="service_unavailable",
        code=phase.value,
        headers={"Retry-After": RETRY_AFTER_S},
    )


async def _generate(
    state: ServingState,
    request: Request,
    body: CompletionRequest | ChatCompletionRequest,
    make_choices: Callable[..., Choices],
    endpoint: Endpoint,
) -> Response:
    if state.current_phase is not Phase.READY or state.worker is None or state.limits is None:
        raise _unavailable(state)
    adapter = None if body.model in (None, state.model_name) else body.model
    if adapter is not None:
        _check_adapter(state.worker, adapter)
    state.faults.before_request()
    tokenizer = state.worker.engine.tokenizer
    choices = await asyncio.to_thread(make_choices, body, tokenizer, state.limits)
    if state.current_phase is not Phase.READY:  # it may have changed while the prompt was tokenized
        raise _unavailable(state)
    loop = asyncio.get_running_loop()
    backstop = state.backstop_s()
    deadline = None if backstop is None else loop.time() + backstop
    try:
        # all of the request's sequences (prompts times n) are queued, or none: a 429 loses nothing
        sequences = [Sequence(job.prompt_ids, job.params, adapter=adapter) for job in choices.jobs]
        streams = state.worker.submit_all(sequences, state.request_timeout_s)
    except AdapterError as error:
        raise _model_not_found(error) from None
    except EngineFailed:
        raise _unavailable(state) from None
    except QueueFull:
        raise ApiError(
            429,
            "The server's waiting queue is full; retry later",
            type="rate_limit_error",
            code="queue_full",
            headers={"Retry-After": RETRY_AFTER_S},
        ) from None
    count = functools.partial(_count, state)
    answer = Answer(
        endpoint, adapter or state.model_name, tokenizer, request, streams, choices, count, deadline
    )
    if not body.stream:
        return JSONResponse(await answer.whole())
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    continuous_usage = include_usage and body.stream_options.continuous_usage_stats
    return StreamingResponse(
        answer.events(include_usage, continuous_usage),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache"},
    )


def _check_adapter(worker: EngineWorker, name: str) -> None:
    """404 before any work when `name` is neither the base model nor an adapter that serves."""
    try:
        worker.check_adapter(name)
    except AdapterError as error:
        raise _model_not_found(error) from None


def _model_not_found(error: AdapterError) -> ApiError:
    detail = "" if isinstance(error, AdapterNotFound) else f": adapter {error.reason}"
    return ApiError(
        404, f"The model `{error.adapter}` does not exist{detail}", "model", code="model_not_found"
    )


def _count(state: ServingState, status: int) -> None:
    state.metrics.requests.labels(status=str(status)).inc()


def _install_error_handlers(app: FastAPI, state: ServingState) -> None:
    def respond(error: ApiError) -> JSONResponse:
        if error.status == 503 and error.code in REFUSAL_REASONS:
            state.metrics.requests_refused.labels(reason=error.code).inc()
        else:
            _count(state, error.status)
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, error: ApiError) -> JSONResponse:
        return respond(error)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
        return respond(validation_error(error.errors()))

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, error: HTTPException) -> JSONResponse:
        body = ApiError(error.status_code, str(error.detail), code=str(error.status_code)).body()
        return JSONResponse(body, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=error)
        return respond(ApiError(500, "Internal server error", type="server_error"))


def _document_400_instead_of_422(app: FastAPI) -> None:
    """FastAPI documents validation failures as 422; this server answers them with 400."""
    generate_openapi = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = generate_openapi()
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
