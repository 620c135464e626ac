"""A checkpoint's description (``checkpoint.json``), found, read and checked without torch.

Checkpoints: ``model.safetensors`` + ``checkpoint.json``, committed as a whole folder, never unpickled.

``CheckpointRecord.read`` is the one reader of ``checkpoint.json``: every field is checked for type and
bounds when it is read, as strictly as when it is written (``weights.save`` builds the record through the
same checks), and a record is covered by ``record_sha256``, the SHA-256 of the canonical JSON of its other
fields, so an edited record is refused just as edited weights are (``weights_sha256``). Records written
before the hash existed are accepted, and say so (``verified`` is False). What a model's hyper-parameters
may be is declared on its constructor and checked by ``weights.load`` (``uad.models.check_hparams``)
before anything is built; here they only have to be plain scalars.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uad.core import fields, fileio
from uad.core.errors import CheckpointError, UADError
from uad.data import identity, provenance
from uad.data.preprocess_config import PreprocessConfig

log = logging.getLogger("uad.checkpoints")


FORMAT_VERSION = 1


WEIGHTS = "model.safetensors"


META = "checkpoint.json"


TRAINING_STATE = "training_state.safetensors"


TRAINING_META = "training_state.json"


RECORD_HASH = "record_sha256"
MAX_RECORD_BYTES = 64 * 1024 * 1024  # a real record is tens of kB per thousand cases
MAX_TEXT = 10_000
MAX_ITEMS = 200_000
MAX_DEPTH = 8
WEIGHT_DTYPES = ("float32", "float16", "bfloat16")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_MODEL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _complete(folder: Path) -> bool:
    try:
        return isinstance(fileio.read_json(folder / META), dict)
    except (OSError, ValueError):
        return False


def _recover(folder: Path) -> None:
    """Put back a checkpoint folder whose writer was killed between moving the old one aside and renaming
    the new one in (see ``fileio.write_folder``). Nothing to do (and nothing written) when it is there."""
    if folder.exists() or folder.name == META:
        return
    try:
        if fileio.recover_folder(folder, _complete):
            log.warning("%s: recovered after an interrupted save", folder)
    except OSError:  # a read-only folder: nothing can be put back, and nothing is lost by reading on
        pass


def resolve(path: str | Path) -> Path:
    """A checkpoint folder from a checkpoint folder, its checkpoint.json, or a run folder (best/, else last/)."""
    path = Path(path)
    if path.name == META:
        path = path.parent
    _recover(path)
    if (path / META).is_file():
        return path
    for sub in ("best", "last"):
        _recover(path / sub)
        if (path / sub / META).is_file():
            return path / sub
    if not path.exists():
        raise CheckpointError(path, "no such run or checkpoint folder")
    raise CheckpointError(path, f"no checkpoint here (expected {META} in it, or in best/ or last/)")


def canonical_hash(fields: dict[str, Any]) -> str:
    """SHA-256 of ``fields`` as canonical JSON (sorted keys, no spaces): what ``record_sha256`` holds."""
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# -- typed parts -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CaseFile:
    """One source file of a training case: its path relative to the data root (or the repository, in
    records written before that) and its size, by which a dataset is recognised elsewhere."""

    file: str
    bytes: int


@dataclass(frozen=True)
class SplitRecord:
    """The patient split the checkpoint was trained with: ratios + seed, and the exact case lists."""

    ratios: tuple[float, float, float] | None = None
    seed: int = 0
    cases: dict[str, tuple[str, ...]] | None = None  # {"train", "val", "test"} → case ids

    def to_dict(self) -> dict[str, Any]:
        return {"ratios": list(self.ratios) if self.ratios is not None else None, "seed": self.seed,
                "cases": {k: list(v) for k, v in self.cases.items()} if self.cases is not None else None}


@dataclass(frozen=True)
class DataRecord:
    """The data the checkpoint was trained on: its root as recorded (relative to the repository for the
    shipped ones), whether it was the demo cohort, and each case's files with their sizes."""

    root: str | None = None
    demo: bool = False
    cases: dict[str, tuple[CaseFile, ...]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"root": self.root, "demo": self.demo,
                "cases": {cid: [{"file": f.file, "bytes": f.bytes} for f in files] for cid, files in self.cases.items()}}


@dataclass(frozen=True)
class CheckpointRecord:
    """A checkpoint's ``checkpoint.json``, every field checked (see the module's docstring)."""

    folder: Path | None
    model: str
    hparams: dict[str, Any]
    preprocess: PreprocessConfig | None  # None only in records saved without one (tests): not scorable
    weights_sha256: str
    format_version: int = FORMAT_VERSION
    weights_dtype: str = "float32"
    split: SplitRecord = field(default_factory=SplitRecord)
    data: DataRecord = field(default_factory=DataRecord)
    train: dict[str, Any] = field(default_factory=dict)  # the training settings as asked: shown, never rebuilt
    epoch: int | None = None
    step: int | None = None
    val_loss: float | None = None
    best_val_loss: float | None = None
    best_selection: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    saved: str | None = None
    training_data: dict[str, str] | None = None  # name, description, citation, terms (the shipped ones)
    shipped: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # fields this version does not know: kept, never used
    record_sha256: str | None = None

    # -- reading --------------------------------------------------------------------------------------------
    @classmethod
    def read(cls, path: str | Path) -> "CheckpointRecord":
        """The record of a checkpoint folder, its ``checkpoint.json``, or a run folder (its best/, else last/).
        A CheckpointError naming the file says what is wrong with it."""
        folder = resolve(path)
        meta = folder / META
        try:
            size = meta.stat().st_size
            if size > MAX_RECORD_BYTES:
                raise CheckpointError(meta, f"{size:,} bytes: far larger than a checkpoint description can be")
            raw = fileio.read_json(meta)
        except CheckpointError:
            raise
        except ValueError as exc:
            raise CheckpointError(meta, f"corrupt checkpoint description ({exc})") from None
        except OSError as exc:
            raise CheckpointError(meta, f"unreadable ({exc.strerror or exc})") from None
        except RecursionError:
            raise CheckpointError(meta, "corrupt checkpoint description (nested too deeply)") from None
        return cls.from_dict(raw, folder)

    @classmethod
    def from_dict(cls, raw: Any, folder: str | Path | None = None) -> "CheckpointRecord":
        """Check ``raw`` (a checkpoint.json's content) field by field; CheckpointError naming the first problem."""
        where = Path(folder) / META if folder is not None else META
        if not isinstance(raw, dict) or "model" not in raw or "hparams" not in raw:
            raise CheckpointError(where, "not a uad checkpoint description (no model or hparams)")
        try:
            return cls._parse(raw, Path(folder) if folder is not None else None)
        except _Bad as exc:
            raise CheckpointError(where, str(exc)) from None
        except UADError as exc:  # PreprocessConfig's own checks
            raise CheckpointError(where, f"preprocess: {exc}") from None

    @classmethod
    def _parse(cls, raw: dict[str, Any], folder: Path | None) -> "CheckpointRecord":
        stored_hash = raw.get(RECORD_HASH)
        if stored_hash is not None:
            if not isinstance(stored_hash, str) or not _HEX64.fullmatch(stored_hash):
                raise _Bad(f"{RECORD_HASH} must be 64 hex digits, got {_show(stored_hash)}")
            body = {k: v for k, v in raw.items() if k != RECORD_HASH}
            try:
                actual = canonical_hash(body)
            except ValueError:  # NaN or infinity somewhere: never written by uad
                actual = ""
            if actual != stored_hash:
                raise _Bad("the record was changed after it was saved (its SHA-256 does not match record_sha256)")
        version = _int(raw, "format_version", 1, FORMAT_VERSION, default=FORMAT_VERSION)
        model = raw["model"]
        if not isinstance(model, str) or not _MODEL_NAME.fullmatch(model):
            raise _Bad(f"model must be a model name, got {_show(model)}")
        hparams = raw["hparams"]
        if not isinstance(hparams, dict) or len(hparams) > 64:
            raise _Bad(f"hparams must be a JSON object of at most 64 settings, got {_show(hparams)}")
        for key, value in hparams.items():
            if isinstance(value, (list, dict)) and len(key) <= 64:  # a composite model's parts (an ensemble's members)
                _plain(value, f"hparams {key}")
                continue
            if len(key) > 64 or not (value is None or isinstance(value, (bool, str)) or _finite(value)):
                raise _Bad(f"hparams {key[:64]} must be a number, true/false or a short text, got {_show(value)}")
            if isinstance(value, str) and len(value) > 64:
                raise _Bad(f"hparams {key} is {len(value)} characters long; a setting is a short word")
        preprocess = PreprocessConfig.from_dict(raw["preprocess"]) if raw.get("preprocess") is not None else None
        if preprocess is not None:  # what training always writes: the model sized by its data
            channels, size = hparams.get("in_channels", len(preprocess.modalities)), hparams.get("image_size", preprocess.image_size)
            if channels != len(preprocess.modalities) or size != preprocess.image_size:
                raise _Bad(f"hparams (in_channels {_show(channels)}, image_size {_show(size)}) disagree with preprocess "
                           f"({len(preprocess.modalities)} modalities at {preprocess.image_size} px)")
        weights = raw.get("weights_sha256")
        if not isinstance(weights, str) or not _HEX64.fullmatch(weights):
            raise _Bad(f"weights_sha256 must be 64 hex digits, got {_show(weights)}")
        dtype = raw.get("weights_dtype", "float32")
        if dtype not in WEIGHT_DTYPES:
            raise _Bad(f"weights_dtype must be one of {', '.join(WEIGHT_DTYPES)}, got {_show(dtype)}")
        known = {"format_version", "model", "hparams", "preprocess", "weights_sha256", "weights_dtype", "split",
                 "data", "train", "epoch", "step", "val_loss", "best_val_loss", "best_selection", "versions",
                 "saved", "training_data", "shipped", RECORD_HASH}
        extra = {k: v for k, v in raw.items() if k not in known}
        _plain(extra, "record")
        return cls(
            folder=folder, model=model, hparams=dict(hparams), preprocess=preprocess, weights_sha256=weights,
            format_version=version, weights_dtype=dtype, split=_split(raw.get("split")), data=_data(raw.get("data")),
            train=_object(raw, "train"), epoch=_int(raw, "epoch", 0, 10**9), step=_int(raw, "step", 0, 10**12),
            val_loss=_float(raw, "val_loss"), best_val_loss=_float(raw, "best_val_loss"),
            best_selection=_text(raw, "best_selection", 200), versions=_strings(raw, "versions", 100),
            saved=_text(raw, "saved", 64), training_data=_strings(raw, "training_data", 2000, optional=True),
            shipped=_object(raw, "shipped", optional=True), extra=extra, record_sha256=stored_hash)

    # -- what it says --------------------------------------------------------------------------------------
    @property
    def verified(self) -> bool:
        """Whether the record carries its own hash (records written before it existed do not: their fields
        are checked, but an edit to them cannot be told from the original)."""
        return self.record_sha256 is not None

    @property
    def trained_root(self) -> Path | None:
        """The folder the checkpoint was trained on, on this machine (the demo cohort wherever this home
        keeps it); None when not recorded."""
        return identity.trained_data_root(self.data.root, self.data.demo)

    @property
    def training_description(self) -> dict[str, Any]:
        """What it was trained on, in words a user can cite (``uad.data.provenance``)."""
        return provenance.training_data(self.training_data, self.data.demo, self.data.root)

    def to_dict(self) -> dict[str, Any]:
        """The record as ``checkpoint.json`` stores it, without ``record_sha256`` (``weights.save`` adds it)."""
        out: dict[str, Any] = {
            "format_version": self.format_version, "model": self.model, "hparams": dict(self.hparams),
            "preprocess": self.preprocess.to_dict() if self.preprocess is not None else None, "train": dict(self.train), "split": self.split.to_dict(),
            "data": self.data.to_dict(), "epoch": self.epoch, "step": self.step, "val_loss": self.val_loss,
            "best_val_loss": self.best_val_loss, "best_selection": self.best_selection,
            "weights_sha256": self.weights_sha256, "weights_dtype": self.weights_dtype,
            "versions": dict(self.versions), "saved": self.saved,
        }
        if self.training_data is not None:
            out["training_data"] = dict(self.training_data)
        if self.shipped is not None:
            out["shipped"] = dict(self.shipped)
        out.update(self.extra)
        return out

    def sealed(self) -> dict[str, Any]:
        """``to_dict`` with its ``record_sha256``: what ``weights.save`` writes."""
        body = fileio.json_safe(self.to_dict())
        return {**body, RECORD_HASH: canonical_hash(body)}


def check_compatible(record: CheckpointRecord, preprocess, where: Path | str = "") -> None:
    """Raise if the checkpoint was trained on other channels or another image size than ``preprocess``."""
    trained = record.preprocess
    if trained is None:
        raise CheckpointError(where, "records no preprocessing settings, so data cannot be prepared for it")
    if list(trained.modalities) != list(preprocess.modalities):
        raise CheckpointError(where, f"trained on modalities {' '.join(trained.modalities)}, but the data asks for "
                                     f"{' '.join(preprocess.modalities)}")
    if trained.image_size != preprocess.image_size:
        raise CheckpointError(where, f"trained at image size {trained.image_size}, but the data asks for {preprocess.image_size}")


# -- field checks ------------------------------------------------------------------------------------------------
# The scalar checks are uad.core.fields' (one rule for every record: absent or null takes the default); a failed
# check is turned into a CheckpointError naming the file.
_Bad = fields.FieldError
_show = fields.show
_finite = fields.finite
_int = fields.whole
_float = fields.number
_text = fields.text


def _strings(raw: dict, key: str, limit: int, optional: bool = False) -> dict[str, str] | None:
    value = raw.get(key)
    if value is None:
        return None if optional else {}
    if not isinstance(value, dict) or len(value) > 64 or not all(
            isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= limit for k, v in value.items()):
        raise _Bad(f"{key} must be a JSON object of short texts, got {_show(value)}")
    return dict(value)


def _object(raw: dict, key: str, optional: bool = False) -> dict[str, Any] | None:
    value = raw.get(key)
    if value is None:
        return None if optional else {}
    if not isinstance(value, dict):
        raise _Bad(f"{key} must be a JSON object, got {_show(value)}")
    _plain(value, key)
    return dict(value)


def _plain(value: Any, where: str, depth: int = 0) -> None:
    """Plain, bounded JSON: finite numbers, short texts, not too many items nor too deep."""
    if depth > MAX_DEPTH:
        raise _Bad(f"{where} is nested more than {MAX_DEPTH} levels deep")
    if value is None or isinstance(value, bool) or _finite(value):
        return
    if isinstance(value, str):
        if len(value) > MAX_TEXT:
            raise _Bad(f"{where} holds a text of {len(value):,} characters")
        return
    if isinstance(value, (list, dict)):
        if len(value) > MAX_ITEMS:
            raise _Bad(f"{where} holds {len(value):,} items")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for k, v in items:
            _plain(v, f"{where}.{k}", depth + 1)
        return
    raise _Bad(f"{where} must be a finite number, a text, a list or an object, got {_show(value)}")


_CASE_ID = re.compile(r"[^/\\\x00]{1,255}")


def _case_id(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _CASE_ID.fullmatch(value) or value in (".", ".."):
        raise _Bad(f"{where}: {_show(value)} is not a case id (a folder name)")
    return value


def _split(value: Any) -> SplitRecord:
    if value is None:
        return SplitRecord()
    if not isinstance(value, dict):
        raise _Bad(f"split must be a JSON object, got {_show(value)}")
    ratios = value.get("ratios")
    if ratios is not None:
        if not (isinstance(ratios, list) and len(ratios) == 3 and all(_finite(r) and 0 <= r <= 1 for r in ratios)
                and ratios[0] > 0 and abs(sum(ratios) - 1) < 1e-6):
            raise _Bad(f"split ratios must be three numbers in [0, 1] summing to 1, got {_show(ratios)}")
        ratios = tuple(float(r) for r in ratios)
    seed = _int(value, "seed", 0, 2**63 - 1, default=0)
    cases = value.get("cases")
    if cases is not None:
        if not isinstance(cases, dict) or set(cases) - {"train", "val", "test"}:
            raise _Bad(f"split cases must be an object with train, val and test lists, got {_show(cases)}")
        seen: dict[str, str] = {}
        parsed = {}
        for part in ("train", "val", "test"):
            ids = cases.get(part, [])
            if not isinstance(ids, list) or len(ids) > MAX_ITEMS:
                raise _Bad(f"split cases {part} must be a list of case ids, got {_show(ids)}")
            for cid in ids:
                _case_id(cid, f"split cases {part}")
                if cid in seen:
                    raise _Bad(f"split: case {cid} is in both the {seen[cid]} and the {part} list")
                seen[cid] = part
            parsed[part] = tuple(ids)
        cases = parsed
    return SplitRecord(ratios, seed, cases)


def _data(value: Any) -> DataRecord:
    if value is None:
        return DataRecord()
    if not isinstance(value, dict):
        raise _Bad(f"data must be a JSON object, got {_show(value)}")
    root = value.get("root")
    if root is not None and (not isinstance(root, str) or len(root) > 4096 or "\x00" in root):
        raise _Bad(f"data root must be a folder name, got {_show(root)}")
    demo = value.get("demo", False)
    if not isinstance(demo, bool):
        raise _Bad(f"data demo must be true or false, got {_show(demo)}")
    cases = value.get("cases", {})
    if not isinstance(cases, dict) or len(cases) > MAX_ITEMS:
        raise _Bad(f"data cases must be a JSON object of case ids, got {_show(cases)}")
    parsed = {}
    for cid, entry in cases.items():
        _case_id(cid, "data cases")
        # Written as [{"file", "bytes"}]; before that as a cache fingerprint {"files": [[path, size, mtime]]}.
        items = entry.get("files") if isinstance(entry, dict) else entry
        if not isinstance(items, list) or len(items) > 64:
            raise _Bad(f"data cases {cid} must list the case's files, got {_show(entry)}")
        files = []
        for item in items:
            path, size = (item.get("file"), item.get("bytes")) if isinstance(item, dict) else \
                (item[0], item[1]) if isinstance(item, list) and len(item) >= 2 else (None, None)
            if not isinstance(path, str) or not 0 < len(path) <= 4096 or isinstance(size, bool) \
                    or not isinstance(size, int) or not 0 <= size < 2**50:
                raise _Bad(f"data cases {cid}: a file must have a name and a size in bytes, got {_show(item)}")
            files.append(CaseFile(path, size))
        parsed[cid] = tuple(files)
    return DataRecord(root, demo, parsed)
