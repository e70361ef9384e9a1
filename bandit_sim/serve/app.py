"""The HTTP side: an OpenAI-compatible FastAPI app that routes with `RouterService` and forwards with httpx.

Endpoints (docs/serve.md):
- ``POST /v1/chat/completions``: ``model: "router"`` or ``"router:<preset>"`` routes on the last user message and
  forwards the request to the chosen backend (its ``model`` field replaced by the backend's upstream name);
  the backend's response comes back unchanged (streamed too) with headers ``x-router-model``,
  ``x-router-decision-id``, ``x-router-forecast-tokens`` (mean), ``x-router-forecast-tokens-interval`` (80%),
  ``x-router-forecast-cost-usd``, ``x-router-explored`` (and ``x-router-upstream-ms``, the time the backend took,
  on non-streamed answers). An upstream error (connection, timeout, 5xx, 429) is
  retried once on the next-best model (``x-router-fallback-from``, ``x-router-upstream-error``). A request naming a
  backend passes through unrouted.
- ``POST /v1/feedback`` ``{decision_id, quality[, output_tokens, cost_usd]}``: tokens and cost default to the
  upstream's ``usage``.
- ``GET /v1/models``, ``GET /health``, ``GET /metrics`` (Prometheus text).
- ``POST /admin/models`` ``{"action": "add", "backend": {...}}`` or ``{"action": "remove", "name": ...}``,
  ``GET /admin/stats``: ``Authorization: Bearer $ADMIN_TOKEN`` (the variable named by ``admin_token_env``).

Errors are OpenAI-style JSON ``{"error": {"message", "type", "param", "code"}}``. Secrets (upstream keys, tokens)
are read from the environment and never appear in a response, a log line, the state file or the decision log.
"""

from __future__ import annotations

import copy
import hmac
import json
import logging
import os
import time
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from bandit_sim.data.tokens import count_tokens
from bandit_sim.router.router import Decision
from bandit_sim.serve.config import ConfigError, ServeConfig
from bandit_sim.serve.metrics import CONTENT_TYPE_LATEST, Metrics
from bandit_sim.serve.service import RouterService, ServiceError

__all__ = ["create_app"]

log = logging.getLogger("bandit_sim.serve")
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 405: "invalid_request_error", 409: "conflict_error",
          413: "invalid_request_error", 502: "api_error", 504: "api_error"}


def error(status: int, message: str, *, type: str | None = None, code: str | None = None, param: str | None = None,
          headers: dict | None = None) -> JSONResponse:
    """An OpenAI-style error response."""
    return JSONResponse({"error": {"message": message, "type": type or _TYPES.get(status, "api_error"),
                                   "param": param, "code": code}}, status_code=status, headers=headers)


class _Upstream(Exception):
    """A retryable upstream failure; `reason` is safe to show (no body, no key)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _message_text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


class _SSEUsage:
    """Reads a chat-completion SSE stream as it passes: the final usage, else the streamed text."""

    def __init__(self):
        self.buf = b""
        self.usage = None
        self.parts: list[str] = []

    def feed(self, chunk: bytes) -> None:
        self.buf += chunk
        *lines, self.buf = self.buf.split(b"\n")
        for line in lines:
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]" or not data:
                continue
            try:
                obj = json.loads(data)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                if obj.get("usage"):
                    self.usage = obj["usage"]
                for c in obj.get("choices") or []:
                    t = (c.get("delta") or {}).get("content") if isinstance(c, dict) else None
                    if isinstance(t, str):
                        self.parts.append(t)

    def tokens(self) -> tuple[int | None, int | None]:
        if isinstance(self.usage, dict) and self.usage.get("completion_tokens") is not None:
            return self.usage.get("prompt_tokens"), self.usage.get("completion_tokens")
        return None, int(count_tokens(["".join(self.parts)])[0])


def create_app(cfg: ServeConfig) -> FastAPI:
    """The server for a config (the service is built at start-up: state restored, log replayed)."""
    metrics = Metrics()
    env = os.environ
    if cfg.client_keys_env is not None and not env.get(cfg.client_keys_env, "").strip():
        raise ConfigError(f"{cfg.source}: client_keys_env names ${cfg.client_keys_env}, which is unset or empty: "
                          f"set it to a comma-separated list of client API keys, or drop client_keys_env")
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        t0 = time.perf_counter()
        svc = RouterService(cfg, metrics)
        t1 = time.perf_counter()
        _warm_up(svc)
        log.info("service ready: state restored and log replayed in %.2f s, jit warm-up %.2f s", t1 - t0,
                 time.perf_counter() - t1)
        state["svc"] = svc
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=32)
        state["http"] = httpx.AsyncClient(timeout=httpx.Timeout(cfg.upstream_timeout_s), limits=limits)
        missing = sorted({b.api_key_env for b in svc.backends.values() if b.api_key_env and b.api_key_env not in env})
        if missing:
            log.warning("API-key environment variables not set (their backends get no Authorization): %s", missing)
        log.info("routing between %s; state %s; decision log %s", svc.router.models, cfg.state, cfg.decision_log)
        try:
            yield
        finally:
            await state["http"].aclose()
            svc.close()
            log.info("state saved to %s", cfg.state)

    app = FastAPI(title="bandit-sim router", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    # ------------------------------------------------------------ errors

    @app.exception_handler(ServiceError)
    async def _svc_error(request: Request, exc: ServiceError):
        metrics.errors.labels(str(exc.status)).inc()
        return error(exc.status, exc.message, type=exc.type if exc.status == 400 else None, code=exc.code,
                     param=exc.param)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        metrics.errors.labels(str(exc.status_code)).inc()
        msg = {404: f"no route {request.method} {request.url.path}", 405: f"method {request.method} not allowed on "
               f"{request.url.path}"}.get(exc.status_code, str(exc.detail))
        return error(exc.status_code, msg)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        metrics.errors.labels("500").inc()
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error(500, f"internal server error ({type(exc).__name__})", type="api_error")

    # ------------------------------------------------------------ helpers

    def svc() -> RouterService:
        return state["svc"]

    def check_client(request: Request) -> None:
        if cfg.client_keys_env is None:
            return
        keys = [k.strip() for k in env.get(cfg.client_keys_env, "").split(",") if k.strip()]
        got = _bearer(request)
        if got is None or not any(hmac.compare_digest(got.encode(), k.encode()) for k in keys):
            raise ServiceError(401, "invalid or missing API key: send Authorization: Bearer <your client key>",
                               code="invalid_api_key")

    def check_admin(request: Request) -> None:
        token = env.get(cfg.admin_token_env, "")
        if not token:
            raise ServiceError(401, f"the admin API is disabled: set the environment variable "
                                    f"{cfg.admin_token_env} before starting the server", code="admin_disabled")
        got = _bearer(request)
        if got is None or not hmac.compare_digest(got.encode(), token.encode()):
            raise ServiceError(401, "invalid or missing admin token: send Authorization: Bearer <admin token>",
                               code="invalid_admin_token")

    async def read_json(request: Request) -> dict:
        n = request.headers.get("content-length")
        if n is not None and n.isdigit() and int(n) > cfg.max_body_bytes:
            raise ServiceError(413, f"request body of {n} bytes exceeds the limit of {cfg.max_body_bytes} bytes",
                               code="request_too_large")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > cfg.max_body_bytes:
                raise ServiceError(413, f"request body exceeds the limit of {cfg.max_body_bytes} bytes",
                                   code="request_too_large")
        try:
            obj = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ServiceError(400, "the request body is not valid JSON") from None
        if not isinstance(obj, dict):
            raise ServiceError(400, "the request body must be a JSON object")
        return obj

    async def send(backend_name: str, body: dict, stream: bool) -> tuple[httpx.Response, float]:
        b = svc().backends[backend_name]
        headers = {"content-type": "application/json", "accept-encoding": "identity"}
        key = env.get(b.api_key_env) if b.api_key_env else None
        if key:
            headers["authorization"] = f"Bearer {key}"
        payload = json.dumps(dict(body, model=b.model)).encode()
        t0 = time.perf_counter()
        http: httpx.AsyncClient = state["http"]
        try:
            req = http.build_request("POST", f"{b.base_url}/chat/completions", content=payload, headers=headers)
            resp = await http.send(req, stream=stream)
        except httpx.TimeoutException:
            raise _Upstream(f"{backend_name}: timeout after {cfg.upstream_timeout_s:g} s") from None
        except httpx.HTTPError as exc:
            raise _Upstream(f"{backend_name}: {type(exc).__name__}") from None
        if resp.status_code >= 500 or resp.status_code == 429:
            if stream:
                await resp.aclose()
            raise _Upstream(f"{backend_name}: HTTP {resp.status_code}")
        return resp, time.perf_counter() - t0

    # ------------------------------------------------------------ chat completions

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        t0 = time.perf_counter()
        check_client(request)
        body = await read_json(request)
        model = body.get("model")
        msgs = body.get("messages")
        if not isinstance(model, str) or not model:
            raise ServiceError(400, "'model' is required: \"router\", \"router:<preset>\" or a backend name",
                               param="model")
        if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) and "role" in m for m in msgs):
            raise ServiceError(400, "'messages' must be a non-empty list of {role, content} objects",
                               param="messages")
        stream = bool(body.get("stream", False))
        s = svc()
        if model == "router" or model.startswith("router:"):
            users = [_message_text(m.get("content")) for m in msgs if m.get("role") == "user"]
            text = users[-1] if users else ""
            if not text.strip():
                raise ServiceError(400, "no user message with text to route on", param="messages")
            in_tok = s.count_input_tokens([_message_text(m.get("content")) for m in msgs])
            d = s.route(text, in_tok, preset=model[7:] if model.startswith("router:") else None, prompt=text)
            order = [d.model] + s.fallbacks(d)[:1]
            headers = _decision_headers(d)
        elif model in s.backends:
            d, order, headers = None, [model], {"x-router-model": model, "x-router-routed": "false"}
            metrics.passthrough.labels(model).inc()
        else:
            raise ServiceError(404, f"unknown model {model!r}: use \"router\", \"router:<preset>\" "
                                    f"(presets: {sorted(cfg.presets)}) or a backend: {sorted(s.backends)}",
                               param="model", code="model_not_found")
        errors = []
        for i, name in enumerate(order):
            try:
                resp, up = await send(name, body, stream)
            except _Upstream as exc:
                errors.append(exc.reason)
                metrics.upstream_errors.labels(name).inc()
                log.warning("upstream error: %s", exc.reason)
                continue
            if i > 0:
                s.reroute(d, name, errors[-1])
                headers.update({"x-router-model": name, "x-router-fallback-from": order[0],
                                "x-router-upstream-error": "; ".join(errors)})
            if stream and resp.status_code < 400:
                return StreamingResponse(_relay(resp, d, s, t0), status_code=resp.status_code,
                                         media_type=resp.headers.get("content-type", "text/event-stream"),
                                         headers=headers)
            content = await resp.aread() if stream else resp.content
            if stream:
                await resp.aclose()
            if d is not None:
                if resp.status_code < 400:
                    pt, ct = _usage(content)
                    s.record_usage(d.decision_id, pt, ct)
                else:  # the backend refused the request itself (4xx): no feedback can follow
                    s.failed(d, f"{name}: HTTP {resp.status_code}")
                metrics.overhead.observe(max(0.0, time.perf_counter() - t0 - up))
            headers["x-router-upstream-ms"] = f"{up * 1e3:.3f}"
            metrics.latency.labels("chat").observe(time.perf_counter() - t0)
            return Response(content, status_code=resp.status_code,
                            media_type=resp.headers.get("content-type", "application/json"), headers=headers)
        if d is not None:
            s.failed(d, "; ".join(errors))
        metrics.errors.labels("502").inc()
        return error(502, f"no backend answered: {'; '.join(errors)}", code="upstream_error",
                     headers={k: v for k, v in headers.items() if k != "x-router-decision-id"})

    async def _relay(resp: httpx.Response, d: Decision | None, s: RouterService, t0: float):
        parser = _SSEUsage()
        try:
            async for chunk in resp.aiter_raw():
                if d is not None:
                    parser.feed(chunk)
                yield chunk
        except httpx.HTTPError as exc:
            metrics.upstream_errors.labels(d.model if d else "passthrough").inc()
            log.warning("upstream stream broke: %s", type(exc).__name__)
        finally:
            await resp.aclose()
            if d is not None:
                pt, ct = parser.tokens()
                s.record_usage(d.decision_id, pt, ct)
            metrics.latency.labels("chat_stream").observe(time.perf_counter() - t0)

    # ------------------------------------------------------------ feedback, models, health, metrics

    @app.post("/v1/feedback")
    async def feedback(request: Request):
        t0 = time.perf_counter()
        check_client(request)
        body = await read_json(request)
        unknown = set(body) - {"decision_id", "quality", "output_tokens", "cost_usd"}
        if unknown:
            raise ServiceError(400, f"unknown fields {sorted(unknown)}; feedback has decision_id, quality "
                                    f"[, output_tokens, cost_usd]")
        if "quality" not in body:
            raise ServiceError(400, "'quality' in [0, 1] is required", param="quality")
        out = svc().feedback(body.get("decision_id"), body["quality"], body.get("output_tokens"),
                             body.get("cost_usd"))
        metrics.latency.labels("feedback").observe(time.perf_counter() - t0)
        return out

    @app.get("/v1/models")
    async def models(request: Request):
        check_client(request)
        s = svc()
        ids = ["router"] + [f"router:{p}" for p in cfg.presets] + list(s.router.models)
        return {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "bandit-sim"}
                                           for m in ids]}

    @app.get("/health")
    async def health():
        r = svc().router
        return {"status": "ok", "models": r.models, "step": r.step, "observed": int(r.totals[0]),
                "pending": len(r.pending), "replayed_events": svc().replayed, "lambda": svc().lam}

    @app.get("/metrics")
    async def prom():
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    # ------------------------------------------------------------ admin

    @app.post("/admin/models")
    async def admin_models(request: Request):
        check_admin(request)
        body = await read_json(request)
        action = body.get("action")
        if action == "add":
            return svc().add_backend(body.get("backend"))
        if action == "remove":
            return svc().remove_backend(body.get("name"))
        raise ServiceError(400, "'action' must be \"add\" (with \"backend\": {name, base_url, api_key_env, family, "
                                "input_per_m, output_per_m}) or \"remove\" (with \"name\")", param="action")

    @app.get("/admin/stats")
    async def admin_stats(request: Request):
        check_admin(request)
        s = svc()
        return dict(s.router.summary(), posterior=s.router.posterior(), log_seq=s.log.seq, lam=s.lam,
                    backends=[b.public() for b in s.backends.values()])

    return app


def _bearer(request: Request) -> str | None:
    h = request.headers.get("authorization", "")
    return h[7:].strip() if h[:7].lower() == "bearer " else None


def _decision_headers(d: Decision) -> dict[str, str]:
    lo, hi = d.tokens_interval
    return {"x-router-model": d.model, "x-router-decision-id": d.decision_id,
            "x-router-forecast-tokens": f"{d.tokens_mean:.1f}", "x-router-forecast-tokens-interval": f"{lo:.1f},{hi:.1f}",
            "x-router-forecast-cost-usd": f"{d.cost_usd:.8f}", "x-router-explored": str(d.explored).lower(),
            "x-router-routed": "true"}


def _usage(content: bytes) -> tuple[int | None, int | None]:
    try:
        u = json.loads(content).get("usage") or {}
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None, None
    return u.get("prompt_tokens"), u.get("completion_tokens")


def _warm_up(svc: RouterService) -> None:
    """Compile the router's route/observe steps on a copy (the real router's state and log are untouched)."""
    r = copy.deepcopy(svc.router)
    d = r.route("warm-up")
    r.observe(d, quality=1.0, output_tokens=1)
    count_tokens(["warm-up"])
