"""Rewrite checkpoint records (``checkpoint.json``) in today's format, sealed with their ``record_sha256``.

    python scripts/reseal_checkpoints.py checkpoints/*/best checkpoints/real/*/best

Each record is read through ``CheckpointRecord`` (every field checked, as when loading), its training
cases' files are recorded relative to the data root (records from before that listed them relative to
the repository, with modification times), and it is written back atomically with its hash. The weights
are never touched: their SHA-256 must match the record before and after. ``--demo-root`` sets the data
root of demo-cohort checkpoints (the shipped ones record ``data/demo``, relative to the repository, and
no build machine's folder).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from uad.checkpoints.record import META, WEIGHTS, CaseFile, CheckpointRecord  # noqa: E402
from uad.core import fileio  # noqa: E402


def relative_files(record: CheckpointRecord) -> CheckpointRecord:
    """Case files relative to the data root, where they were recorded relative to the repository."""
    root = (record.data.root or "").rstrip("/")
    if not root:
        return record
    cases = {cid: tuple(CaseFile(f.file[len(root) + 1:] if f.file.startswith(root + "/") else f.file, f.bytes)
                        for f in files) for cid, files in record.data.cases.items()}
    return replace(record, data=replace(record.data, cases=cases))


def reseal(folder: Path, demo_root: str) -> str:
    record = CheckpointRecord.read(folder)
    weights = record.folder / WEIGHTS
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    if digest != record.weights_sha256:
        raise SystemExit(f"{weights}: does not match its record; not resealing")
    if record.data.demo:
        # Old demo records listed files as <demo root>/<case>/<file> relative to the repository.
        old_root = record.data.root
        record = replace(record, data=replace(record.data, root=demo_root))
        if old_root and old_root.rstrip("/") != demo_root:
            record = relative_files(replace(record, data=replace(record.data, root=demo_root)))
    record = relative_files(record)
    fileio.write_json(record.folder / META, record.sealed())
    again = CheckpointRecord.read(record.folder)
    assert again.verified and again.weights_sha256 == digest
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == digest
    return f"{record.folder}: sealed ({again.record_sha256[:12]}…), data root {again.data.root}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", type=Path, help="checkpoint or run folders")
    p.add_argument("--demo-root", default="data/demo", help="data root recorded for demo-cohort checkpoints")
    args = p.parse_args()
    for folder in args.folders:
        print(reseal(folder, args.demo_root))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
