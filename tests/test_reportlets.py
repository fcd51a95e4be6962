"""Reportlets: the stage builders' figure nodes write every QC figure during a real small
run (not blank), builders without reportlets add no node, and the report assembled from
a fake output folder with registration files shows one section per run and no false
"missing" notes, with the registration's quality."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import jinja2
import matplotlib.image as mpimg
import nibabel as nb
import numpy as np
import pytest
from nipype.pipeline import engine as pe

from qsm_bids.bids.layout import find_runs
from qsm_bids.interfaces.load import LoadRun, run_to_json
from qsm_bids.interfaces.reportlets import (
    LabelsReportlet,
    RegistrationReportlet,
    Reportlets,
    reference_region,
)
from qsm_bids.interfaces.sign import CheckPhaseSign
from qsm_bids.pipeline.field import init_echo_combination_wf, init_mask_wf, init_unwrap_wf
from qsm_bids.pipeline.susceptibility import (
    init_background_wf,
    init_estimate_reportlets_wf,
    init_inversion_wf,
    init_r2star_wf,
)
from qsm_bids.recipe import load_recipe
from qsm_bids.report import write_subject_report
from qsm_bids.report.assemble import render
from qsm_bids.report.discovery import find_subject_runs
from qsm_bids.report.reportlets import FIGURES, figure_path
from qsm_bids.simulate.dataset import simulate_dataset

MNI = "MNI152NLin2009aSym"


def _not_blank(path: Path) -> float:
    """Pixel standard deviation of a PNG (RGB, 0..1)."""
    img = mpimg.imread(path)
    return float(np.std(img[..., :3]))


# --------------------------------------------------------------------------------------
# A real small run with every stage builder's reportlets
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("reportlets")
    bids = simulate_dataset(root / "bids", subjects=1, resolution_mm=4.0, seed=5, phantom="ideal")
    (run,) = find_runs(bids)
    recipe = load_recipe("fast")
    out = root / "out"
    rep = Reportlets.for_run(out, run)
    wf = pe.Workflow(name="reportlets_test", base_dir=str(root / "work"))
    load = pe.Node(
        LoadRun(
            run_json=run_to_json(run),
            in_files=[str(p) for p in (*run.phase_files, *run.magnitude_files)],
        ),
        name="load",
    )
    mask_wf = init_mask_wf(recipe["mask"], reportlets=rep)
    unwrap_wf = init_unwrap_wf(recipe["unwrap"], reportlets=rep)
    combine_wf = init_echo_combination_wf(recipe["combine"], reportlets=rep)
    bg_wf = init_background_wf(recipe["background"])
    inv_wf = init_inversion_wf(recipe["inversion"], recipe["reference"])
    chi_wf = init_estimate_reportlets_wf(rep, recipe["reference"])
    r2_wf = init_r2star_wf(recipe["r2star"], reportlets=rep)
    sign = pe.Node(CheckPhaseSign(mode="auto"), name="phase_sign")
    wf.connect([
        (load, mask_wf, [("phase", "inputnode.phase"), ("magnitude", "inputnode.magnitude"),
                         ("meta", "inputnode.meta")]),
        (load, unwrap_wf, [("phase", "inputnode.phase"), ("magnitude", "inputnode.magnitude"),
                           ("meta", "inputnode.meta")]),
        (mask_wf, unwrap_wf, [("outputnode.mask", "inputnode.mask")]),
        (load, combine_wf, [("magnitude", "inputnode.magnitude"), ("meta", "inputnode.meta")]),
        (mask_wf, combine_wf, [("outputnode.mask", "inputnode.mask")]),
        (unwrap_wf, combine_wf, [("outputnode.unwrapped", "inputnode.unwrapped")]),
        (load, bg_wf, [("meta", "inputnode.meta")]),
        (mask_wf, bg_wf, [("outputnode.mask", "inputnode.mask")]),
        (combine_wf, bg_wf, [("outputnode.field", "inputnode.field"),
                             ("outputnode.noise", "inputnode.noise")]),
        (load, inv_wf, [("meta", "inputnode.meta"), ("magnitude", "inputnode.magnitude")]),
        (bg_wf, inv_wf, [("outputnode.local_field", "inputnode.local_field"),
                         ("outputnode.local_mask", "inputnode.local_mask")]),
        (inv_wf, sign, [("outputnode.chi", "chi")]),
        (bg_wf, sign, [("outputnode.local_mask", "mask")]),
        (sign, chi_wf, [("chi", "inputnode.chi"), ("sign", "inputnode.sign")]),
        (bg_wf, chi_wf, [("outputnode.local_mask", "inputnode.local_mask"),
                         ("outputnode.local_field", "inputnode.local_field")]),
        (combine_wf, chi_wf, [("outputnode.field", "inputnode.total_field")]),
        (mask_wf, chi_wf, [("outputnode.mask", "inputnode.brain_mask")]),
        (load, chi_wf, [("meta", "inputnode.meta"), ("magnitude", "inputnode.magnitude")]),
        (inv_wf, chi_wf, [("outputnode.reference_note", "inputnode.reference_note")]),
        (r2_wf, chi_wf, [("outputnode.r2star", "inputnode.r2star")]),
        (load, r2_wf, [("magnitude", "inputnode.magnitude"), ("meta", "inputnode.meta")]),
        (mask_wf, r2_wf, [("outputnode.mask", "inputnode.mask")]),
        (r2_wf, inv_wf, [("outputnode.r2star", "inputnode.r2star")]),
    ])  # fmt: skip
    graph = wf.run()
    results = {n.name: n.result for n in graph.nodes()}
    return bids, out, rep, run, results


def test_reportlets_of_a_real_run(small_run):
    """Every stage's figure is written under sub-01/figures with its BIDS-like name, is
    not blank, and the nodes report what they wrote."""
    _, out, rep, _, results = small_run
    assert rep.prefix == "sub-01"
    expected = [
        "brainmask", "unwrapped", "totalfield", "echofit", "localfield", "chimap",
        "streaking", "reference", "r2star",
    ]  # fmt: skip
    for desc in expected:
        path = out / "sub-01" / "figures" / f"sub-01_desc-{desc}_qc.png"
        assert path.is_file(), desc
        assert _not_blank(path) > 0.02, f"{desc} looks blank"
    reported = [p for r in results.values() for p in (getattr(r.outputs, "out_report", None) or [])]
    assert sorted(Path(p).name for p in reported) == sorted(
        f"sub-01_desc-{d}_qc.png" for d in expected
    )
    assert not list(out.rglob(".*tmp*"))  # atomic writes leave nothing behind


def test_unwrapped_figure_has_one_row_per_echo(small_run):
    """The per-echo figure grows with the number of echoes (one row each)."""
    _, out, _, run, _ = small_run
    img = mpimg.imread(out / "sub-01" / "figures" / "sub-01_desc-unwrapped_qc.png")
    single = mpimg.imread(out / "sub-01" / "figures" / "sub-01_desc-totalfield_qc.png")
    n = len(run.phase_files)
    assert n >= 3
    # rows of 2.0 in against the single-row figure's 2.8 in (+ title): about n * 2 / 3.5
    assert img.shape[0] > 0.45 * n * single.shape[0]


def test_reference_region_of_each_algorithm():
    mask = np.zeros((20, 20, 20), bool)
    mask[4:16, 4:16, 4:16] = True
    region = np.zeros_like(mask)
    region[2:8, 2:8, 2:8] = True
    assert reference_region("mean", {}, mask).sum() == mask.sum()
    got = reference_region("mask", {}, mask, region=region)
    assert got.sum() == 4 * 4 * 4  # only the part inside the mask
    assert reference_region("csf", {}, mask, fell_back=True).sum() == mask.sum()
    with pytest.raises(ValueError):
        reference_region("mask", {}, mask)


def test_csf_reference_region_of_the_run(small_run):
    """CSF referencing's region (the phantom's ventricles) is a small part of the mask."""
    from qsm_bids.interfaces.base import read_mask, read_volume

    *_, results = small_run
    mask = read_mask(results["background"].outputs.local_mask)
    region = reference_region(
        "csf",
        {},
        mask,
        r2star=read_volume(results["r2star"].outputs.r2star),
        magnitude=read_volume(results["load"].outputs.magnitude),
        voxel_size=(4.0, 4.0, 4.0),
    )
    assert 0 < region.sum() < 0.05 * mask.sum()
    assert not (region & ~mask).any()


def test_labels_and_registration_reportlets(small_run, tmp_path):
    """The atlas/segmentation and registration figures (run directly, no ANTs)."""
    from nilearn.datasets import load_mni152_gm_template, load_mni152_wm_template

    bids, out, rep, _, results = small_run
    chi = results["invert"].outputs.chi
    truth = bids / "derivatives" / "qsm_bids-truth" / "sub-01" / "anat" / "sub-01_dseg.nii.gz"
    node = LabelsReportlet(
        output_dir=rep.output_dir, prefix=rep.prefix, chi=chi, labels=str(truth), desc="atlas"
    )
    node.base_dir = str(tmp_path)
    res = node.run(cwd=str(tmp_path))
    (written,) = res.outputs.out_report
    assert Path(written) == figure_path(out, "sub-01", "atlas")
    assert _not_blank(Path(written)) > 0.02
    gm = load_mni152_gm_template(resolution=2)
    wm = load_mni152_wm_template(resolution=2)
    mni = tmp_path / "chi_mni.nii.gz"
    data = 0.02 * gm.get_fdata() - 0.03 * wm.get_fdata()
    nb.save(nb.Nifti1Image(data.astype(np.float32), gm.affine), mni)
    res = RegistrationReportlet(
        output_dir=rep.output_dir, prefix=rep.prefix, chi_template=str(mni)
    ).run(cwd=str(tmp_path))
    (written,) = res.outputs.out_report
    assert Path(written).name == "sub-01_desc-registration_qc.png"
    assert _not_blank(Path(written)) > 0.02


def test_field_reportlet_shows_the_field_as_written(small_run, tmp_path):
    """With the phase-sign check's -1 the field is drawn negated, as the derivative is."""
    from qsm_bids.interfaces.base import read_volume, write_like
    from qsm_bids.interfaces.reportlets import FieldReportlet

    *_, results = small_run
    field = results["combine"].outputs.field
    mask = results["brain_mask"].outputs.mask
    negated = write_like(-read_volume(field), field, "negated_by_hand", tmp_path)

    def draw(path, sign, name):
        out = tmp_path / name
        node = FieldReportlet(output_dir=str(out), prefix="sub-01", field=path, mask=mask)
        if sign is not None:
            node.inputs.sign = sign
        (written,) = node.run(cwd=str(tmp_path)).outputs.out_report
        return mpimg.imread(written)

    plain, flipped = draw(field, 1, "plus"), draw(field, -1, "minus")
    assert plain.shape == flipped.shape and not np.array_equal(plain, flipped)
    np.testing.assert_array_equal(flipped, draw(negated, None, "by_hand"))


def test_brainmask_reportlet_without_magnitude(small_run, tmp_path):
    """Phase-only data: the mask is drawn over the first echo's phase."""
    from qsm_bids.interfaces.reportlets import BrainMaskReportlet

    *_, results = small_run
    out = tmp_path / "out"
    res = BrainMaskReportlet(
        output_dir=str(out),
        prefix="sub-02",
        mask=results["brain_mask"].outputs.mask,
        phase=results["load"].outputs.phase,
    ).run(cwd=str(tmp_path))
    (written,) = res.outputs.out_report
    assert Path(written) == out / "sub-02" / "figures" / "sub-02_desc-brainmask_qc.png"
    assert _not_blank(Path(written)) > 0.02


def test_a_failing_reportlet_warns_and_writes_nothing(tmp_path):
    bad = tmp_path / "labels.nii.gz"
    nb.save(nb.Nifti1Image(np.ones((3, 3, 3), np.float32), np.eye(4)), bad)
    chi = tmp_path / "chi.nii.gz"
    nb.save(nb.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), chi)
    res = LabelsReportlet(
        output_dir=str(tmp_path / "out"), prefix="sub-01", chi=str(chi), labels=str(bad)
    ).run(cwd=str(tmp_path))
    assert res.outputs.out_report == []
    assert not (tmp_path / "out").exists()


def test_builders_without_reportlets_add_no_node(small_run):
    recipe = load_recipe("fast")
    plain = init_inversion_wf(recipe["inversion"], recipe["reference"])
    names = set(plain.list_node_names())
    assert names == {"inputnode", "outputnode", "invert", "reference"}
    rep = small_run[2]
    for build, figures in (
        (lambda r: init_mask_wf(recipe["mask"], reportlets=r), {"brainmask_reportlet"}),
        (lambda r: init_unwrap_wf(recipe["unwrap"], reportlets=r), {"unwrapped_reportlet"}),
        (lambda r: init_echo_combination_wf(recipe["combine"], reportlets=r),
         {"echofit_reportlet"}),
        (lambda r: init_r2star_wf(recipe["r2star"], reportlets=r), {"r2star_reportlet"}),
    ):  # fmt: skip
        without = set(build(None).list_node_names())
        assert not [n for n in without if "reportlet" in n]
        with_nodes = set(build(rep).list_node_names())
        assert with_nodes - without == figures


# --------------------------------------------------------------------------------------
# The report of a run with registration, from a fake output folder
# --------------------------------------------------------------------------------------


def _fake_outputs(root: Path, *, atlas_name: str, quality: dict | None) -> Path:
    """An output folder as a run with registration leaves it (small files)."""
    out = root / "out"
    anat = out / "sub-01" / "anat"
    anat.mkdir(parents=True)
    rng = np.random.default_rng(0)
    shape = (16, 18, 14)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    mask = np.zeros(shape, np.uint8)
    mask[3:13, 3:15, 3:11] = 1
    chi = (rng.standard_normal(shape) * 0.05 * mask).astype(np.float32)

    def save(name: str, data, side: dict | None = None) -> None:
        nb.save(nb.Nifti1Image(data, affine), anat / name)
        if side is not None:
            (anat / name.replace(".nii.gz", ".json")).write_text(json.dumps(side))

    side = {
        "Units": "ppm",
        "Pipeline": "fast",
        "SoftwareVersion": "qsm_bids test",
        "StreakingIndex": 0.9,
        "Stages": {"inversion": {"Algorithm": "tkd", "Parameters": {"threshold": 0.2}}},
    }
    save("sub-01_Chimap.nii.gz", chi, side)
    save("sub-01_desc-brain_mask.nii.gz", mask, {"Type": "Brain"})
    save("sub-01_desc-local_mask.nii.gz", mask, {"Type": "Brain"})
    labels = (mask * (1 + (np.arange(shape[0])[:, None, None] > 8))).astype(np.uint8)
    save(atlas_name, labels, {})
    save(f"sub-01_space-{MNI}_Chimap.nii.gz", chi, {"Units": "ppm"})
    # the transforms, which used to count as two extra runs
    xfm = "sub-01_from-orig_to-MNI152NLin2009aSym_mode-image"
    (anat / f"{xfm}_desc-affine_xfm.mat").write_bytes(b"\0" * 16)
    save(f"{xfm}_desc-warp_xfm.nii.gz", np.zeros((*shape, 1, 3), np.float32))
    save(
        "sub-01_from-MNI152NLin2009aSym_to-orig_mode-image_desc-warp_xfm.nii.gz",
        np.zeros((*shape, 1, 3), np.float32),
    )
    doc: dict = {"Description": "ANTs transforms"}
    if quality is not None:
        doc["RegistrationQuality"] = quality
        doc["RegionalStatistics"] = "skipped: low overlap" if not quality["Passed"] else "written"
    (anat / f"{xfm}_xfm.json").write_text(json.dumps(doc))
    (anat / "sub-01_desc-aal3_regionstats.tsv").write_text(
        "region\tlabel\tvoxels\tvolume_mm3\tmean_ppm\tmedian_ppm\tstd_ppm\tp25_ppm\tp75_ppm\n"
        "Caudate_L\t1\t100\t2700\t0.05\t0.05\t0.01\t0.04\t0.06\n"
        "whole_brain\tn/a\t960\t25920\t0.0\t0.0\t0.05\t-0.03\t0.03\n"
    )
    return out


class _Sections(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.errors = 0
        self.imgs: list[str] = []
        self._class: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section" and a.get("id") not in ("summary", "about", "errors"):
            self.sections.append(a.get("id", ""))
        if "error" in (a.get("class") or "").split():
            self.errors += 1
        if tag == "img":
            self.imgs.append(a["src"])


@pytest.mark.parametrize(
    "atlas_name", ["sub-01_desc-aal3_dseg.nii.gz", "sub-01_space-orig_dseg.nii.gz"]
)
def test_report_with_registration_has_one_section_per_run(tmp_path, atlas_name):
    quality = {"Dice": 0.85, "Coverage": 0.97, "Passed": True}
    out = _fake_outputs(tmp_path, atlas_name=atlas_name, quality=quality)
    (run,) = find_subject_runs(out, "01")
    assert run.prefix == "sub-01" and len(run.transforms) == 4
    page = write_subject_report(out, "sub-01")
    text = page.read_text(encoding="utf-8")
    parsed = _Sections()
    parsed.feed(text)
    assert parsed.sections == ["sub-01"]
    assert parsed.errors == 0, text
    assert "missing" not in text.lower()
    assert "<tr><th>Runs with derivatives</th><td>1</td></tr>" in text
    names = {Path(s).name for s in parsed.imgs}
    assert {"sub-01_desc-atlas_qc.png", "sub-01_desc-registration_qc.png"} <= names
    assert "<tr><th>Dice</th><td>0.850</td></tr>" in text
    assert "<tr><th>RegionalStatistics</th><td>written</td></tr>" in text
    assert "did not pass" not in text


def test_two_runs_with_registration_give_two_sections(tmp_path):
    """Two runs, each with its transforms: two sections, the methods text once."""
    out = _fake_outputs(tmp_path, atlas_name="sub-01_desc-aal3_dseg.nii.gz", quality=None)
    anat = out / "sub-01" / "anat"
    for path in list(anat.iterdir()):
        shutil.copy(path, anat / path.name.replace("sub-01_", "sub-01_run-2_"))
        path.rename(anat / path.name.replace("sub-01_", "sub-01_run-1_"))
    text = write_subject_report(out, "01").read_text(encoding="utf-8")
    parsed = _Sections()
    parsed.feed(text)
    assert parsed.sections == ["sub-01_run-1", "sub-01_run-2"]
    assert parsed.errors == 0
    assert "<tr><th>Runs with derivatives</th><td>2</td></tr>" in text
    assert text.count('<ol class="references">') == 1
    assert 'The methods text is the same as for <a href="#sub-01_run-1">run 1</a>' in text


def test_report_shows_a_failed_registration_check(tmp_path):
    quality = {"Dice": 0.41, "Coverage": 0.55, "Passed": False}
    out = _fake_outputs(tmp_path, atlas_name="sub-01_desc-aal3_dseg.nii.gz", quality=quality)
    text = write_subject_report(out, "01").read_text(encoding="utf-8")
    assert "did not pass its quality check" in text
    assert "Regional statistics skipped: low overlap" in text


def test_report_prefers_the_reportlets(tmp_path):
    """A reportlet in figures/ is used as it is (not redrawn from the derivatives)."""
    out = _fake_outputs(tmp_path, atlas_name="sub-01_desc-aal3_dseg.nii.gz", quality=None)
    marker = figure_path(out, "sub-01", "unwrapped")
    marker.parent.mkdir(parents=True)
    shutil.copy(Path(mpimg.__file__).parent / "mpl-data" / "images" / "home.png", marker)
    before = marker.read_bytes()
    text = write_subject_report(out, "01").read_text(encoding="utf-8")
    assert "sub-01/figures/sub-01_desc-unwrapped_qc.png" in text
    assert FIGURES["unwrapped"].title in text
    assert marker.read_bytes() == before
    # without the registration's derivatives its reportlet is not shown (left from before)
    for path in (out / "sub-01" / "anat").glob("*_xfm.*"):
        path.unlink()
    for path in (out / "sub-01" / "anat").glob(f"*_space-{MNI}_*"):
        path.unlink()
    assert figure_path(out, "sub-01", "registration").is_file()
    text = write_subject_report(out, "01").read_text(encoding="utf-8")
    assert "desc-registration_qc" not in text and "desc-atlas_qc" in text


def test_template_has_no_undefined_variables():
    """The page template renders with StrictUndefined (a missing variable raises)."""
    with pytest.raises(jinja2.UndefinedError):
        render("subject.html.j2", subject="sub-01")
    page = render(
        "subject.html.j2",
        subject="sub-01",
        summary=[("Participant", "sub-01")],
        errors=["<b>x</b>"],
        runs=[],
        about=[],
        stat_headings=[],
    )
    assert "&lt;b&gt;x&lt;/b&gt;" in page  # autoescaped
