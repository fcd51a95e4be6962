"""The group level on synthetic derivatives: three participants in the raw dataset, two with
regional statistics tables (one with two sessions), one without (failed): the joined table
holds exactly the present runs' rows, the summary equals numpy's mean and standard
deviation, the study template equals the voxelwise mean and median, and a clear error is
raised when there is nothing to join."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib.image as mpimg
import nibabel as nb
import numpy as np
import pytest

from qsm_bids.errors import QSMInputError
from qsm_bids.group import STAT_COLUMNS, order_regions, run_group_level

MNI = "MNI152NLin2009aSym"
REGIONS = [
    "Frontal_Sup_2_L",
    "Caudate_L",
    "Thal_VPL_R",
    "whole_brain",
    "Putamen_R",
    "Red_N_L",
    "Pallidum_L",
    "SN_pc_R",
    "Precentral_R",
]
LABELS = {name: str(k + 1) for k, name in enumerate(REGIONS) if name != "whole_brain"}
# (participant, session, acquisition, run) of the runs that have a table
RUNS = [("01", "1", None, "1"), ("01", "2", None, "1"), ("02", "1", "fast", None)]
GRID = (9, 11, 8)


def _prefix(sub, ses, acq, run) -> str:
    parts = [f"sub-{sub}", f"ses-{ses}" if ses else "", f"acq-{acq}" if acq else ""]
    parts.append(f"run-{run}" if run else "")
    return "_".join(p for p in parts if p)


def _anat(root: Path, sub, ses) -> Path:
    folder = root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "anat"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _write_table(path: Path, rng: np.random.Generator) -> dict[str, list]:
    rows = {}
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(["region", "label", *STAT_COLUMNS])
        for name in REGIONS:
            voxels = int(rng.integers(10, 1000))
            stats = [voxels, voxels * 8.0, *rng.normal(0.05, 0.03, 5)]
            rows[name] = stats
            w.writerow([name, LABELS.get(name, "n/a"), *[repr(float(s)) for s in stats]])
    return rows


@pytest.fixture
def study(tmp_path):
    """Raw dataset with sub-01..03, derivatives with tables for sub-01 (2 sessions) and
    sub-02, and only a susceptibility map for sub-03 (its atlas step failed)."""
    rng = np.random.default_rng(7)
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "participants.tsv").write_text("participant_id\tage\nsub-01\t30\nsub-02\t40\n")
    for sub in ("01", "02", "03"):
        (bids / f"sub-{sub}" / "anat").mkdir(parents=True)
    out = tmp_path / "out"
    tables = {}
    maps = {}
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-9.0, -11.0, -8.0]
    for sub, ses, acq, run in RUNS:
        prefix = _prefix(sub, ses, acq, run)
        anat = _anat(out, sub, ses)
        tables[prefix] = _write_table(anat / f"{prefix}_desc-aal3_regionstats.tsv", rng)
        data = rng.normal(0.0, 0.05, GRID).astype(np.float32)
        maps[prefix] = data
        nb.save(nb.Nifti1Image(data, affine), anat / f"{prefix}_space-{MNI}_Chimap.nii.gz")
        nb.save(nb.Nifti1Image(data, np.eye(4)), anat / f"{prefix}_Chimap.nii.gz")
    anat = _anat(out, "03", None)
    nb.save(nb.Nifti1Image(np.zeros(GRID, np.float32), np.eye(4)), anat / "sub-03_Chimap.nii.gz")
    return bids, out, tables, maps, affine


def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def test_group_table_has_one_row_per_run_and_region(study):
    bids, out, tables, _, _ = study
    result = run_group_level(out, bids_dir=bids)
    header, rows = _read(out / "group" / "regionstats.tsv")
    assert header == [
        "participant_id",
        "session",
        "run",
        "acquisition",
        "segmentation",
        "region",
        "label",
        *STAT_COLUMNS,
    ]
    assert result.table == out / "group" / "regionstats.tsv"
    assert len(rows) == len(RUNS) * len(REGIONS) == result.n_rows
    for sub, ses, acq, run in RUNS:
        prefix = _prefix(sub, ses, acq, run)
        mine = [r for r in rows if r["participant_id"] == f"sub-{sub}" and r["session"] == ses]
        assert len(mine) == len(REGIONS)
        for r in mine:
            assert r["run"] == (run or "n/a") and r["acquisition"] == (acq or "n/a")
            assert r["segmentation"] == "aal3"
            assert r["label"] == LABELS.get(r["region"], "n/a")
            expected = tables[prefix][r["region"]]
            got = [float(r[c]) for c in STAT_COLUMNS]
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-15)
    assert not [r for r in rows if r["participant_id"] == "sub-03"]
    assert result.participants == ["sub-01", "sub-02"]
    assert result.missing_participants == ["sub-03"]
    assert result.runs_without_table == ["sub-03"]
    report = json.loads((out / "group" / "group_report.json").read_text())
    assert report["ParticipantsMissing"] == ["sub-03"]
    assert report["ParticipantsWithTables"] == ["sub-01", "sub-02"]
    assert report["RunsWithoutTable"] == ["sub-03"]
    assert sorted(report["Runs"]) == sorted(_prefix(*r) for r in RUNS)
    img = mpimg.imread(result.figure)
    assert result.figure.suffix == ".png" and float(np.std(img[..., :3])) > 0.05
    assert result.template_mean is None


def test_summary_equals_numpy(study):
    bids, out, tables, _, _ = study
    result = run_group_level(out, bids_dir=bids)
    header, rows = _read(result.summary)
    assert header == ["segmentation", "region", "label", "n", "mean_ppm", "std_ppm"]
    assert {r["segmentation"] for r in rows} == {"aal3"}
    # deep grey matter first (caudate, putamen, pallidum, thalamus, SN, red nucleus)
    assert [r["region"] for r in rows] == order_regions(REGIONS)
    assert [r["region"] for r in rows][:7] == [
        "Caudate_L",
        "Putamen_R",
        "Pallidum_L",
        "Thal_VPL_R",
        "SN_pc_R",
        "Red_N_L",
        "whole_brain",
    ]
    k = STAT_COLUMNS.index("mean_ppm")
    for r in rows:
        values = np.array([tables[p][r["region"]][k] for p in tables])
        assert int(r["n"]) == len(RUNS)
        assert float(r["mean_ppm"]) == pytest.approx(np.mean(values), abs=1e-15)
        assert float(r["std_ppm"]) == pytest.approx(np.std(values, ddof=1), abs=1e-15)


def test_segmentations_are_joined_but_never_pooled(study):
    """A user segmentation's tables (desc-aseg) for two runs, one region sharing an AAL3
    name: the group table tells them apart, AAL3 first, and each has its own summary and
    figure."""
    bids, out, tables, _, _ = study
    rng = np.random.default_rng(11)
    custom = {}
    for sub, ses, acq, run in RUNS[:2]:
        prefix = _prefix(sub, ses, acq, run)
        path = _anat(out, sub, ses) / f"{prefix}_desc-aseg_regionstats.tsv"
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh, delimiter="\t", lineterminator="\n")
            w.writerow(["region", "label", *STAT_COLUMNS])
            for label, name in ((0, "whole_brain"), (11, "Caudate_L"), (12, "Lesion")):
                stats = [10, 80.0, *rng.normal(0.5, 0.1, 5)]  # far from the AAL3 values
                custom.setdefault(name, []).append(stats)
                w.writerow([name, label, *[repr(float(v)) for v in stats]])
    result = run_group_level(out, bids_dir=bids)
    assert result.segmentations == ["aal3", "aseg"]
    _, rows = _read(result.table)
    segs = [r["segmentation"] for r in rows]
    assert segs == ["aal3"] * (len(RUNS) * len(REGIONS)) + ["aseg"] * 6  # AAL3 first
    assert sorted(result.runs) == sorted(_prefix(*r) for r in RUNS)  # each run once
    _, summary = _read(result.summary)
    k = STAT_COLUMNS.index("mean_ppm")
    by_key = {(r["segmentation"], r["region"]): r for r in summary}
    aal3 = [tables[p]["Caudate_L"][k] for p in tables]
    mine = [v[k] for v in custom["Caudate_L"]]
    assert float(by_key[("aal3", "Caudate_L")]["mean_ppm"]) == pytest.approx(np.mean(aal3))
    assert float(by_key[("aseg", "Caudate_L")]["mean_ppm"]) == pytest.approx(np.mean(mine))
    assert by_key[("aseg", "Caudate_L")]["n"] == "2" and by_key[("aseg", "Lesion")]["label"] == "12"
    assert ("aal3", "Lesion") not in by_key
    assert result.figures["aal3"] == out / "group" / "regionstats.png" == result.figure
    assert result.figures["aseg"] == out / "group" / "desc-aseg_regionstats.png"
    assert result.figures["aseg"].is_file()
    report = json.loads((out / "group" / "group_report.json").read_text())
    assert report["Segmentations"] == ["aal3", "aseg"]


def test_group_template_is_the_voxel_mean_and_median(study):
    bids, out, _, maps, affine = study
    result = run_group_level(out, bids_dir=bids, group_template=True)
    stack = np.stack(list(maps.values()))
    mean = nb.load(result.template_mean)
    median = nb.load(result.template_median)
    assert result.template_mean.name == f"space-{MNI}_desc-groupmean_Chimap.nii.gz"
    assert result.template_mean.parent == out / "group"
    np.testing.assert_allclose(mean.get_fdata(), stack.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(median.get_fdata(), np.median(stack, axis=0), atol=1e-6)
    np.testing.assert_allclose(mean.affine, affine)
    side = json.loads(
        result.template_mean.with_name(
            result.template_mean.name.replace(".nii.gz", ".json")
        ).read_text()
    )
    assert side["Units"] == "ppm" and side["NumberOfMaps"] == len(RUNS)
    assert len(result.template_maps) == len(RUNS)


def test_group_template_resamples_other_grids(study):
    """A map stored with its first axis flipped is brought back onto the first map's grid
    exactly (linear interpolation at whole voxels)."""
    bids, out, _, maps, affine = study
    prefix = _prefix(*RUNS[2])
    path = next(out.rglob(f"{prefix}_space-{MNI}_Chimap.nii.gz"))
    flip = affine.copy()
    flip[0, 0] = -affine[0, 0]
    flip[0, 3] = affine[0, 3] + affine[0, 0] * (GRID[0] - 1)
    nb.save(nb.Nifti1Image(maps[prefix][::-1].copy(), flip), path)
    result = run_group_level(out, bids_dir=bids, group_template=True)
    stack = np.stack(list(maps.values()))
    np.testing.assert_allclose(
        nb.load(result.template_mean).get_fdata(), stack.mean(axis=0), atol=1e-6
    )


def test_participant_selection(study):
    bids, out, _, _, _ = study
    result = run_group_level(out, participant_labels=["sub-02"], bids_dir=bids)
    _, rows = _read(result.table)
    assert {r["participant_id"] for r in rows} == {"sub-02"}
    assert result.missing_participants == []
    result = run_group_level(out, participant_labels=["01", "03"])
    assert result.participants == ["sub-01"] and result.missing_participants == ["sub-03"]
    with pytest.raises(QSMInputError, match="no regional statistics"):
        run_group_level(out, participant_labels=["03"])


def test_errors_when_nothing_to_join(tmp_path, study):
    bids, out, _, _, _ = study
    empty = tmp_path / "empty"
    (empty / "sub-01" / "anat").mkdir(parents=True)
    with pytest.raises(QSMInputError, match="no regional statistics"):
        run_group_level(empty, bids_dir=bids)
    assert not (empty / "group").exists()
    with pytest.raises(QSMInputError):
        run_group_level(tmp_path / "does-not-exist")
    for f in out.rglob(f"*_space-{MNI}_Chimap.nii.gz"):
        f.unlink()
    with pytest.raises(QSMInputError, match="normalised maps"):
        run_group_level(out, group_template=True)
    assert not (out / "group").exists()
    bad = next(out.rglob("*_regionstats.tsv"))
    bad.write_text("region\tlabel\nCaudate_L\t1\n")
    with pytest.raises(QSMInputError, match="mean_ppm"):
        run_group_level(out)
