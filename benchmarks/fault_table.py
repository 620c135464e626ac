"""The fault table: every fault of issue #17 done for real, and what held.

    python benchmarks/fault_table.py            # runs the fault tests, prints a Markdown table
    python benchmarks/fault_table.py --list     # the table's rows without running anything
    python benchmarks/fault_table.py --junit report.xml   # the table from a finished test run
                                                          # (python -m pytest --junitxml=report.xml)

Each row is one test that does the thing in a temporary folder on tiny data (fills a small tmpfs, edits a
record, plants a pid, injects a label, kills a process, mounts a folder read-only, ...) and checks what a
user relies on. The table says what was tried, what must hold, and whether it held on this machine:
"held", "FAILED", or "skipped" with the reason (mounting a tmpfs or a read-only folder needs root; the
browser row needs Chromium and Playwright).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# (fault, what was tried, what must hold, pytest node ids)
ROWS = [
    ("full disk while caching (A)", "`prepare` and `train` with the slice cache on a 700 KiB tmpfs (6 cases)",
     "exit 2 with the disk-full error naming the cache folder; no partial case, no manifest; the run is marked failed",
     ["tests/test_trust.py::test_a_full_cache_disk_stops_with_the_disk_full_error_and_keeps_nothing_half_built"]),
    ("full disk during a checkpoint save (Q)", "`train --out` on a 400 KiB tmpfs",
     "exit 2 naming the checkpoint file being written; no half-written checkpoint folder",
     ["tests/test_trust.py::test_a_full_disk_during_a_checkpoint_save_names_the_file"]),
    ("damage inside the slice cache (F)", "40 KB of NaN written into the middle of a cached `images.npy`",
     "found by its full SHA-1 on the first read in a process and by `prepare`; rebuilt from the source, values equal",
     ["tests/test_trust.py::test_nan_in_the_middle_of_a_cached_case_is_found_and_rebuilt"]),
    ("foreign pid in status.json (D)", "`runs cancel` and the app's Cancel on a run whose status names a live "
     "`sleep` (plain, then with its start time forged)",
     "the process is never signalled; the run is marked cancelled; a real trainer is still cancelled",
     ["tests/test_trust.py::test_cancel_never_signals_a_process_that_is_not_the_runs_trainer",
      "tests/test_trust.py::test_cancel_signals_the_recorded_trainer"]),
    ("hostile labels (E)", "model name in config.json, run name, tags and note holding `<img src>`, "
     "Markdown images and links to a local server",
     "every page shows them as text (escaped Markdown); in Chromium no element links to or loads the address, "
     "and the server gets no request",
     ["tests/test_app.py::test_labels_from_users_and_files_reach_the_page_as_text",
      "tests/test_browser.py::test_hostile_labels_never_reach_the_browser_as_markup"]),
    ("one damaged run folder (G)", "`\"pid\": \"x\"`, `\"train\": \"zz\"`, a torn file, bad types in status.json, "
     "config.json, meta.json",
     "`runs list` and every app page list the other runs and the shipped checkpoints, naming the bad file; "
     "the damaged run can still be deleted",
     ["tests/test_trust.py::test_one_damaged_run_folder_is_skipped_by_name_and_hides_no_other",
      "tests/test_app.py::test_a_damaged_run_folder_is_named_and_hides_no_run"]),
    ("shipped checkpoints written to (C)", "`train --resume`/`--out` into a shipped checkpoint; `runs rename`, "
     "`tag`, `note`, `resume`, `cancel`, `archive`, `delete` on one",
     "all refused; not one file of the shipped folder is created or changed",
     ["tests/test_trust.py::test_shipped_checkpoints_are_never_written"]),
    ("runs outside runs/ (P)", "`runs rename|resume|tag|note|cancel|archive` on a run folder elsewhere",
     "refused (\"works only on folders directly under runs/\"); the folder is untouched",
     ["tests/test_trust.py::test_uad_runs_acts_only_on_folders_directly_under_runs"]),
    ("checkpoint.json edited or hostile (H)", "fields changed without and with the record hash recomputed: "
     "`test_time_drops: 1024`, `\"model\": [\"x\"]`, `\"preprocess\": \"x\"`, a folder named model.safetensors, ...",
     "an edit breaks `record_sha256`; every hostile field is a one-line error naming the file, within seconds; "
     "old records without the hash load and say so",
     ["tests/test_records.py"]),
    ("NaN, infinity and out-of-range options (I, O)", "every numeric option of every model at and just past its "
     "bounds, `--noise-std nan`, `--patch-size 0`, `--num-heads 0`, `--modalities flair flair`",
     "at the bound accepted; past it, NaN or infinity refused by the form, the CLI and training alike, "
     "before any run folder exists", ["tests/test_options.py"]),
    ("other patients under the recorded ids (J)", "`evaluate --data` on another folder whose case ids match the "
     "recorded test split but whose files differ", "refused, naming the cases that differ; `--split all` scores it as "
     "external; a copy of the same patients is still the recorded split",
     ["tests/test_trust.py::test_other_patients_under_the_recorded_ids_are_not_scored_as_the_recorded_split"]),
    ("archive during an evaluation (K)", "`runs archive` and `runs delete` while an evaluation of the run runs",
     "refused while it runs; afterwards archived and restored whole, no orphan `eval/`",
     ["tests/test_trust.py::test_archiving_a_run_while_it_is_evaluated_is_refused"]),
    ("kill -9 during a delete (L)", "`runs delete` killed with SIGKILL after it renamed the run out of sight",
     "the next `runs list` (or app page) finishes the delete and says so",
     ["tests/test_trust.py::test_a_delete_killed_midway_is_listed_and_finished"]),
    ("read-only folders (M)", "read-only bind mounts of the cache, the run folder and the output folders; "
     "`prepare`, `evaluate`, `score`, `report`, `train --resume`, `runs list`",
     "an up-to-date read-only cache and run are read without writing; what would write there is one line "
     "naming the folder", ["tests/test_trust.py::test_read_only_folders_are_read_without_writing_or_refused_clearly"]),
    ("250-character folder name (N)", "`prepare` and `evaluate` on a dataset folder named with 250 characters",
     "both work; every derived name stays within 255 bytes",
     ["tests/test_trust.py::test_a_250_character_dataset_folder_name_works"]),
    ("a header claiming 640 MB (NIfTI)", "a 1 MB gzip of zeros whose header claims 512 x 512 x 320 float64, beside "
     "a segmentation on another grid", "refused from the headers (grid mismatch) with under 100 MB read",
     ["tests/test_trust.py::test_every_header_is_checked_before_any_voxel_is_read"]),
    ("random damage to every record (fuzz)", "250 seeded mutations each of checkpoint.json, status.json, "
     "config.json, meta.json, metrics.json and 500 of NIfTI headers, fed to every reader",
     "a clear error or a skip each time, never another exception, never over 10 s", ["tests/test_fuzz.py"]),
]


def run(rows, junit: Path) -> dict[str, tuple[str, str]]:
    """Run every row's tests once; test id → (outcome, detail)."""
    ids = sorted({i for *_, tests in rows for i in tests})
    env = dict(os.environ)
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *ids],
                   cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return read_junit(junit)


def read_junit(junit: Path) -> dict[str, tuple[str, str]]:
    out = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        file = case.get("file") or case.get("classname", "").replace(".", "/") + ".py"
        node = f"{file}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            out[node] = ("FAILED", "")
        elif case.find("skipped") is not None:
            out[node] = ("skipped", (case.find("skipped").get("message") or "")[:120])
        else:
            out[node] = ("held", "")
    return out


def verdict(tests: list[str], results: dict[str, tuple[str, str]]) -> str:
    """One cell: "held" only if every test of the row passed."""
    mine = [(node, r) for node, r in results.items() if any(node.startswith(t.split("::")[0]) and
                                                            (("::" not in t) or node.split("[")[0] == t) for t in tests)]
    if not mine:
        return "not run"
    failed = [n for n, (o, _) in mine if o == "FAILED"]
    if failed:
        return f"**FAILED** ({len(failed)} of {len(mine)} tests)"
    skipped = [d for _, (o, d) in mine if o == "skipped"]
    if len(skipped) == len(mine):
        return f"skipped ({skipped[0]})"
    n = len(mine) - len(skipped)
    return f"held ({n} test{'s' if n != 1 else ''})" + (f", {len(skipped)} skipped" if skipped else "")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--list", action="store_true", help="print the rows without running them")
    p.add_argument("--junit", type=Path, help="read the outcomes from this pytest JUnit XML instead of running")
    args = p.parse_args()
    results: dict[str, tuple[str, str]] = {}
    t0 = time.perf_counter()
    if args.junit:
        results = read_junit(args.junit)
    elif not args.list:
        with tempfile.TemporaryDirectory() as tmp:
            results = run(ROWS, Path(tmp) / "junit.xml")
    print("| fault | what was tried | what held | result |")
    print("|---|---|---|---|")
    for fault, tried, held, tests in ROWS:
        cells = [fault, tried, held, verdict(tests, results) if results else "–"]
        print("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")  # a | in a cell would split it
    if results and not args.junit:
        print(f"\n{len(results)} tests, {time.perf_counter() - t0:.0f} s on {os.cpu_count()} CPU cores "
              f"({'root' if os.geteuid() == 0 else 'not root: mounting tests skip'}).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
