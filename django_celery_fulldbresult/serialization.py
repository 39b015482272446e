"""How task arguments and results are turned into text for the database, and back.

Arguments are stored as JSON text with kombu's encoder, the one Celery's own
``json`` serializer uses: ``json.loads(record.args)`` gives the list the task
received, and the ``{"__type__": ..., "__value__": ...}`` markers kombu writes
for datetimes, UUIDs, decimals and bytes are decoded back by kombu when the
task is sent again, so a retry gets the same values as the original.

Results are stored with the project's ``result_serializer`` and their content
type, or, with ``USE_JSON``, as plain JSON a database can query.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from celery.utils.serialization import b64decode, b64encode
from celery.utils.time import maybe_iso8601
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from kombu.exceptions import EncodeError
from kombu.serialization import loads as kombu_loads
from kombu.utils import json as kombu_json

from .conf import PREFIX, app_settings

if TYPE_CHECKING:
    from celery.backends.base import Backend

JSON_CONTENT_TYPE = "application/json"
REDACTED = "[redacted]"
UNSERIALIZABLE_KEY = "__unserializable__"


class EncodedArguments(NamedTuple):
    args: str
    kwargs: str
    #: Empty when the stored arguments are exactly what the task received.
    not_retryable_reason: str


class EncodedResult(NamedTuple):
    content_type: str
    content_encoding: str
    text: str | None


def clean_text(value: Any) -> str | None:
    """Make a value storable in any text column of every supported database.

    PostgreSQL refuses NUL characters in text and every driver refuses lone
    surrogates (left by ``surrogateescape``); both are written as escapes.
    """
    if value is None:
        return None
    text = value if isinstance(value, str) else safe_str(value)
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if not text.isascii():  # (ASCII text, the usual, always encodes: no encoding to try)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def safe_str(value: Any) -> str:
    """``str(value)``, and something readable when ``__str__`` raises."""
    try:
        return str(value)
    except Exception:  # a broken __str__ must not lose the record
        try:
            return repr(value)
        except Exception:
            return f"<unprintable {type(value).__qualname__} object>"


def _placeholder(value: Any) -> dict[str, str]:
    return {UNSERIALIZABLE_KEY: clean_text(safe_str(value)) or ""}


#: ``kombu.utils.json.dumps(value)`` is ``JSONEncoder().encode(value)`` with kombu's
#: encoder class and the standard options; made once here, not at each call (an
#: encoder holds only its options, and is safe to share between threads).
_KOMBU_JSON = kombu_json.JSONEncoder()


def encode_arguments(args: Any, kwargs: Any) -> EncodedArguments:
    """Encode a task's positional and keyword arguments as JSON text."""
    args = list(args) if isinstance(args, Sequence) and not isinstance(args, str) else []
    kwargs = dict(kwargs) if isinstance(kwargs, Mapping) else {}
    reasons = []
    redact = app_settings.REDACT_KWARGS
    if redact:
        hidden = sorted(name for name in kwargs if name in redact)
        if hidden:
            kwargs.update(dict.fromkeys(hidden, REDACTED))
            reasons.append(str(_("keyword arguments redacted: %s")) % ", ".join(hidden))
    try:
        encoded_args = _KOMBU_JSON.encode(args)
        encoded_kwargs = _KOMBU_JSON.encode(kwargs)
    except (TypeError, ValueError, RecursionError) as exc:
        # Keep what can be shown; the record must exist even if the task
        # cannot be sent again from it.
        encoded_args = "[%s]" % ", ".join(_readable(value) for value in args)
        encoded_kwargs = "{%s}" % ", ".join(
            f"{_KOMBU_JSON.encode(safe_str(name))}: {_readable(value)}" for name, value in kwargs.items()
        )
        reasons.append(str(_("arguments are not JSON-serializable: %s")) % safe_str(exc))
    return EncodedArguments(encoded_args, encoded_kwargs, "; ".join(reasons))


def _readable(value: Any) -> str:
    """One argument as JSON, what JSON cannot hold replaced by a placeholder.

    A value JSON fails on whole, whatever ``default`` says (a dict with tuple
    keys, a circular reference, a pickled message's nesting deeper than the
    recursion limit), is one placeholder.
    """
    try:
        return kombu_json.dumps(value, default=_placeholder)
    except (TypeError, ValueError, RecursionError):
        return _KOMBU_JSON.encode(_placeholder(value))


def as_datetime(value: Any) -> datetime | None:
    """A datetime from a message's ISO 8601 text, as the project stores them.

    Aware (a naive one is UTC, as Celery reads it) with ``USE_TZ = True``;
    naive, in the current time zone, with ``USE_TZ = False``, where SQLite
    and MySQL refuse aware datetimes.
    """
    if value is None or value == "":
        return None
    if not isinstance(value, datetime):
        value = maybe_iso8601(value)
    if timezone.is_naive(value):
        value = timezone.make_aware(value, UTC)
    if not settings.USE_TZ:
        return timezone.make_naive(value)
    return value  # type: ignore[no-any-return]


def queue_from_delivery(delivery_info: dict[str, Any]) -> str | None:
    """The queue a message came from, where the delivery info tells it.

    Brokers do not report the queue, only the exchange and routing key. With
    Celery's default routing a queue's exchange and routing key are both its
    name, or the exchange is the default ('') one and the key is the name.
    """
    if "queue" in delivery_info:
        return delivery_info["queue"]  # type: ignore[no-any-return]
    exchange, routing_key = delivery_info.get("exchange"), delivery_info.get("routing_key")
    if routing_key and exchange in ("", None, routing_key):
        return routing_key  # type: ignore[no-any-return]
    return None


def decode_arguments(args: str | None, kwargs: str | None) -> tuple[list[Any], dict[str, Any]]:
    """Decode stored arguments to the values the task was called with."""
    decoded_args = kombu_json.loads(args) if args else []
    decoded_kwargs = kombu_json.loads(kwargs) if kwargs else {}
    if not isinstance(decoded_args, list) or not isinstance(decoded_kwargs, dict):
        raise ValueError(_("stored arguments are not a JSON list and object"))
    return decoded_args, decoded_kwargs


def _not_json_message(result: Any) -> str:
    return str(
        _(
            "The task's result (%(type)s) is not JSON-serializable and "
            "%(use)s is on. Return a JSON-serializable value, or set "
            "%(force)s = True to store its string representation."
        )
        % {
            "type": type(result).__qualname__,
            "use": PREFIX + "USE_JSON",
            "force": PREFIX + "FORCE_JSON",
        }
    )


def encode_result(backend: Backend, result: Any) -> EncodedResult:
    """Encode a result (already prepared by Celery's ``encode_result``).

    Raises :class:`kombu.exceptions.EncodeError` when the result cannot be
    stored: Celery's tracer then records the task as FAILURE with that error,
    so it is never left PENDING or STARTED.
    """
    if result is None:
        return EncodedResult(JSON_CONTENT_TYPE, "utf-8", None)
    if app_settings.USE_JSON:
        if isinstance(result, BaseException):
            result = backend.prepare_exception(result, "json")  # type: ignore[arg-type]
        try:
            try:
                text = json.dumps(result, cls=DjangoJSONEncoder, allow_nan=False)
            except (TypeError, ValueError):
                storable = _storable_exception(result)
                if storable is result:
                    raise
                text = json.dumps(storable, cls=DjangoJSONEncoder, allow_nan=False)
        except (TypeError, ValueError) as exc:
            if not app_settings.FORCE_JSON:
                raise EncodeError(_not_json_message(result)) from exc
            text = json.dumps({"value": clean_text(safe_str(result)), "forced_json": True})
        return EncodedResult(JSON_CONTENT_TYPE, "utf-8", text)
    content_type, content_encoding, payload = backend._encode(result)  # type: ignore[attr-defined]
    if content_encoding == "binary":
        payload = b64encode(payload)
    if isinstance(payload, bytes):
        payload = payload.decode("utf-8")
    return EncodedResult(content_type, content_encoding, payload)


def _storable_exception(prepared: Any) -> Any:
    """An exception as Celery prepares it (``exc_type``, ``exc_message``...), its arguments as their text.

    Celery checks an exception's arguments against the backend's serializer
    (kombu's JSON, which takes bytes), not against the JSON stored here: an
    argument that does not fit (``ValueError(b"\\xff")``) is kept as its text,
    so the failure still reads back as the exception it was (wrapped whole
    by ``FORCE_JSON``, or refused without it, it read back as neither).
    Anything else is returned as it is.
    """
    if not isinstance(prepared, dict) or "exc_type" not in prepared:
        return prepared
    message = prepared.get("exc_message")
    if not isinstance(message, list | tuple):
        return prepared
    return {**prepared, "exc_message": [clean_text(safe_str(a)) for a in message]}


def decode_result(backend: Backend, content_type: str, content_encoding: str, text: str | None) -> Any:
    """Decode a stored result with the content type it was stored with.

    Refuses (``ContentDisallowed``) a content type the project's Celery config
    does not accept, so a pickled payload planted in the table is never
    unpickled unless the project accepts pickle.
    """
    if text is None or text == "":
        return None
    payload: str | bytes = text
    if content_encoding == "binary":
        payload = b64decode(text)  # type: ignore[arg-type]  # it takes str too
    return kombu_loads(
        payload,
        content_type=content_type or JSON_CONTENT_TYPE,
        content_encoding=content_encoding or "utf-8",
        accept=backend.accept,  # type: ignore[attr-defined]
    )
