"""The request and response bodies of every route, as msgspec Structs.

Handlers decode requests with these types and encode answers with them, and the OpenAPI
document is generated from them: what is documented is what is checked and sent.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from noetl.api.common import MAX_VERSION, Body

Version = Annotated[int, msgspec.Meta(ge=1, le=MAX_VERSION)]
NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
# Ids are 63-bit integers, sent as strings of digits so that every JSON reader keeps them.
Id = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{1,19}$", description="a 63-bit integer")]
IdText = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{1,19}$")]
ExecutionStatus = Literal["running", "completed", "failed", "cancelled"]


class ErrorBody(msgspec.Struct, omit_defaults=True):
    """Every refusal: a message, plus the problems of an invalid playbook."""

    error: str
    problems: list[str] | None = None


# -- health ---------------------------------------------------------------------------------


class Health(msgspec.Struct):
    status: Literal["ok"] = "ok"


class Readiness(msgspec.Struct):
    """`ready` when NATS, PostgreSQL and the schema all answer; else what is missing."""

    status: Literal["ready", "not ready"]
    checks: dict[str, str]
    missing: list[str]


# -- native playbooks -----------------------------------------------------------------------


class PlaybookBody(Body):
    content: NonEmpty
    # Script files the playbook names by relative path, as `noetl-runtime register` sends them.
    files: dict[str, str] = {}


class PlaybookSummary(msgspec.Struct):
    path: str
    version: int
    updated_at: str


class PlaybookContent(msgspec.Struct):
    path: str
    version: int
    content: str


class Registered(msgspec.Struct):
    path: str
    version: int
    created: bool


# -- native executions ----------------------------------------------------------------------


class StartBody(Body):
    path: NonEmpty
    version: Version | None = None
    workload: dict[str, Any] | None = None
    timeout: Annotated[float, msgspec.Meta(gt=0)] | None = None


class CancelBody(Body):
    reason: NonEmpty = "cancelled by user"


class RestartBody(Body):
    from_step: str | None = msgspec.field(default=None, name="from")
    workload: dict[str, Any] | None = None


class Started(msgspec.Struct):
    execution_id: Id


class Restarted(msgspec.Struct):
    execution_id: Id
    restarted_from: Id


class ExecutionSummary(msgspec.Struct):
    execution_id: Id
    path: str
    version: int
    status: ExecutionStatus
    started_at: str
    ended_at: str | None


class ExecutionDocument(msgspec.Struct, omit_defaults=True):
    """The execution as `noetl-runtime status --json` prints it (`waiting_for_pool` only
    when a step waits for a pool)."""

    execution_id: Id
    path: str
    version: int
    status: ExecutionStatus
    result: Any
    steps: dict[str, Any]
    vars: dict[str, Any]
    error: Any
    parent_execution_id: Id | None
    restarted_from: Id | None
    started_at: str
    ended_at: str | None
    # Step -> runner pool, for steps whose command waits for a pool with no live runner;
    # left out when none does.
    waiting_for_pool: dict[str, str] = {}


class EventRow(msgspec.Struct):
    event_id: Id
    event_type: str
    step: str | None
    command_id: str | None
    status: str | None
    payload: Any
    error: Any
    created_at: str


# -- credentials ----------------------------------------------------------------------------


class CredentialBody(Body):
    type: str
    data: dict[str, Any]


class CredentialInfo(msgspec.Struct):
    name: str
    type: str
    created_at: str
    updated_at: str


class CredentialDetail(msgspec.Struct):
    name: str
    type: str
    data: dict[str, Any]
    created_at: str
    updated_at: str


class CredentialSet(msgspec.Struct):
    name: str
    type: str
    created: bool


# -- NoETL-compatible routes ----------------------------------------------------------------


class CatalogRegisterBody(Body):
    """NoETL's registration: the YAML as plain text or base64 in `content`."""

    content: str | None = None
    content_base64: str | None = None
    resource_type: str = "Playbook"


class CatalogRegistered(msgspec.Struct):
    status: Literal["success"]
    message: str
    path: str
    version: int
    catalog_id: Id
    kind: str


class Problem(msgspec.Struct):
    """One problem of an invalid playbook; `line` and `column` are 1-based, null when the
    problem has no place in the text."""

    line: int | None
    column: int | None
    message: str


class CatalogRefused(msgspec.Struct):
    status: Literal["error"]
    error: str
    problems: list[Problem]


class CatalogListBody(Body):
    resource_type: str | None = None


class CatalogEntry(msgspec.Struct):
    catalog_id: Id
    path: str
    version: int
    kind: str
    content: str
    created_at: str


class CatalogEntries(msgspec.Struct):
    entries: list[CatalogEntry]


class ExecuteBody(Body):
    """NoETL's start request: a catalog entry by `catalog_id`, or by `path` and `version`
    (a number or "latest"); the workload under any of NoETL's three names."""

    path: NonEmpty | None = None
    version: Version | Annotated[str, msgspec.Meta(pattern=r"^(latest|[0-9]{1,9})$")] = "latest"
    catalog_id: IdText | Annotated[int, msgspec.Meta(ge=0)] | None = None
    payload: dict[str, Any] | None = None
    workload: dict[str, Any] | None = None
    args: dict[str, Any] | None = None
    parent_execution_id: IdText | Annotated[int, msgspec.Meta(ge=0)] | None = None


class ExecuteAccepted(msgspec.Struct):
    execution_id: Id
    status: Literal["started"]
    path: str
    version: int
    catalog_id: Id


class ExecutionStatusView(msgspec.Struct):
    execution_id: Id
    path: str
    version: int
    status: ExecutionStatus
    completed: bool
    failed: bool
    error: Any
    started_at: str
    ended_at: str | None


class Variable(msgspec.Struct):
    value: Any
    source_step: str | None
    set_at: str


class Variables(msgspec.Struct):
    execution_id: Id
    variables: dict[str, Variable]
    count: int


class EventItem(msgspec.Struct):
    event_id: Id
    execution_id: Id
    event_type: str
    step: str | None
    command_id: str | None
    status: str | None
    payload: Any
    error: Any
    created_at: str


class EventPage(msgspec.Struct):
    """One page of events; pass `next_after` as `after` for the next one (it stays the same
    while nothing new is written; `has_more` says more are there already)."""

    items: list[EventItem]
    has_more: bool
    next_after: Id | None


class SqlBody(Body):
    """NoETL's SQL request: a statement (plain or base64) or a procedure, its parameters, and
    where to run it (the runtime's database by default)."""

    query: str | None = None
    query_base64: str | None = None
    procedure: str | None = None
    parameters: list[Any] | dict[str, Any] | None = None
    db_schema: str | None = msgspec.field(default=None, name="schema")
    connection_string: str | None = None
    credential: str | None = None


class SqlResult(msgspec.Struct):
    status: Literal["ok"]
    result: list[dict[str, Any]]
    truncated: bool = False
