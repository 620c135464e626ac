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
    drawn = display.window_bytes(d.mods["flair"], d.windows["flair"])  # what the browser draws by default
    # Cropped to the brain (uad's brain mask: non-zero voxels, negative ones included) plus the margin.
    m = display.CROP_MARGIN
    assert drawn.shape[0] <= 13 + 2 * m and drawn.shape[1] <= 19 + 2 * m and drawn.shape[2] <= 17 + 2 * m, drawn.shape
    assert len(d.slice_labels) == drawn.shape[0]
    # The background stays black: the margin around the brain is 0 in every slice.
    assert drawn[:, 0, :].max() == 0 and drawn[:, :, -1].max() == 0
    # Tissue fills the grey range (percentiles over brain voxels): its median is mid-grey, not squashed.
    tissue = drawn[drawn > 0]
    assert 60 < np.median(tissue) < 200, np.median(tissue)


def test_display_window_uses_brain_percentiles():
    vol = np.zeros((4, 50, 50), np.float32)
    brain = np.zeros(vol.shape, bool)
    brain[:, 5:45, 5:45] = True
    vol[brain] = np.linspace(100, 200, brain.sum())
    vol[0, 5, 5] = -50  # a negative edge voxel
    vol[1, 6, 6] = 1e6  # one outlier
    window = display.display_window(vol, brain)
    assert 95 < window[0] < 105 and 195 < window[1] < 205  # neither the outlier nor the background moves it
    out = display.window_bytes(vol, window)
    assert out[~brain].max() == 0
    assert out[1, 6, 6] == 255 and out[0, 5, 5] == 0
    assert 100 < np.median(out[brain]) < 155


def test_bounding_box_unit_codes_and_file_values():
    mask = np.zeros((10, 20, 30), bool)
    mask[3:5, 4:9, 10:12] = True
    box = display.bounding_box(mask, margin=2)
    assert box == (slice(1, 7), slice(2, 11), slice(8, 14))
    codes = display.unit_codes(np.array([0.0, 0.5, 1.0, 2.0, -1.0]))
    assert codes.dtype == np.uint16 and np.allclose(codes / display.UNIT_CODES, [0, 0.5, 1, 1, 0], atol=1e-5)
    assert display.file_values(np.array([1.0, -3.0, 700.0], np.float32)).dtype == np.int16  # integers travel exactly
    assert display.file_values(np.array([1.5, 2.0], np.float32)).dtype == np.float32
    assert display.file_values(np.array([1.0, 70000.0], np.float32)).dtype == np.float32  # beyond int16


@pytest.mark.parametrize("affine", [BRATS_AFFINE, np.diag([1.0, 1.0, 1.0, 1.0]),
                                    np.array([[0, 0, -2.0, 10], [1.5, 0, 0, -4], [0, 1.0, 0, 3], [0, 0, 0, 1]])],
                         ids=["LPS-stored", "RAS-stored", "oblique-axes"])
def test_display_values_are_the_files_own_at_the_voxel_the_mapping_names(tmp_path, affine):
    """The viewer's readout: each drawn voxel's value is the file's own value at the voxel index ``to_voxel``
    names, and its scanner position is the file's affine at that index (checked against nibabel)."""
    vols, seg = phantom()
    write_case(tmp_path / "c", "BraTS2021_00001", vols, seg, affine=affine)
    case = discover_cases(tmp_path / "c")[0][0]
    d = display.load_display_case(case)
    flair = nib.load(case.modalities["flair"])
    data, labels = np.asarray(flair.dataobj), np.asarray(nib.load(case.seg).dataobj)
    assert d.mods["flair"].dtype == np.int16 and np.allclose(d.affine, flair.affine)
    rng = np.random.default_rng(0)
    grid = np.stack([rng.integers(0, n, 200) for n in d.shape], axis=1)
    ijk = (d.to_voxel @ np.c_[grid, np.ones(len(grid))].T)[:3].T
    assert np.allclose(ijk, np.round(ijk)) and (ijk >= 0).all() and (ijk < np.array(data.shape)).all()
    ijk = np.round(ijk).astype(int)
    for (z, y, x), (i, j, k) in zip(grid, ijk):
        assert d.mods["flair"][z, y, x] == data[i, j, k]
        assert d.labels[z, y, x] == labels[i, j, k]
    # The source slice index the viewer names each Z by is the k of its voxels (axial = the file's third axis here
    # only when the file is stored axially: compare through the mapping instead).
    z = d.shape[0] // 2
    k_axis = int(np.argmax(np.abs(d.to_voxel[:3, 0])))
    assert d.slice_labels[z] == int(round((d.to_voxel @ [z, 0, 0, 1])[k_axis]))


def test_display_start_and_label_counts(tmp_path):
    vols, seg = phantom()
    write_case(tmp_path / "c", "BraTS2021_00002", vols, seg)
    d = display.load_display_case(discover_cases(tmp_path / "c")[0][0])
    counts = d.counts
    whole = (d.labels > 0).sum(axis=(1, 2))
    assert counts["whole"] == whole.tolist() and set(counts) == {"whole", "1", "2", "4"}
    assert sum(np.array(counts[k]) for k in ("1", "2", "4")).tolist() == counts["whole"]
    z, y, x = d.start
    assert z == int(np.argmax(whole)) and d.labels[z, y, x] > 0  # on the tumour's largest slice, inside the tumour
    assert display.start_position((5, 8, 8), None) == [2, 4, 4]
    assert display.start_position((5, 8, 8), np.zeros((5, 8, 8), bool), 1) == [1, 4, 4]


def test_a_bad_modality_costs_only_itself_and_the_segmentation_is_read_once(tmp_path):
    vols, seg = phantom()
    folder = write_case(tmp_path / "c", "BraTS2021_00003", vols, seg)
    (folder / "BraTS2021_00003_t1.nii.gz").write_bytes(b"not a nifti")
    d = display.load_display_case(discover_cases(tmp_path / "c")[0][0])
    assert set(d.mods) == {"flair", "t1ce", "t2"} and "not a readable NIfTI" in d.errors["t1"]
    assert d.labels is not None and d.seg_error is None
    (folder / "BraTS2021_00003_seg.nii.gz").write_bytes(b"broken")
    d = display.load_display_case(discover_cases(tmp_path / "c")[0][0])
    assert "flair" in d.mods and d.labels is None and "seg" in d.seg_error and "flair" not in d.errors
    (folder / "BraTS2021_00003_flair.nii.gz").write_bytes(b"broken too")
    d = display.load_display_case(discover_cases(tmp_path / "c")[0][0])
    assert "flair" in d.errors and set(d.mods) == {"t1ce", "t2"} and "seg" in d.seg_error


def test_build_spec_checks_the_grid_and_the_types():
    a = np.zeros((3, 4, 5), np.uint8)
    common = dict(case_id="c", source="s", spacing=(1, 1, 1), slice_labels=[0, 1, 2], start=[9, 9, 9], colours={})
    spec = viewer.build_spec(volumes={"a": viewer.Volume(a)}, panels=[viewer.Panel("A", "a")], **common)
    assert spec["start"] == [2, 3, 4] and spec["volumes"]["a"]["arg"] == "v0" and spec["convention"] == "radiological"
    assert spec["volumes"]["a"]["dtype"] == "uint8"
    with pytest.raises(ValueError, match="share one"):
        viewer.build_spec(volumes={"a": viewer.Volume(a), "b": viewer.Volume(np.zeros((3, 4, 6), np.uint8))}, panels=[], **common)
    with pytest.raises(ValueError, match="not among the volumes"):
        viewer.build_spec(volumes={"a": viewer.Volume(a)}, panels=[viewer.Panel("B", "b")], **common)
    with pytest.raises(ValueError, match="float64"):
        viewer.build_spec(volumes={"a": viewer.Volume(a.astype(np.float64))}, panels=[], **common)
    # The threshold reads a float32 map (exact values) and a uint8 mask.
    bad = {"map": "a", "mask": "a"}
    with pytest.raises(ValueError, match="threshold's map must be a float32"):
        viewer.build_spec(volumes={"a": viewer.Volume(a)}, panels=[], threshold=bad, **common)
    # Volumes travel little-endian whatever their byte order here, and their hash says their type.
    big = np.arange(60, dtype=">i2").reshape(3, 4, 5)
    assert viewer.volume_hash(big) == viewer.volume_hash(big.astype("<i2")) and "int16" in viewer.volume_hash(big)


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


@pytest.mark.parametrize("affine", [BRATS_AFFINE, np.array([[0, 0, -2.0, 10], [1.5, 0, 0, -4], [0, 1.0, 0, 3], [0, 0, 0, 1]])],
                         ids=["LPS-stored", "oblique-axes"])
@pytest.mark.parametrize("size", [64, 96])
def test_working_grid_maps_each_working_pixel_to_its_source_voxel(tmp_path, affine, size):
    """Explore's readout: a working-size pixel's position in the source file, through the crop and resize."""
    from nibabel import orientations

    from uad.data.preprocess import PreprocessConfig, preprocess_case
    from uad.scoring import view

    vols, seg = phantom(shape=(60, 52, 24))
    write_case(tmp_path / "c", "BraTS2021_00004", vols, seg, affine=affine)
    case = discover_cases(tmp_path / "c")[0][0]
    prep = preprocess_case(case, PreprocessConfig(image_size=size))
    grid = view.working_grid(prep)
    geo = prep.geometry
    assert grid.n == int(geo.kept[-1] - geo.kept[0]) + 1 and [grid.slice_labels[z] for z in grid.z_of] == prep.slice_index.tolist()
    s, r, c = np.meshgrid(np.arange(len(geo.kept)), np.arange(size), np.arange(size), indexing="ij")
    points = np.stack([grid.z_of[s.ravel()], r.ravel(), c.ravel(), np.ones(s.size)])
    mapped = (grid.to_voxel @ points)[:3]
    # away from the zero padding where the square crop leaves the image, and from the crop's edge (where the
    # resize repeats the edge pixel instead of interpolating)
    inside = np.all((mapped > 1) & (mapped < np.array(geo.source_shape)[:, None] - 2), axis=0)
    inside &= (np.minimum(r, c).ravel() >= 2) & (np.maximum(r, c).ravel() < size - 2)
    assert inside.mean() > 0.3
    for axis in range(3):  # resample "the source index along this axis" as the models' slices are made
        index = np.indices(geo.source_shape)[axis].astype(np.float32)
        working = geo.to_working(orientations.apply_orientation(index, geo.ornt))
        assert np.abs(mapped[axis][inside] - working[s.ravel(), r.ravel(), c.ravel()][inside]).max() < 0.1, axis  # a tenth of a voxel
    assert np.allclose(grid.affine, affine)


def test_a_threshold_compares_in_the_maps_precision_whatever_its_type():
    """A map value equal to the float32 rounding of the threshold, below the threshold itself: flagged the same way
    for a Python float and a numpy float64 (and by the browser, which compares against Math.fround)."""
    from uad.scoring.postprocess import threshold_maps

    t = 0.7
    assert float(np.float32(t)) < t
    maps = np.full((1, 2, 2), np.float32(t), np.float32)
    assert threshold_maps(maps, t).all() and threshold_maps(maps, np.float64(t)).all()


def test_explore_start_and_threshold_range(tmp_path):
    from uad.data.preprocess import PreprocessConfig, preprocess_case
    from uad.scoring import view
    from uad.scoring.maps import VolumeScores

    vols, seg = phantom(shape=(48, 48, 30))
    write_case(tmp_path / "c", "BraTS2021_00005", vols, seg)
    prep = preprocess_case(discover_cases(tmp_path / "c")[0][0], PreprocessConfig(image_size=64))
    maps = np.where(prep.brain, 0.1, 0).astype(np.float32)
    vs = VolumeScores(maps, maps.max(axis=(1, 2)), prep.brain.copy())
    grid = view.working_grid(prep)
    z, y, x = view.start(prep, vs, grid)
    k = int(np.argmax(prep.tumour_pixels))
    assert z == grid.z_of[k] and prep.tumour[k, y, x]
    top = view.threshold_range(vs, [(0.01, 0.5), (0.05, 0.2)])
    assert top >= 0.5 * 1.2 and view.default_threshold(vs, [(0.01, 0.5), (0.05, 0.2)], top) == 0.2
    assert view.default_threshold(vs, [], top) == pytest.approx(view.colour_max([vs]) * 0.5)


NODE_HARNESS = r"""
// Runs viewer.js's threshold arithmetic outside a browser: the DOM it touches on load is stubbed.
const fs = require("fs"), vm = require("vm");
const stub = () => new Proxy(function () {}, { get: (t, k) => (k === "dataset" || k === "style" ? {} : stub()), apply: () => stub() });
const ctx = { document: { getElementById: () => ({ dataset: {}, addEventListener() {}, getBoundingClientRect: () => ({ height: 0 }) }),
                          createElement: () => stub(), body: stub() },
              window: { addEventListener() {}, parent: { postMessage() {} }, sessionStorage: { getItem: () => null, setItem() {} } },
              performance, console, Math, JSON, Object, Array, Number, Float32Array, Uint8Array, Int32Array };
vm.createContext(ctx);
vm.runInContext(fs.readFileSync(process.argv[2], "utf8"), ctx);
const d = JSON.parse(fs.readFileSync(process.argv[3], "utf8"));
const load = (f, T) => { const b = fs.readFileSync(f); return new T(b.buffer, b.byteOffset, b.byteLength / T.BYTES_PER_ELEMENT); };
ctx.maps = load(d.maps, Float32Array); ctx.mask = load(d.mask, Uint8Array); ctx.truth = load(d.truth, Uint8Array);
vm.runInContext(`S.spec = ${JSON.stringify(d.spec)}; S.thr = { key: "k", value: 0 };
  S.vols = { map0: { data: maps }, brain: { data: mask }, tumour: { data: truth } };`, ctx);
const out = d.thresholds.map((t) => { vm.runInContext(`applyThreshold(${t})`, ctx);
  return JSON.parse(vm.runInContext("JSON.stringify({ counts: S.thr.counts, slice: S.thr.slice })", ctx)); });
console.log(JSON.stringify(out));
"""


@pytest.mark.skipif(__import__("shutil").which("node") is None, reason="needs node to run viewer.js outside a browser")
@pytest.mark.parametrize("min_component", [0, 20])
def test_viewer_js_threshold_arithmetic_equals_uads(tmp_path, min_component):
    """viewer.js's applyThreshold against VolumeScores.prediction and uad.scoring.overlap on synthetic maps with
    the edge cases the browser tests may not meet: kept slices with gaps (components connect across them, as
    uad's stack rows do), thresholds at 0 (voxels outside the brain form components), equal to a map value, and
    above every value. The Chromium tests (tests/test_browser.py) check the same on real pages."""
    import json
    import subprocess

    from scipy import ndimage as ndi

    from uad.scoring import overlap
    from uad.scoring.maps import VolumeScores
    from uad.scoring.recipe import PostprocessConfig, ScoringRecipe

    rng = np.random.default_rng(1)
    S, H, W = 18, 36, 40
    maps = ndi.gaussian_filter(rng.random((S, H, W)).astype(np.float32), 1.5).astype(np.float32)
    mask = np.zeros((S, H, W), bool)
    mask[:, 3:33, 4:36] = True
    maps *= mask
    truth = (maps > np.quantile(maps, 0.9)) & (rng.random(maps.shape) > 0.2)
    z_of = np.r_[0:4, 5:18, 19]  # gaps at 4 and 18 on the viewer's grid
    n = int(z_of[-1]) + 1

    def grid(a):
        out = np.zeros((n, H, W), a.dtype)
        out[z_of] = a
        return out

    files = {k: tmp_path / f"{k}.bin" for k in ("maps", "mask", "truth")}
    grid(maps).astype("<f4").tofile(files["maps"])
    grid(mask.astype(np.uint8)).tofile(files["mask"])
    grid(truth.astype(np.uint8)).tofile(files["truth"])
    inside = np.sort(maps[mask])
    # a double a quarter of a float32 step above map values: numpy compares float32(threshold), so those values pass
    between = [float(v) + float(np.spacing(v)) / 4 for v in (inside[-100], inside[-3000])]
    thresholds = [0.0, float(inside[len(inside) // 2]), float(np.quantile(inside, 0.9)), float(inside[-50]),
                  float(np.nextafter(inside[-200], 1, dtype=np.float32)), *between, 0.7, float(inside[-1]) + 1]
    spec = {"shape": [n, H, W], "threshold": {"map": "map0", "mask": "brain", "truth": "tumour",
                                              "min_component": min_component, "kept_z": z_of.tolist()}}
    (tmp_path / "d.json").write_text(json.dumps({"spec": spec, **{k: str(v) for k, v in files.items()}, "thresholds": thresholds}))
    (tmp_path / "harness.js").write_text(NODE_HARNESS)
    js = Path(viewer.__file__).parent / "viewer_frontend" / "viewer.js"
    got = json.loads(subprocess.run(["node", str(tmp_path / "harness.js"), str(js), str(tmp_path / "d.json")],
                                    capture_output=True, text=True, check=True, timeout=120).stdout)
    vs = VolumeScores(maps, maps.max(axis=(1, 2)), mask, None, ScoringRecipe(post=PostprocessConfig(min_component=min_component)))
    none = lambda a: [None if isinstance(v, float) and np.isnan(v) else v for v in np.asarray(a).tolist()]  # noqa: E731
    removed = 0
    for t, r in zip(thresholds, got):
        pred = vs.prediction(t)
        c = overlap.Counts.of(pred, truth & mask)
        per = overlap.per_slice(pred, truth & mask)
        assert (r["counts"]["tp"], r["counts"]["fp"], r["counts"]["fn"]) == (c.tp, c.fp, c.fn), t
        assert r["counts"]["dice"] == (None if np.isnan(c.dice) else c.dice), t
        for key in ("flagged", "tumour", "dice"):
            assert [r["slice"][key][z] for z in z_of] == none(per[key]), (key, t)
        assert all(r["slice"]["flagged"][z] is None for z in range(n) if z not in z_of)
        removed += int(((maps >= np.float32(t)) & mask).sum()) - c.tp - c.fp
    assert (removed > 0) == (min_component > 1)  # the component rule did act when asked to


@pytest.mark.parametrize("report, held", [
    ({"have": ["a1", "b2"]}, ["a1", "b2"]),
    ({"have": []}, []),
    (None, None), ("x", None), ({"have": "a1"}, None), ({"have": [1]}, None), ({"have": ["x" * 81]}, None),
    ({"have": ["h"] * 257}, None), ({"missing": ["a"]}, None),
])
def test_what_a_frame_says_it_holds_is_checked_before_it_saves_a_send(report, held):
    """The browser's report of the volumes it holds decides what is not sent: anything but a short list of short
    texts is not trusted (the volumes are then sent)."""
    assert viewer._holds(report) == held
