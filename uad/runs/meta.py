"""What the user calls a run: a name, tags and a note (meta.json), checked as strictly when read as when written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from uad.core import fileio
from uad.core.errors import ConfigError
from uad.runs.folders import read_object

META = "meta.json"
MAX_NAME, MAX_TAG, MAX_NOTE = 120, 40, 5000


def read_meta(run_dir: str | Path) -> dict[str, Any]:
    """meta.json as {"name": str | None, "tags": [str], "note": str}; defaults when missing or unreadable."""
    raw = read_object(Path(run_dir) / META) or {}
    name = raw.get("name") if isinstance(raw.get("name"), str) and raw.get("name") else None
    tags = [t for t in raw.get("tags", []) if isinstance(t, str)] if isinstance(raw.get("tags"), list) else []
    note = raw.get("note") if isinstance(raw.get("note"), str) else ""
    return {"name": name, "tags": tags, "note": note}


def check_tag(tag: str) -> str:
    tag = str(tag).strip()
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
    meta = read_meta(run_dir)
    if name is not _UNCHANGED:
        name = (name or "").strip()
        if len(name) > MAX_NAME or "\n" in name:
            raise ConfigError(f"run name: one line of at most {MAX_NAME} characters")
        meta["name"] = name or None
    if tags is not None:
        meta["tags"] = []
    for tag in [*(tags or []), *add_tags]:
        tag = check_tag(tag)
        if tag not in meta["tags"]:
            meta["tags"].append(tag)
    drop = {str(t).strip() for t in remove_tags}
    meta["tags"] = [t for t in meta["tags"] if t not in drop]
    if note is not None:
        if len(note) > MAX_NOTE:
            raise ConfigError(f"run note: at most {MAX_NOTE} characters, got {len(note)}")
        meta["note"] = note.strip()
    fileio.write_json(run_dir / META, meta)
    return meta

