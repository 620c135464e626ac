"""What the user calls a run: a name, tags and a note (meta.json), checked as strictly when read as when written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from uad.core import fileio
from uad.core.errors import ConfigError, DataError
from uad.runs.folders import read_record, refuse_shipped

META = "meta.json"
MAX_NAME, MAX_TAG, MAX_NOTE, MAX_TAGS = 120, 40, 5000, 100


def read_meta(run_dir: str | Path) -> dict[str, Any]:
    """meta.json as {"name": str | None, "tags": [str], "note": str}; defaults when there is none. A name,
    tag or note that ``update_meta`` would refuse is a DataError naming the file."""
    path = Path(run_dir) / META
    raw = read_record(path)
    if raw is None:
        return {"name": None, "tags": [], "note": ""}
    if not isinstance(raw, dict):
        raise DataError(path, f"damaged run labels: expected a JSON object, got {type(raw).__name__}")
    try:
        name = raw.get("name")
        if name is not None:
            name = check_name(name)
        tags = raw.get("tags", [])
        if not isinstance(tags, list) or len(tags) > MAX_TAGS:
            raise ConfigError(f"tags must be a list of at most {MAX_TAGS} tags")
        tags = [check_tag(t) if isinstance(t, str) else _not_text("tag", t) for t in tags]
        note = raw.get("note", "")
        note = check_note(note) if isinstance(note, str) else _not_text("note", note)
    except ConfigError as exc:
        raise DataError(path, f"damaged run labels ({exc})") from None
    return {"name": name or None, "tags": tags, "note": note}


def _not_text(what: str, value: Any):
    raise ConfigError(f"{what} must be text, got {value!r}"[:200])


def check_name(name: Any) -> str:
    if not isinstance(name, str):
        _not_text("run name", name)
    name = name.strip()
    if len(name) > MAX_NAME or "\n" in name or "\r" in name:
        raise ConfigError(f"run name: one line of at most {MAX_NAME} characters")
    return name


def check_note(note: str) -> str:
    if len(note) > MAX_NOTE:
        raise ConfigError(f"run note: at most {MAX_NOTE} characters, got {len(note)}")
    return note.strip()


def check_tag(tag: str) -> str:
    if not isinstance(tag, str):
        _not_text("tag", tag)
    tag = tag.strip()
    if not tag or len(tag) > MAX_TAG or any(c.isspace() or c == "," for c in tag):
        raise ConfigError(f"tag {tag!r}: one word of 1 to {MAX_TAG} characters, without spaces or commas")
    return tag


_UNCHANGED: Any = object()


def update_meta(run_dir: str | Path, *, name: str | None = _UNCHANGED, tags: list[str] | None = None,
                add_tags: list[str] = (), remove_tags: list[str] = (), note: str | None = None) -> dict[str, Any]:
    """Change a run's name (None or "" clears it), its tags (replace, add or remove) or its note; written atomically."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such run folder")
    refuse_shipped(run_dir, "renamed, tagged or noted")
    meta = read_meta(run_dir)
    if name is not _UNCHANGED:
        meta["name"] = check_name(name or "") or None
    if tags is not None:
        meta["tags"] = []
    for tag in [*(tags or []), *add_tags]:
        tag = check_tag(tag)
        if tag not in meta["tags"]:
            meta["tags"].append(tag)
    drop = {str(t).strip() for t in remove_tags}
    meta["tags"] = [t for t in meta["tags"] if t not in drop]
    if note is not None:
        meta["note"] = check_note(note)
    if len(meta["tags"]) > MAX_TAGS:
        raise ConfigError(f"a run has at most {MAX_TAGS} tags")
    fileio.write_json(run_dir / META, meta)
    return meta

