"""Every message exchanged between actors, as msgspec Structs encoded with msgpack.

Each message carries the execution it belongs to and a deterministic `dedup_id`, used as the
JetStream `Nats-Msg-Id` so that a republished message is dropped by the server, and a
schema version so that a future format can be told apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import msgspec

from noetl.errors import MessageError
from noetl.keys import cancel_id, start_id

SCHEMA = 1

# -- shared vocabulary --------------------------------------------------------------------

ExecutionStatus = Literal["new", "running", "completed", "failed", "cancelled"]
# How an execution ends; also the status of the ChildCompleted it sends its parent.
TerminalStatus = Literal["completed", "failed", "cancelled"]
StepStatus = Literal["pending", "running", "completed", "failed"]
# The `status` column of an event (decision and runner events alike).
EventStatus = Literal["running", "completed", "failed", "cancelled"]
# A command runs the step's tool, or the sink written once after a loop (or a rule's sink).
Phase = Literal["tool", "sink"]
TimerAction = Literal["retry", "execution_timeout"]

_NAMED_ERROR_FIELDS = frozenset({"type", "message", "step", "kind"})


class ErrorInfo(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Why something failed: a step, a command, a loop, an execution.

    On the wire, in events and in templates it is a flat map (`record()`): `type` and
    `message` always, `step` and `kind` when known, then each of `details` beside them
    (`status_code`, `retry_after`, `errors`, `child_error`...), so `error.status_code` reads
    the same whichever tool failed. `of` parses such a map back.
    """

    type: str
    message: str
    step: str | None = None
    kind: str | None = None
    details: dict[str, Any] = {}

    @classmethod
    def of(cls, record: Mapping[str, Any], **defaults: Any) -> ErrorInfo:
        """Parse a record; `defaults` (of the named fields) apply where it has none."""
        named = dict(defaults)
        details: dict[str, Any] = {}
        for key, value in record.items():
            if key in _NAMED_ERROR_FIELDS:
                named[key] = value
            else:
                details[key] = value
        return cls(
            type=named.get("type", "error"),
            message=named.get("message", ""),
            step=named.get("step"),
            kind=named.get("kind"),
            details=details,
        )

    def record(self) -> dict[str, Any]:
        """The flat map stored in events and sent in messages."""
        out: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.step is not None:
            out["step"] = self.step
        if self.kind is not None:
            out["kind"] = self.kind
        out.update(self.details)
        return out


class CommandContext(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What a command's templates may read, as the engine sends it to the runner.

    `workload`, `vars` and the results of the `steps` the command's templates name;
    `locals` are the loop variables of an item (the iterator name, `loop`) or the `result`
    a sink writes. A context too large for a message travels stored: only `ref` and `size`
    are set then (the blob reference, see `noetl.blobs`), and the runner fetches it.
    The three maps are None only in such a reference; on the wire this is the same map as
    the plain dict it replaced.
    """

    workload: dict[str, Any] | None = None
    vars: dict[str, Any] | None = None
    steps: dict[str, Any] | None = None
    locals: dict[str, Any] | None = None
    ref: str | None = msgspec.field(default=None, name="$noetl_ref")
    size: int | None = None

    @classmethod
    def stored(cls, reference: Mapping[str, Any]) -> CommandContext:
        """The context as a reference to its stored value (`Store.put_blob`'s answer)."""
        return msgspec.convert(reference, cls)

    def reference(self) -> dict[str, Any] | None:
        """The blob reference this context is, or None when it is the context itself."""
        if self.ref is None:
            return None
        return msgspec.to_builtins(self)  # type: ignore[no-any-return]


class CodeLines(msgspec.Struct, frozen=True, array_like=True, omit_defaults=True):
    """Where the lines of a tool's code sit in their file, for errors to name them.

    Line n (1-based) of the code is line `first + n - 1` of `file`, or `lines[n - 1]` when
    `lines` is set (a folded or quoted YAML scalar); a line past its end takes the last.
    """

    file: str
    first: int = 1
    lines: tuple[int, ...] = ()

    def line_of(self, n: int) -> int:
        """The file line of code line `n`."""
        if not self.lines:
            return self.first + n - 1
        return self.lines[min(max(n, 1), len(self.lines)) - 1]


class Message(msgspec.Struct, tag_field="t", kw_only=True, omit_defaults=True):
    """Common header of every message delivered to an execution's coordinator or a runner."""

    execution_id: int
    dedup_id: str
    schema: int = SCHEMA
    # Sender's wall clock (epoch seconds): the engine's only source of time, so replaying a
    # decision never depends on when it is replayed.
    at: float = 0.0


class StartExecution(Message, tag="start"):
    """Start a run of the playbook registered at `path` (latest version when None)."""

    path: str
    version: int | None = None
    workload: dict[str, Any] = {}
    parent_execution_id: int | None = None
    parent_command_id: str | None = None
    # Sub-playbook nesting (0 at the top) and the top execution of the tree.
    depth: int = 0
    root_execution_id: int | None = None
    return_step: str | None = None
    timeout: float | None = None
    # Restart: the execution this one restarts, and the state it starts from.
    restarted_from: int | None = None
    restore: dict[str, Any] | None = None


class CommandIssued(Message, tag="command"):
    """One call of a step's tool, for a runner of `pool` (published to its subject).

    `tool` and `args` are raw (templates unrendered): the runner renders them with `context`
    and its secrets, so secret values never reach the coordinator or the event table.
    `edge_args` were rendered when the routing step ended and are applied as they are.
    """

    command_id: str
    step: str
    kind: str
    tool: dict[str, Any]
    pool: str = "default"
    args: dict[str, Any] = {}
    edge_args: dict[str, Any] = {}
    context: CommandContext = msgspec.field(default_factory=CommandContext)
    timeout: float | None = None
    attempt: int = 1
    reply_to: str = ""
    path: str = ""
    version: int = 0
    # Loop item / page number, and for pagination what this page changes in the tool block.
    index: int | None = None
    overrides: dict[str, Any] = {}
    # A sink the runner writes right after the tool succeeds (steps without a loop, and
    # `per_item` / `per_page` sinks); a command of kind `sink` writes `context.result`.
    sink: dict[str, Any] | None = None
    # The step's `credentials:` bindings (alias -> credential), resolved by the runner.
    credentials: dict[str, Any] = {}
    # The script file(s) this tool names that travelled with the playbook.
    files: dict[str, str] = {}
    # Where the tool's inline python `code` sits in the playbook, for its errors.
    code_lines: CodeLines | None = None


class CommandCompleted(Message, tag="completed"):
    """A command's tool call succeeded with `result`."""

    command_id: str
    step: str
    result: Any = None
    meta: dict[str, Any] = {}


class CommandFailed(Message, tag="failed"):
    """A command's tool call failed; `error` has at least `type` and `message`."""

    command_id: str
    step: str
    error: dict[str, Any] = {}


class ChildCompleted(Message, tag="child"):
    """A child execution started by a `playbook` step ended."""

    command_id: str
    child_execution_id: int
    status: TerminalStatus
    result: Any = None
    error: dict[str, Any] | None = None


class CancelExecution(Message, tag="cancel"):
    """Stop issuing commands and end the execution as cancelled."""

    reason: str = "cancelled by user"


class Timer(Message, tag="timer"):
    """A durable timer came due (timeouts, retry backoff)."""

    name: str


class Wake(Message, tag="wake"):
    """Sent by the reconciler: re-examine an execution that seems to wait on nothing."""


ExecMessage = (
    StartExecution
    | CommandCompleted
    | CommandFailed
    | ChildCompleted
    | CancelExecution
    | Timer
    | Wake
)


class RegisterPlaybook(msgspec.Struct, kw_only=True):
    """Catalog request: validate and register playbook `content`."""

    content: str
    filename: str = "<playbook>"
    # Script files the playbook names by relative path, read next to it at registration.
    files: dict[str, str] = {}


class GetPlaybook(msgspec.Struct, kw_only=True):
    """Catalog request: the playbook at `path`, `version` (latest when None)."""

    path: str
    version: int | None = None


class CatalogReply(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Catalog reply: the entry, or `problems` when the request failed."""

    ok: bool
    path: str = ""
    version: int = 0
    content: str = ""
    created: bool = False
    problems: list[str] = []


_encoder = msgspec.msgpack.Encoder()
_exec_decoder = msgspec.msgpack.Decoder(ExecMessage)
_command_decoder = msgspec.msgpack.Decoder(CommandIssued)


def encode(message: msgspec.Struct) -> bytes:
    """Encode any message for the wire (msgpack)."""
    return _encoder.encode(message)


def decode_exec(data: bytes) -> ExecMessage:
    """Decode a message sent to an execution's coordinator."""
    try:
        return _exec_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MessageError(f"not a valid execution message: {exc}") from exc


def decode_command(data: bytes) -> CommandIssued:
    """Decode a command sent to a runner pool."""
    try:
        return _command_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MessageError(f"not a valid command: {exc}") from exc


def decode_start(
    data: bytes, *, default_id: int, msg_id: str | None
) -> StartExecution | CancelExecution:
    """Decode a request published by anyone to `noetl.start`, as JSON or msgpack.

    A start is `{"path": ..., "version"?: ..., "workload"?: {...}}`; a cancellation is
    `{"t": "cancel", "execution_id": ..., "reason"?: ...}`. External systems may omit
    `execution_id` and `dedup_id` of a start: the caller supplies a deterministic
    `default_id`, so a redelivered request starts the same execution.
    """
    raw: Any
    try:
        if data[:1] in (b"{", b" ", b"\n"):
            raw = msgspec.json.decode(data)
        else:
            raw = msgspec.msgpack.decode(data)
    except msgspec.DecodeError as exc:
        raise MessageError(f"start request is neither JSON nor msgpack: {exc}") from exc
    if not isinstance(raw, dict):
        raise MessageError("start request must be an object with at least `path`")
    kind = raw.setdefault("t", "start")
    if kind == "cancel":
        if not isinstance(raw.get("execution_id"), int | str):
            raise MessageError("a cancel request needs `execution_id`")
        raw["execution_id"] = int(raw["execution_id"])
        raw.setdefault("dedup_id", msg_id or cancel_id(raw["execution_id"]))
        target: type[StartExecution | CancelExecution] = CancelExecution
    elif kind == "start":
        raw.setdefault("execution_id", default_id)
        raw.setdefault("dedup_id", msg_id or start_id(raw["execution_id"]))
        target = StartExecution
    else:
        raise MessageError(f"`noetl.start` takes start or cancel requests, not `{kind}`")
    try:
        return msgspec.convert(raw, target)
    except (msgspec.ValidationError, ValueError) as exc:
        raise MessageError(f"invalid {kind} request: {exc}") from exc
