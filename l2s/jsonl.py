"""Reading files back: append-only JSON-lines logs (eval samples, distill sample caches) after a kill, JSON files
the product wrote, YAML recipes and configs a user wrote.

A kill can cut a log's last line short. `read_log` cuts such a fragment off the file (with a warning naming it)
before anything new is appended, so a new record never fuses with it and the lost record is simply made again.
A line that does not parse anywhere else is corruption, not an interruption: a one-line error names the file
and the line.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import yaml

logger = logging.getLogger("l2s")


class CorruptFile(ValueError):
    """A file that does not read back (one the product wrote, or a recipe or config): the message names the file
    and the line."""


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


def read_yaml(path: str | Path, what: str = "file") -> dict:
    """A YAML mapping (a recipe, a server config, the variant registry); empty for an empty file; a one-line error
    naming the file and the line if it does not parse."""
    path = Path(path)
    try:
        value = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise CorruptFile(f"{path}: no such {what}") from None
    except UnicodeDecodeError as error:
        raise CorruptFile(f"{path}: not a text file, so not a {what} ({error.reason})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise CorruptFile(f"{path}{where}: not valid YAML, so not a {what} ({problem})") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CorruptFile(f"{path}: not a mapping of settings, so not a {what}")
    return value
