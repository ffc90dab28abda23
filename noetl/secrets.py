"""Secret values: which values of a credential are secret, masking them (`***`) in anything
recorded or shown, and which names `{{ secret.NAME }}` templates read. Pure: no I/O here
(looking the names up is `noetl.store.credentials.resolve_secrets`).

Every plugin masks through `Masker` (plugins through `ToolContext.mask`): there is no other
scrubber, so a guarantee tested here holds for every tool.

What counts as secret in a credential (`secret_values`): every string anywhere in its data,
except under the public fields in `PUBLIC_FIELDS` (host, port, user, database, account,
region, endpoint_url, ...). Numbers count only under secret-looking keys (password, token,
pin, ...). Passwords inside URLs and DSNs, the token after `Bearer `, and the base64
`user:password` of basic auth are added, since they show up on their own in logs.

How masking works (`Masker`): a secret of at least `MIN_MASK_LENGTH` characters is replaced
wherever it occurs inside a string, and so are its JSON-escaped and URL-encoded forms;
overlapping or adjacent occurrences of several secrets become a single `***`. A shorter
secret is replaced only where a whole string equals it: masking it inside other text would
destroy the text while protecting nothing.
"""

from __future__ import annotations

import base64
import functools
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlsplit

from jinja2 import Environment, nodes
from jinja2.exceptions import TemplateSyntaxError

from noetl.errors import RenderError

__all__ = [
    "MASK",
    "MIN_MASK_LENGTH",
    "PUBLIC_FIELDS",
    "Masker",
    "names_by_root",
    "redact",
    "secret_env_name",
    "secret_names_in",
    "secret_value",
    "secret_values",
]

MASK: Final = "***"
MIN_MASK_LENGTH: Final = 4

PUBLIC_FIELDS: Final = frozenset({
    "type", "name", "host", "hostname", "port", "user", "username", "database", "dbname",
    "account", "warehouse", "schema", "role", "authenticator", "region", "region_name",
    "endpoint", "endpoint_url", "url", "base_url", "bucket", "project", "project_id",
    "sslmode", "client_email", "client_id", "auth_uri", "token_uri",
    "auth_provider_x509_cert_url", "client_x509_cert_url", "universe_domain",
})  # fmt: skip

# Keys under which even a number is a secret, and URL query parameters whose values are.
_SECRET_KEY: Final = re.compile(r"pass|pwd|token|secret|key|pin|auth|sig|credential", re.I)
# `{{ secret.NAME }}` prefers these fields when a credential has several secret ones.
_PREFERRED: Final = (
    "value",
    "secret",
    "token",
    "password",
    "api_key",
    "private_key",
    "aws_secret_access_key",
    "dsn",
)
_SCHEME_PREFIX: Final = re.compile(r"^(?:bearer|basic|token)\s+(\S+)$", re.I)
# key/value DSN: password=secret or password='it''s secret' (libpq quoting).
_KV_PASSWORD: Final = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.|'')*'|\S+)", re.I)
_SECRET_ROOT: Final = "secret"


# -- which values are secret ----------------------------------------------------------------


def secret_values(data: Mapping[str, Any]) -> set[str]:
    """The secret strings of a credential's data (see the module docstring for the rules)."""
    found: set[str] = set()
    _collect_secrets(data, None, found)
    found.discard("")
    return found


def _collect_secrets(value: Any, key: str | None, found: set[str]) -> None:
    public = key is not None and key.lower() in PUBLIC_FIELDS
    if isinstance(value, Mapping):
        for k, item in value.items():
            _collect_secrets(item, str(k), found)
        user = value.get("username", value.get("user"))
        password = value.get("password")
        if isinstance(user, str) and isinstance(password, str) and password:
            # What an `Authorization: Basic ...` header carries.
            found.add(base64.b64encode(f"{user}:{password}".encode()).decode("ascii"))
    elif isinstance(value, (list, tuple)):
        for item in value:
            _collect_secrets(item, key, found)
    elif isinstance(value, str):
        found.update(_embedded_secrets(value))
        if not public:
            found.add(value)
            prefixed = _SCHEME_PREFIX.match(value.strip())
            if prefixed:
                found.add(prefixed.group(1))
    elif (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and key is not None
        and not public
        and _SECRET_KEY.search(key)
    ):
        found.add(str(value))


def _embedded_secrets(text: str) -> set[str]:
    """Passwords inside a URL or DSN, and values of secret-looking URL query parameters."""
    found: set[str] = set()
    if "://" in text:
        try:
            parts = urlsplit(text)
            password = parts.password
            query = parse_qsl(parts.query)
        except ValueError:
            return found
        if password:
            found.update({password, unquote(password)})
        found.update(v for k, v in query if v and _SECRET_KEY.search(k))
    elif "=" in text:
        for match in _KV_PASSWORD.finditer(text):
            raw = match.group(2)
            found.add(raw)
            if raw.startswith("'"):
                found.add(raw[1:-1].replace("''", "'").replace("\\'", "'"))
    return found


def secret_value(name: str, data: Mapping[str, Any]) -> str:
    """The one value `{{ secret.NAME }}` stands for in credential `name`: its only secret
    field, else the first of value/secret/token/password/api_key/private_key/
    aws_secret_access_key/dsn present. Raises RenderError when it cannot tell."""
    fields = [
        k
        for k, v in data.items()
        if k.lower() not in PUBLIC_FIELDS
        and isinstance(v, (str, int, float))
        and not isinstance(v, bool)
    ]
    if len(fields) != 1:
        fields = [k for k in _PREFERRED if k in data][:1]
    if not fields:
        raise RenderError(
            f"credential `{name}` has no single secret value for `{{{{ secret.{name} }}}}` "
            f"(its fields: {', '.join(sorted(data)) or 'none'}); use it with `auth: {name}` "
            "in the tool instead"
        )
    return str(data[fields[0]])


# -- masking --------------------------------------------------------------------------------


class Masker:
    """Replaces known secret values with `***` in strings and nested structures."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        self._substrings: set[str] = set()
        self._whole: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._overlaps: re.Pattern[str] | None = None
        for value in values:
            self.add(value)

    def __bool__(self) -> bool:
        return bool(self._substrings or self._whole)

    def add(self, value: str) -> None:
        """Mask `value` from now on (with its JSON-escaped and URL-encoded forms, `%20` and
        `+` for spaces)."""
        if not value:
            return
        if len(value) < MIN_MASK_LENGTH:
            self._whole.add(value)
            return
        forms = {value, json.dumps(value)[1:-1], quote(value, safe=""), quote_plus(value)}
        new = forms - self._substrings
        if new:
            self._substrings |= new
            self._pattern = self._overlaps = None  # recompiled on next use

    def copy(self) -> Masker:
        """A masker of the same values; adding to it leaves this one as it is. The compiled
        patterns are shared until the copy learns a new value."""
        if self._substrings:
            self._compiled()  # once here, not once per copy
        twin = Masker()
        twin._substrings = set(self._substrings)
        twin._whole = set(self._whole)
        twin._pattern, twin._overlaps = self._pattern, self._overlaps
        return twin

    def update(self, values: Iterable[str]) -> None:
        """`add` each value."""
        for value in values:
            self.add(value)

    def mask_text(self, text: str) -> str:
        """`text` with every secret replaced by `***`."""
        if text in self._whole:
            return MASK
        if not self._substrings:
            return text
        pattern, overlaps = self._compiled()
        first = pattern.search(text)
        if first is None:
            return text
        # The lookahead finds, at every position, the longest secret starting there, so
        # overlapping secrets are found too; their spans are merged into one `***`.
        pieces: list[str] = []
        done = 0  # end of the text copied or masked so far
        span_start = span_end = -1
        for match in overlaps.finditer(text, first.start()):
            start, end = match.start(), match.start() + len(match.group(1))
            if start <= span_end:
                span_end = max(span_end, end)
                continue
            if span_end >= 0:
                pieces += (text[done:span_start], MASK)
                done = span_end
            span_start, span_end = start, end
        pieces += (text[done:span_start], MASK, text[span_end:])
        return "".join(pieces)

    def mask(self, obj: Any) -> Any:
        """`obj` with secrets masked in every string inside it, dict keys included.

        Dicts, lists and tuples are rebuilt only when something inside them changed, so
        with no secrets, or none present, the same object comes back.
        """
        if not self:
            return obj
        return self._mask(obj)

    def _mask(self, obj: Any) -> Any:
        if isinstance(obj, str):
            return self.mask_text(obj)
        if isinstance(obj, dict):
            changed = False
            items: list[tuple[Any, Any]] = []
            for key, item in obj.items():
                new_key, new_item = self._mask(key), self._mask(item)
                changed = changed or new_key is not key or new_item is not item
                items.append((new_key, new_item))
            return dict(items) if changed else obj
        if isinstance(obj, (list, tuple)):
            masked = [self._mask(item) for item in obj]
            if all(new is old for new, old in zip(masked, obj, strict=True)):
                return obj
            return masked if isinstance(obj, list) else tuple(masked)
        return obj

    def _compiled(self) -> tuple[re.Pattern[str], re.Pattern[str]]:
        if self._pattern is None or self._overlaps is None:
            # Longest first: at one position the alternation takes the first that matches.
            alternatives = "|".join(
                re.escape(s) for s in sorted(self._substrings, key=len, reverse=True)
            )
            self._pattern = re.compile(alternatives)
            self._overlaps = re.compile(f"(?=({alternatives}))")
        return self._pattern, self._overlaps


def redact(data: Mapping[str, Any]) -> dict[str, Any]:
    """A credential's data as it may be shown: public fields kept (with passwords inside
    URLs masked), `dsn` with its password masked, every other value `***`."""
    masker = Masker(secret_values(data))
    return {str(k): _redact(str(k), v, masker) for k, v in data.items()}


def _redact(key: str, value: Any, masker: Masker) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _redact(str(k), v, masker) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact(key, v, masker) for v in value]
    if value is None or isinstance(value, bool):
        return value
    if key.lower() in PUBLIC_FIELDS:
        return masker.mask(value)
    if key.lower() == "dsn" and isinstance(value, str):
        return Masker(_embedded_secrets(value)).mask_text(value)
    return MASK


# -- {{ secret.NAME }} ----------------------------------------------------------------------


def secret_env_name(name: str) -> str:
    """The environment variable that supplies secret `name` when no credential has that
    name: `NOETL_SECRET_` and the name upper-cased, other characters than letters and
    digits turned into `_` (`api-key` -> `NOETL_SECRET_API_KEY`)."""
    return "NOETL_SECRET_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper()


_PARSER: Final = Environment(autoescape=False)


def secret_names_in(value: Any, root: str = _SECRET_ROOT) -> set[str]:
    """The secret names the templates inside `value` read as `secret.NAME` or
    `secret['NAME']` (dict values, lists and tuples are walked, like `render.render`);
    `root` names another such mapping (`keychain`).

    Raises RenderError on a syntax error, or when a template uses `secret` any other way
    (`secret[name]`, `secret | tojson`, ...): which secrets to fetch must be known before
    rendering.
    """
    return names_by_root(value, (root,))[root]


def names_by_root(value: Any, roots: tuple[str, ...]) -> dict[str, set[str]]:
    """`secret_names_in` for each of `roots`, in one walk of `value`."""
    found: dict[str, set[str]] = {root: set() for root in roots}
    _collect_secret_names(value, found)
    return found


def _collect_secret_names(value: Any, found: dict[str, set[str]]) -> None:
    if isinstance(value, str):
        if "{{" in value or "{%" in value:
            for root, names in found.items():
                if root in value:
                    names.update(_secret_names_in_template(value, root))
    elif isinstance(value, dict):
        for item in value.values():
            _collect_secret_names(item, found)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _collect_secret_names(item, found)


@functools.lru_cache(maxsize=4096)
def _secret_names_in_template(source: str, root: str) -> frozenset[str]:
    try:
        tree = _PARSER.parse(source)
    except TemplateSyntaxError as exc:
        raise RenderError(
            f"syntax error at line {exc.lineno} of {source[:300]!r}: {exc.message}"
        ) from exc
    uses = sum(1 for node in tree.find_all(nodes.Name) if node.name == root and node.ctx == "load")
    names: set[str] = set()
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        if not (
            isinstance(node, (nodes.Getattr, nodes.Getitem))
            and isinstance(node.node, nodes.Name)
            and node.node.name == root
        ):
            continue
        if isinstance(node, nodes.Getattr):
            names.add(node.attr)
            uses -= 1
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            names.add(node.arg.value)
            uses -= 1
    if uses:
        raise RenderError(
            f"{source[:300]!r}: `{root}` can only be read by a literal name, as {root}.NAME "
            f"or {root}['NAME']"
        )
    return frozenset(names)
