"""The error every layer may raise, at the bottom so that judges and policies need not import loop,
and the one reader of user text files that turns bad bytes into such an error."""

from __future__ import annotations

from pathlib import Path


class ConfigError(Exception):
    """A config problem the user can fix; the message names the field and what to set."""


def read_utf8(path: Path, error: type[Exception] = ConfigError) -> str:
    """The file's text; a file that is not UTF-8 raises `error` naming the line and byte."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise error(
            f"{path}:{line}: not UTF-8 text (byte {e.start}: {data[e.start : e.start + 1]!r}); save it as UTF-8"
        ) from None
