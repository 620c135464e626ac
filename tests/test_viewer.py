"""The viewer's display logic without a browser: orientation, display scaling, cropping, label conventions,
the component's input, and which run Explore opens first."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import BRATS_AFFINE, phantom, write_case

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "app"))
import viewer  # noqa: E402

from uad.data import display, labels  # noqa: E402
from uad.data.cases import discover_cases  # noqa: E402
from uad.data.preprocess import screen_columns  # noqa: E402


def marker_case(root: Path, affine=BRATS_AFFINE):
    """A phantom whose brightest blob lies on the patient's LEFT (negative world x, whatever the affine)."""
    vols, _ = phantom(tumour=False)
    shape = vols["flair"].shape
    brain = vols["flair"] > 0
    i, j, k = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    world_x = affine[0, 0] * i + affine[0, 3]
    left = world_x < np.percentile(world_x[brain], 25)  # the left quarter of the brain, in world (RAS) terms
    for mod in vols:
        vols[mod][brain & left & (np.abs(j - shape[1] // 2) < 6)] = 3000
    write_case(root, "BraTS2021_00077", vols, None, affine=affine)
    return discover_cases(root)[0][0]


def small_brain_case(root: Path):
    """A small brain (radii 8, 9, 6 voxels) in a 40 x 40 x 20 grid, with negative values along its edge."""
    shape = (40, 40, 20)
    rng = np.random.default_rng(0)
    i, j, k = np.meshgrid(*[np.arange(s) - (s - 1) / 2 for s in shape], indexing="ij")
    r = np.sqrt((i / 8) ** 2 + (j / 9) ** 2 + (k / 6) ** 2)
    vol = np.where(r < 1, 300 + 40 * np.sin(i) + rng.normal(0, 5, shape), 0)
    # Negative values on a few voxels of the brain's edge: 0.12 % of the brain in TCGA-DU-7294, 0.2 % here.
    shell = np.flatnonzero((r >= 0.9) & (r < 1))
    edge = rng.choice(shell, int((r < 1).sum()) // 500, replace=False)
    vol.flat[edge] = -rng.integers(1, 55, edge.size)
    write_case(root, "BraTS2021_00078", {m: vol.astype(np.int16) for m in ("flair", "t1")}, None)
    return discover_cases(root)[0][0]


def brightest_side(image: np.ndarray) -> str:
    cols = np.nonzero(image >= image.max() * 0.9)[1]
    return "left" if cols.mean() < image.shape[1] / 2 else "right"


@pytest.mark.parametrize("affine", [BRATS_AFFINE, np.diag([1.0, 1.0, 1.0, 1.0])], ids=["LPS-stored", "RAS-stored"])
def test_patient_left_is_drawn_on_the_screen_right_in_radiological_convention(tmp_path, affine):
    d = display.load_display_case(marker_case(tmp_path / "c", affine))
    stack = d.mods["flair"]
    z = stack.shape[0] // 2
    assert brightest_side(viewer.screen_axial(stack, z, "radiological")) == "right"
    assert brightest_side(viewer.screen_axial(stack, z, "neurological")) == "left"
    with pytest.raises(ValueError, match="unknown convention"):
        screen_columns(4, "sideways")


def test_display_scaling_with_negative_edge_values(tmp_path):
    """Issue 11 #6: negative edge values neither grey the background nor defeat the crop to the brain."""
    d = display.load_display_case(small_brain_case(tmp_path / "c"))
    flair = d.mods["flair"]
    # Cropped to the brain (uad's brain mask: non-zero voxels, negative ones included) plus the margin.
    m = display.CROP_MARGIN
    assert flair.shape[0] <= 13 + 2 * m and flair.shape[1] <= 19 + 2 * m and flair.shape[2] <= 17 + 2 * m, flair.shape
    assert len(d.slice_labels) == flair.shape[0]
    # The background stays black: the margin around the brain is 0 in every slice.
    assert flair[:, 0, :].max() == 0 and flair[:, :, -1].max() == 0
    # Tissue fills the grey range (percentiles over brain voxels): its median is mid-grey, not squashed.
    tissue = flair[flair > 0]
    assert 60 < np.median(tissue) < 200, np.median(tissue)


def test_window_to_uint8_uses_brain_percentiles():
    vol = np.zeros((4, 50, 50), np.float32)
    brain = np.zeros(vol.shape, bool)
    brain[:, 5:45, 5:45] = True
    vol[brain] = np.linspace(100, 200, brain.sum())
    vol[0, 5, 5] = -50  # a negative edge voxel
    vol[1, 6, 6] = 1e6  # one outlier
    out = display.window_to_uint8(vol, brain)
    assert out[~brain].max() == 0
    assert out[1, 6, 6] == 255 and out[0, 5, 5] == 0
    assert 100 < np.median(out[brain]) < 155


def test_bounding_box_and_quantise():
    mask = np.zeros((10, 20, 30), bool)
    mask[3:5, 4:9, 10:12] = True
    box = display.bounding_box(mask, margin=2)
    assert box == (slice(1, 7), slice(2, 11), slice(8, 14))
    q = display.quantise(np.array([0.0, 0.5, 1.0, 2.0]), vmax=1.0)
    assert q.tolist() == [0, 128, 255, 255]


def test_build_spec_checks_the_grid():
    a = np.zeros((3, 4, 5), np.uint8)
    common = dict(case_id="c", source="s", kinds={}, spacing=(1, 1, 1), slice_labels=[0, 1, 2], start=[9, 9, 9], colours={})
    spec = viewer.build_spec(volumes={"a": a}, panels=[viewer.Panel("A", "a")], **common)
    assert spec["start"] == [2, 3, 4] and spec["volumes"]["a"]["arg"] == "v0" and spec["convention"] == "radiological"
    with pytest.raises(ValueError, match="share one"):
        viewer.build_spec(volumes={"a": a, "b": np.zeros((3, 4, 6), np.uint8)}, panels=[], **common)
    with pytest.raises(ValueError, match="not among the volumes"):
        viewer.build_spec(volumes={"a": a}, panels=[viewer.Panel("B", "b")], **common)


def test_canonical_spacing_follows_the_reorientation():
    affine = np.array([[0, 0, -2.0, 0], [1.5, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 0, 1]])
    ornt = nib.orientations.io_orientation(affine)
    from uad.data.preprocess import canonical_spacing

    assert canonical_spacing(affine, ornt) == (2.0, 1.5, 3.0)


def test_label_conventions():
    assert labels.convention({1, 2, 4}).description.startswith("BraTS 2021")
    assert labels.convention({1, 2, 3}).names[3] == labels.ENHANCING
    assert labels.convention({1, 2, 3, 4}).names[3] == labels.NON_ENHANCING
    assert "no enhancing tumour" in labels.convention({1, 2}).description
    empty = labels.convention(set())
    assert "No tumour" in empty.description and empty.names == {}
    assert labels.region(4, {1, 4}) == labels.ENHANCING and labels.region(7, {7}) is None


def _info(path: Path, name: str, state: str, shipped=False, auroc=None, data_root=None, model="autoencoder"):
    from uad.runs import listing

    path.mkdir(parents=True, exist_ok=True)
    if auroc is not None:
        (path / "eval").mkdir(exist_ok=True)
        (path / "eval" / "metrics.json").write_text(f'{{"slice_auroc": {auroc}}}')
    return listing.RunInfo(path, name, model, state, shipped, {"state": state}, {"data_root": data_root})


def test_default_run_prefers_suggested_then_best_completed(tmp_path):
    from uad.jobs.choice import default_run

    newest_cancelled = _info(tmp_path / "c", "3-cancelled", "cancelled", auroc=0.99)
    weak = _info(tmp_path / "w", "2-weak", "completed", auroc=0.6)
    strong = _info(tmp_path / "s", "1-strong", "completed", auroc=0.8)
    here = _info(tmp_path / "h", "0-here", "completed", auroc=0.7, data_root=str(tmp_path / "data"))
    run, why = default_run([newest_cancelled, weak, strong], demo_active=True)
    assert run is strong and "0.800" in why
    run, _ = default_run([newest_cancelled, weak, strong, here], demo_active=False, data_root=tmp_path / "data")
    assert run is here  # trained on the active folder
    shipped = _info(tmp_path / "ship", "real/autoencoder", "completed", shipped=True)
    run, why = default_run([newest_cancelled, strong, shipped], demo_active=False)
    assert run is shipped and "real scans" in why
    run, why = default_run([newest_cancelled], demo_active=True)
    assert run is newest_cancelled and "no completed run" in why
    assert default_run([], demo_active=True)[0] is None


def test_default_run_ranks_runs_by_evaluations_in_the_per_dataset_layout(tmp_path):
    # Evaluations now live in <run>/eval/<dataset-id>/<split>/; the ranking must see them there too.
    from uad.jobs.choice import default_run

    weak = _info(tmp_path / "w", "2-weak", "completed")
    strong = _info(tmp_path / "s", "1-strong", "completed")
    for run, auroc in ((weak, 0.6), (strong, 0.8)):
        folder = run.path / "eval" / "demo" / "test"
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(f'{{"slice_auroc": {auroc}, "data_root": "data/demo", "split": "test"}}')
    run, why = default_run([weak, strong], demo_active=False)
    assert run is strong and "0.800" in why
