"""RFC 3339 timestamps: the only wire format for time in cordtrio documents."""

from __future__ import annotations

from datetime import UTC, datetime


def format_ts(value: datetime | None) -> str | None:
    """Aware datetime → RFC 3339 UTC string with a ``Z`` suffix (None stays None)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_ts(value: object, *, field: str = "timestamp") -> datetime | None:
    """RFC 3339 string (or datetime) → aware UTC datetime; empty → None.

    Raises ``ValueError`` naming ``field`` for anything else.
    """
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    if not isinstance(value, str):
        raise ValueError(f"{field}: expected an RFC 3339 string, got {type(value).__name__}")
    text = value.strip()
    if text.endswith(("z", "Z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"{field}: not an RFC 3339 timestamp: {value!r}") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)
