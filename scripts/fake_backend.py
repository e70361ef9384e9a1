"""A tiny OpenAI-compatible backend for tests, demos and the overhead benchmark (no model: canned answers).

    python scripts/fake_backend.py --port 9001 --name small [--delay-ms 5] [--fail] [--require-key-env SMALL_KEY]

`POST /v1/chat/completions` answers "NAME says: <the last user message, truncated>" with a `usage` block
(prompt_tokens = words of all messages, completion_tokens = words of the answer); `"stream": true` sends it as
server-sent events (one chunk per word, a final usage chunk when `stream_options.include_usage` is set, then
`[DONE]`). `GET /v1/models` lists NAME. `--fail` answers every completion with HTTP 500; `--require-key-env VAR`
demands `Authorization: Bearer $VAR` (401 otherwise). Listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route


def build(name: str, delay_ms: float = 0.0, fail: bool = False, key: str | None = None) -> Starlette:
    counter = {"n": 0}

    def _err(status, msg):
        return JSONResponse({"error": {"message": msg, "type": "api_error", "param": None, "code": None}},
                            status_code=status)

    async def chat(request: Request):
        if key is not None and request.headers.get("authorization") != f"Bearer {key}":
            return _err(401, "bad upstream key")
        if fail:
            return _err(500, f"{name} is failing on purpose")
        body = await request.json()
        msgs = body.get("messages") or []
        users = [m.get("content") for m in msgs if m.get("role") == "user" and isinstance(m.get("content"), str)]
        text = f"{name} says: {(users[-1] if users else '')[:60]}"
        words = text.split(" ")
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in msgs)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(words),
                 "total_tokens": prompt_tokens + len(words)}
        counter["n"] += 1
        cid, created, model = f"chatcmpl-{name}-{counter['n']}", int(time.time()), body.get("model", name)
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        if not body.get("stream"):
            return JSONResponse({"id": cid, "object": "chat.completion", "created": created, "model": model,
                                 "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                              "finish_reason": "stop"}], "usage": usage})

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def events():
            base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
            for i, w in enumerate(words):
                delta = {"role": "assistant", "content": w} if i == 0 else {"content": " " + w}
                yield f"data: {json.dumps(dict(base, choices=[{'index': 0, 'delta': delta, 'finish_reason': None}]))}\n\n"
            yield f"data: {json.dumps(dict(base, choices=[{'index': 0, 'delta': {}, 'finish_reason': 'stop'}]))}\n\n"
            if include_usage:
                yield f"data: {json.dumps(dict(base, choices=[], usage=usage))}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def models(request: Request):
        return JSONResponse({"object": "list", "data": [{"id": name, "object": "model", "created": 0,
                                                         "owned_by": "fake"}]})

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]),
                             Route("/v1/models", models, methods=["GET"])])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--delay-ms", type=float, default=0.0, help="latency added to every completion (default 0)")
    p.add_argument("--fail", action="store_true", help="answer every completion with HTTP 500")
    p.add_argument("--require-key-env", help="demand Authorization: Bearer $VAR")
    a = p.parse_args(argv)
    key = os.environ.get(a.require_key_env) if a.require_key_env else None
    if a.require_key_env and not key:
        p.error(f"${a.require_key_env} is not set")
    uvicorn.run(build(a.name, a.delay_ms, a.fail, key), host="127.0.0.1", port=a.port, log_level="warning",
                access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
