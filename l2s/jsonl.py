"""Append-only JSON-lines logs (eval samples, distill sample caches), read back after a kill.

A kill can cut the last line short. `read_log` cuts such a fragment off the file (with a warning naming it)
before anything new is appended, so a new record never fuses with it and the lost record is simply made again.
A line that does not parse anywhere else is corruption, not an interruption: a one-line error names the file
and the line.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

logger = logging.getLogger("l2s")


class CorruptFile(ValueError):
    """A file the product wrote that does not read back: the message names the file and the line."""


def read_log(path: str | Path) -> list[dict]:
    """The records of a JSON-lines log (none if it does not exist), its cut-off last line removed."""
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    complete = data.rfind(b"\n") + 1
    if complete < len(data):  # the last write was cut short: drop the fragment, it is redone
        logger.warning(
            "%s: dropping a cut-off last line (%d bytes) left by an interrupted run", path, len(data) - complete
        )
        with open(path, "r+b") as handle:
            handle.truncate(complete)
            os.fsync(handle.fileno())
        data = data[:complete]
    records = []
    for number, line in enumerate(data.decode().splitlines(), start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise CorruptFile(
                f"{path}:{number}: not a JSON record ({error.msg}); delete the file to redo its work"
            ) from None
        if not isinstance(record, dict):
            raise CorruptFile(f"{path}:{number}: not a JSON object; delete the file to redo its work")
        records.append(record)
    return records


def read_json(path: str | Path, what: str = "file") -> dict:
    """A JSON file the product wrote (a calibration, a registry, a run's state): a clear error if it is not."""
    path = Path(path)
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise CorruptFile(f"{path}: no such {what}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        where = f":{error.lineno}" if isinstance(error, json.JSONDecodeError) else ""
        raise CorruptFile(f"{path}{where}: not a valid JSON {what} ({error})") from None
    if not isinstance(value, dict):
        raise CorruptFile(f"{path}: not a JSON object, so not a {what}")
    return value
