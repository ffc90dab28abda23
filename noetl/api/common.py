"""What every route module shares: refusals, body decoding, JSON responses, parameters,
and the route table the application and its OpenAPI document are both built from."""

from __future__ import annotations

import abc
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

import msgspec
from aiohttp import web

if TYPE_CHECKING:
    from noetl.client import Client

__all__ = [
    "MAX_ID",
    "MAX_LIST",
    "MAX_VERSION",
    "ApiError",
    "Body",
    "Param",
    "Route",
    "body",
    "execution_id",
    "int_query",
    "json_response",
    "parse_id",
]

MAX_ID: Final = 2**63 - 1
MAX_LIST: Final = 1000
MAX_VERSION: Final = 2**31 - 1  # catalog versions are PostgreSQL `int`
_ID: Final = re.compile(r"[0-9]{1,19}")

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """A refusal with its HTTP status, turned into a JSON body by the error middleware."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


class Body(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Base of request bodies: a misspelt field is refused rather than silently ignored."""


@dataclass(frozen=True)
class Param:
    """A query parameter, for the OpenAPI document."""

    name: str
    schema: dict[str, Any]
    description: str = ""
    required: bool = False


@dataclass(frozen=True)
class Route:
    """One operation: how aiohttp serves it and how the OpenAPI document describes it.

    `body` is the type the handler decodes its JSON body with and `responses` the types it
    encodes its answers with (None: no body; a tuple: one of these), so the document cannot
    drift from the code.
    """

    method: Literal["GET", "POST", "PUT", "DELETE"]
    path: str
    handler: Handler
    summary: str
    tag: str
    responses: Mapping[int, Any]
    body: Any = None
    body_optional: bool = False
    # Other request media types the handler accepts besides JSON (as raw text).
    text_body: tuple[str, ...] = ()
    query: tuple[Param, ...] = ()
    headers: tuple[Param, ...] = ()
    public: bool = False  # served without the bearer token
    media: str = "application/json"  # the media type of the success response


class RouteGroup(abc.ABC):
    """Routes served over one client (its store, bus and catalog): the app serves and the
    OpenAPI document describes what `routes()` lists."""

    def __init__(self, client: Client) -> None:
        self.client = client

    @abc.abstractmethod
    def routes(self) -> list[Route]:
        """This group's operations."""


async def body(request: web.Request, kind: type[T], *, optional: bool = False) -> T:
    """The request's JSON body as `kind`; an empty body means `{}` when `optional`."""
    raw = await request.read()
    if not raw.strip():
        if not optional:
            raise ApiError(400, "the request needs a JSON body")
        raw = b"{}"
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as exc:
        raise ApiError(400, f"invalid request body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None


def json_response(
    data: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """`data` (a response Struct, or plain values) as a JSON response."""
    return web.Response(
        body=msgspec.json.encode(data),
        status=status,
        headers=headers,
        content_type="application/json",
    )


def parse_id(text: str, what: str = "an execution id") -> int:
    """A 63-bit id written in digits, or a 400 refusal."""
    if _ID.fullmatch(text) and int(text) <= MAX_ID:
        return int(text)
    raise ApiError(400, f"{what} is a 63-bit integer written in digits, got {text!r}")


def execution_id(request: web.Request, name: str = "id") -> int:
    """The execution id in the URL's `name` part."""
    return parse_id(request.match_info[name])


def int_query(request: web.Request, name: str, *, maximum: int, minimum: int = 1) -> int | None:
    """Query parameter `name` as an integer from `minimum` to `maximum`, None when absent."""
    text = request.query.get(name)
    if text is None:
        return None
    if text.isascii() and text.isdigit() and len(text) <= 19 and minimum <= int(text) <= maximum:
        return int(text)
    raise ApiError(400, f"`{name}` must be an integer from {minimum} to {maximum}, got {text!r}")
