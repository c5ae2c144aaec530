"""What every route module shares: the route-table entry, the running service, and watching for a
client that goes away."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Literal

import bentoml
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from graft.service.forms import Field
from graft.service.metrics import metrics

Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class Endpoint:
    """One route: what `/docs` says about it and the handler that serves it."""

    method: str
    path: str
    handler: Handler
    summary: str
    form: dict[str, Field] | None = None  # multipart fields; `images` file parts are implied
    request: type[BaseModel] | None = None  # a JSON body (documented; the handler validates it)
    response: type[BaseModel] | None = None
    status: int = 200  # what success answers
    errors: tuple[int, ...] = ()
    access: Literal["public", "api", "admin"] = "public"  # api: an API key when GRAFT_API_KEYS is set
    guarded: bool = False  # under the in-flight limit and the body-size limit


def service() -> Any:
    """The running `Graft` service instance of this worker."""
    return bentoml.get_current_service()


class ClientGone(Exception):
    """The client disconnected before its results were ready; nothing is sent."""


async def _until_disconnected(request: Request) -> None:
    # The body has been read, so the next message is the client's disconnect (or, once the
    # response is sent, the server's own end of the request).
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def watched(request: Request, work: Awaitable[Any], model: str) -> Any:
    """Await `work` unless the client goes away first: then cancel it, so its queued images are
    dropped before they run, and raise `ClientGone`."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnected(request))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    metrics().shed.labels(reason="client_gone", model=model).inc()
    raise ClientGone()
