"""The per-subject HTML report: run the real participant level on a 4 mm simulated dataset,
add the optional derivatives (atlas labels, regional statistics, normalised map) as
synthetic files, write the report and check the page: self-contained, every figure present
and not blank, the algorithms and parameters actually used, the sidecar's warnings."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image as mpimg
import nibabel as nb
import numpy as np
import pytest

from qsm_bids.bids.naming import split_bids_name
from qsm_bids.cli.main import main
from qsm_bids.core.streaking import STREAKING_FLAG
from qsm_bids.errors import QSMInputError
from qsm_bids.regions import order_regions
from qsm_bids.report import write_subject_report
from qsm_bids.report.collect import collect_messages, collect_stages, streaking_text
from qsm_bids.simulate.dataset import simulate_dataset

ANAT = Path("sub-01") / "anat"
WARNING = "synthetic warning: field strength taken from ImagingFrequency"
MNI = "MNI152NLin2009aSym"


# --------------------------------------------------------------------------------------
# Fixture: a real output tree plus the optional derivatives
# --------------------------------------------------------------------------------------


def _add_optional_derivatives(bids: Path, out: Path) -> None:
    """Atlas labels (the phantom's true labels), region statistics from them, a normalised
    map (from the template's tissue maps) and a sidecar warning."""
    from nilearn.datasets import load_mni152_gm_template, load_mni152_wm_template

    truth = bids / "derivatives" / "qsm_bids-truth"
    shutil.copy(truth / "dseg.tsv", out / "dseg.tsv")
    anat = out / ANAT
    chi = nb.load(anat / "sub-01_Chimap.nii.gz")
    c = np.asarray(chi.dataobj, dtype=np.float64)
    labels = np.asarray(nb.load(truth / ANAT / "sub-01_dseg.nii.gz").dataobj).astype(np.uint8)
    nb.save(nb.Nifti1Image(labels, chi.affine), anat / "sub-01_space-orig_dseg.nii.gz")
    brain = np.asarray(nb.load(anat / "sub-01_desc-brain_mask.nii.gz").dataobj) > 0
    with open(truth / "dseg.tsv", newline="") as fh:
        names = {int(r["index"]): r["name"] for r in csv.DictReader(fh, delimiter="\t")}
    vox = float(np.prod(chi.header.get_zooms()[:3]))
    rows = []
    for index, name in sorted(names.items()):
        v = c[(labels == index) & brain]
        if index and v.size:
            rows.append(
                [
                    name,
                    index,
                    v.size,
                    v.size * vox,
                    v.mean(),
                    np.median(v),
                    v.std(),
                    *np.percentile(v, [25, 75]),
                ]
            )
    v = c[brain]
    rows.append(
        [
            "whole_brain",
            "n/a",
            v.size,
            v.size * vox,
            v.mean(),
            np.median(v),
            v.std(),
            *np.percentile(v, [25, 75]),
        ]
    )
    with open(anat / "sub-01_desc-aal3_regionstats.tsv", "w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(
            [
                "region",
                "label",
                "voxels",
                "volume_mm3",
                "mean_ppm",
                "median_ppm",
                "std_ppm",
                "p25_ppm",
                "p75_ppm",
            ]
        )
        w.writerows(rows)
    gm = load_mni152_gm_template(resolution=2)
    wm = load_mni152_wm_template(resolution=2)
    mni = 0.02 * gm.get_fdata() - 0.03 * wm.get_fdata()
    nb.save(
        nb.Nifti1Image(mni.astype(np.float32), gm.affine),
        anat / f"sub-01_space-{MNI}_Chimap.nii.gz",
    )
    (anat / f"sub-01_space-{MNI}_Chimap.json").write_text(
        json.dumps(
            {
                "Units": "ppm",
                "Stages": {
                    "registration": {"Algorithm": "syn_test", "Parameters": {"metric": "CC"}}
                },
            }
        )
    )
    side_path = anat / "sub-01_Chimap.json"
    side = json.loads(side_path.read_text())
    side["Warnings"] = [WARNING]
    side_path.write_text(json.dumps(side, indent=2))


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    bids = simulate_dataset(root / "bids", subjects=1, resolution_mm=4.0, seed=3, phantom="ideal")
    out = root / "out"
    args = [
        str(bids),
        str(out),
        "participant",
        "-w",
        str(root / "work"),
        "--nprocs",
        "1",
        "--no-registration",
    ]
    code = main([*args, "--pipeline", "fast"])
    assert code == 0
    _add_optional_derivatives(bids, out)
    page = write_subject_report(out, "sub-01", bids_dir=bids)
    return bids, out, page


class _Page(HTMLParser):
    """Collects tags with attributes, text per element class and table rows (a nested
    table's text also counts for the enclosing cell)."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.stack: list[tuple[str, dict]] = []
        self.by_class: dict[str, list[str]] = {}
        self.rows: list[list[str]] = []
        self._rows: list[list[str]] = []
        self._cells: list[list[str]] = []
        self.text: list[str] = []
        self.style: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag not in ("img", "br", "meta", "link", "input"):
            self.stack.append((tag, a))
        if tag == "tr":
            self._rows.append([])
        if tag in ("td", "th"):
            self._cells.append([])

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cells and self._rows:
            self._rows[-1].append(" ".join("".join(self._cells.pop()).split()))
        if tag == "tr" and self._rows:
            self.rows.append(self._rows.pop())
        while self.stack:
            t, _ = self.stack.pop()
            if t == tag:
                break

    def handle_data(self, data):
        self.text.append(data)
        for cell in self._cells:
            cell.append(data + " ")
        if self.stack and self.stack[-1][0] == "style":
            self.style.append(data)
        for _, a in self.stack:
            for cls in (a.get("class") or "").split():
                self.by_class.setdefault(cls, []).append(data)


def _parse(page: Path) -> _Page:
    p = _Page()
    p.feed(page.read_text(encoding="utf-8"))
    return p


# --------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------


def test_report_is_self_contained(tree):
    _, out, page = tree
    assert page == out / "sub-01.html"
    p = _parse(page)
    assert not [t for t, _ in p.tags if t in ("script", "link", "iframe", "object", "embed")]
    for tag, attrs in p.tags:
        for key in ("src", "href"):
            value = attrs.get(key, "")
            if tag == "a" and value.startswith("https://doi.org/"):
                continue  # the methods' references link to their DOI (not loaded)
            assert "://" not in value and not value.startswith("//"), (tag, value)
    assert "url(" not in "".join(p.style) and "@import" not in "".join(p.style)
    # no temporary files left behind by the atomic writes
    assert not [q for q in out.rglob(".*") if ".tmp" in q.name]


def test_every_figure_exists_and_is_not_blank(tree):
    _, out, page = tree
    p = _parse(page)
    srcs = [a["src"] for t, a in p.tags if t == "img"]
    names = {Path(s).name for s in srcs}
    for what in (
        "brainmask", "totalfield", "localfield", "chimap", "streaking", "r2star",
        "registration", "atlas",
    ):  # fmt: skip
        assert f"sub-01_desc-{what}_qc.png" in names, names
    for src in srcs:
        assert not Path(src).is_absolute()
        path = out / src
        assert path.is_file(), src
        assert path.parent == out / "sub-01" / "figures"
        img = mpimg.imread(path)
        assert img.shape[0] > 140 and img.shape[1] > 400
        assert float(np.std(img[..., :3])) > 0.05, f"{src} looks blank"


def test_provenance_lists_the_algorithms_used(tree):
    _, out, page = tree
    side = json.loads((out / ANAT / "sub-01_Chimap.json").read_text())
    p = _parse(page)
    stage_rows = {}
    for row in p.rows:
        if len(row) == 3 and row[0].split()[-1] in side["Stages"]:
            stage_rows[row[0].split()[-1]] = row
    for stage, spec in side["Stages"].items():
        assert stage in stage_rows, f"stage {stage} missing from the provenance table"
        assert stage_rows[stage][1] == spec["Algorithm"]
        for name in spec["Parameters"]:
            assert name in stage_rows[stage][2], (stage, name)
    assert side["Stages"]["inversion"]["Algorithm"] in stage_rows["inversion"][1]
    # stages recorded only in another sidecar are listed too
    assert "syn_test" in "".join(p.text)
    assert side["SoftwareVersion"] in "".join(p.text)


def test_warnings_and_notes_appear(tree):
    _, out, page = tree
    side = json.loads((out / ANAT / "sub-01_Chimap.json").read_text())
    p = _parse(page)
    warnings = " ".join(p.by_class.get("warning", []))
    notes = " ".join(p.by_class.get("note", []))
    assert WARNING in warnings
    for note in side["ProcessingNotes"]:
        assert note in notes
    assert not p.by_class.get("error"), p.by_class.get("error")


def test_region_table_deep_grey_first(tree):
    _, _, page = tree
    rows = [r for r in _parse(page).rows if len(r) == 9 and r[0] != "region"]
    regions = [r[0] for r in rows]
    assert regions[:7] == [
        "caudate",
        "putamen",
        "pallidum",
        "thalamus",
        "substantia_nigra",
        "red_nucleus",
        "whole_brain",
    ]
    # the phantom's pallidum is more paramagnetic than its thalamus
    values = {r[0]: float(r[4]) for r in rows}
    assert values["pallidum"] > values["thalamus"]


def test_report_without_optional_derivatives(tree, tmp_path):
    bids, out, _ = tree
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    for pattern in ("*_space-*", "*_regionstats.tsv"):
        for f in (copy / ANAT).glob(pattern):
            f.unlink()
    shutil.rmtree(copy / "sub-01" / "figures")
    page = write_subject_report(copy, "01", bids_dir=bids)
    p = _parse(page)
    names = {Path(a["src"]).name for t, a in p.tags if t == "img"}
    assert "sub-01_desc-chimap_qc.png" in names
    assert not [n for n in names if "registration" in n or "atlas" in n]
    assert "Regional susceptibility" not in "".join(p.text)
    for src in (a["src"] for t, a in p.tags if t == "img"):
        assert (copy / src).is_file()


def test_every_segmentation_table_is_shown_aal3_first(tree, tmp_path):
    """A user segmentation's table and labels (desc-aseg) get their own section and
    figure, after AAL3's; all of its regions are in view."""
    bids, out, _ = tree
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    anat = copy / ANAT
    shutil.copy(
        anat / "sub-01_space-orig_dseg.nii.gz", anat / "sub-01_space-orig_desc-aseg_dseg.nii.gz"
    )
    text = (anat / "sub-01_desc-aal3_regionstats.tsv").read_text().splitlines()
    (anat / "sub-01_desc-aseg_regionstats.tsv").write_text(
        "\n".join([text[0], *[ln.replace("caudate", "Lesion1") for ln in text[1:]]]) + "\n"
    )
    page = write_subject_report(copy, "01", bids_dir=bids)
    html_text = page.read_text(encoding="utf-8")
    first = html_text.index("sub-01_desc-aal3_regionstats.tsv")
    second = html_text.index("sub-01_desc-aseg_regionstats.tsv")
    assert first < second
    assert "Lesion1" in html_text[second:]  # not folded away: every region in view
    names = {Path(a["src"]).name for t, a in _parse(page).tags if t == "img"}
    assert "sub-01_desc-segaseg_qc.png" in names


def test_failed_and_unknown_subjects(tree, tmp_path):
    bids, out, _ = tree
    raw = tmp_path / "bids"
    shutil.copytree(bids, raw, ignore=shutil.ignore_patterns("derivatives"))
    # a participant present in the raw dataset whose run produced nothing
    src = raw / "sub-01"
    dst = raw / "sub-02"
    dst.mkdir()
    for f in src.rglob("*"):
        if f.is_file():
            target = dst / f.relative_to(src).as_posix().replace("sub-01", "sub-02")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(b"")
    page = write_subject_report(out, "sub-02", bids_dir=raw)
    errors = " ".join(_parse(page).by_class.get("error", []))
    assert "sub-02" in errors and "no susceptibility map" in errors
    with pytest.raises(QSMInputError):
        write_subject_report(out, "sub-99", bids_dir=raw)


def test_streaking_index_and_field_strength_source_are_reported(tree):
    """The participant level writes the Chimap's StreakingIndex and FieldStrengthSource;
    the run's summary shows the index with its reading and the field's source."""
    _, out, page = tree
    side = json.loads((out / ANAT / "sub-01_Chimap.json").read_text())
    assert side["FieldStrengthSource"] == "ImagingFrequency"  # the simulator writes it
    value = side["StreakingIndex"]
    assert 0.05 < value < STREAKING_FLAG  # the fast recipe's map does not streak
    p = _parse(page)
    (row,) = [r for r in p.rows if r and r[0] == "streaking index (dipole cone)"]
    assert row[1].startswith(f"{value:.2f}:")
    assert f"above {STREAKING_FLAG:g} suggests streaking" in row[1]
    assert "look for streaks" not in row[1]
    (row,) = [r for r in p.rows if r and r[0] == "field strength"]
    assert row[1] == f"{side['MagneticFieldStrength']:.6g} T (from ImagingFrequency)"
    # above the flag the line says where to look
    assert "look for streaks" in streaking_text(STREAKING_FLAG + 0.1)


def test_helpers():
    assert split_bids_name("sub-01_ses-1_space-orig_dseg.nii.gz") == (
        [("sub", "01"), ("ses", "1"), ("space", "orig")],
        "dseg",
        ".nii.gz",
    )
    assert split_bids_name("README.md") is None
    assert split_bids_name(".sub-01_Chimap.123.tmp.nii.gz") is None
    names = [
        "Frontal_Sup_2_L",
        "whole_brain",
        "Red_N_L",
        "Thal_VPL_R",
        "SN_pc_L",
        "Caudate_R",
        "Pallidum_L",
        "Putamen_L",
        "Caudate_L",
        "N_Acc_L",
    ]
    assert order_regions(names) == [
        "Caudate_R",
        "Caudate_L",
        "Putamen_L",
        "Pallidum_L",
        "Thal_VPL_R",
        "SN_pc_L",
        "Red_N_L",
        "whole_brain",
        "Frontal_Sup_2_L",
        "N_Acc_L",
    ]
    sides = [
        (
            Path("a.json"),
            {
                "Stages": {"inversion": {"algorithm": "tkd", "parameters": {"threshold": 0.2}}},
                "ProcessingNotes": ["n1"],
                "QualityWarnings": "w1",
            },
        ),
        (
            Path("b.json"),
            {
                "Stages": {"mask": {"Algorithm": "bet", "Parameters": {}}},
                "ProcessingNotes": ["n1", "n2"],
            },
        ),
    ]
    stages = collect_stages(sides)
    assert list(stages) == ["mask", "inversion"]
    assert stages["inversion"] == {"Algorithm": "tkd", "Parameters": {"threshold": 0.2}}
    assert collect_messages(sides) == (["w1"], ["n1", "n2"])


# --------------------------------------------------------------------------------------
# Rendering in a real browser
# --------------------------------------------------------------------------------------


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_page_renders_in_headless_chromium(tree, tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip("chromium is not installed")
    _, _, page = tree
    shot = tmp_path / "page.png"
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--allow-file-access-from-files",
        f"--screenshot={shot}",
        "--window-size=1200,2400",
        page.resolve().as_uri(),
    ]
    subprocess.run(cmd, capture_output=True, timeout=120, check=False, cwd=tmp_path)
    assert shot.is_file(), "chromium wrote no screenshot"
    img = mpimg.imread(shot)[..., :3]
    assert img.shape[0] >= 2000 and img.shape[1] >= 1000
    grey = img.mean(axis=2)
    assert float(grey.std()) > 0.1
    assert float(np.mean(grey < 0.98)) > 0.1, "page is (nearly) blank"
    # the figures have black backgrounds: they were loaded and drawn
    assert float(np.mean(grey < 0.05)) > 0.03, "figures were not rendered"


# --------------------------------------------------------------------------------------
# A real run with registration
# --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_report_of_a_run_with_registration(tmp_path):
    """With registration (the default), the transforms are part of the one run: one run
    section, no red boxes, "Runs with derivatives 1", the overlay and atlas figures."""
    bids = simulate_dataset(tmp_path / "bids", subjects=1, resolution_mm=3.0, phantom="ideal")
    out = tmp_path / "out"
    args = [str(bids), str(out), "participant", "-w", str(tmp_path / "work"), "--nprocs", "1"]
    assert main([*args, "--pipeline", "fast"]) == 0
    assert list((out / ANAT).glob("*_xfm.*"))  # the files that used to make extra runs
    page = out / "sub-01.html"  # written by the participant level
    p = _parse(page)
    sections = [a["id"] for t, a in p.tags if t == "section"]
    assert sections == ["summary", "sub-01", "about", "errors"]
    assert not p.by_class.get("error"), p.by_class.get("error")
    assert "missing" not in page.read_text(encoding="utf-8").lower()
    (row,) = [r for r in p.rows if r and r[0] == "Runs with derivatives"]
    assert row[1] == "1"
    names = {Path(a["src"]).name for t, a in p.tags if t == "img"}
    assert {"sub-01_desc-registration_qc.png", "sub-01_desc-atlas_qc.png"} <= names
