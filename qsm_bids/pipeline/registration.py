"""Registration branch: magnitude -> MNI152NLin2009aSym, chi into template space, AAL3 into
subject space, regional statistics; optionally the derivatives writer.

The data flow, one node per arrow::

    magnitude (echo average), mask [, t1w] -> register (ANTs rigid + affine + SyN)
    register, mask -> quality (Dice, field-of-view coverage, brain volume) -> quality_json
    register, chi  -> to_template (chi, linear)          -> chi_template
    register, chi  -> atlas (AAL3, genericLabel)         -> dseg_subject
    chi, atlas, mask -> regionstats (TSV)                -> regionstats_tsv
    all of them -> registration_derivatives (only when ``run`` is given; the AAL3 table
                   only when the quality passes, or with ``force_regionstats``)

A user segmentation (``--segmentation``) has its own small workflow,
:func:`init_segmentation_wf`, independent of the registration::

    segmentation, chi -> to_subject (world coordinates, nearest neighbour) -> dseg_subject
    chi, dseg_subject, mask -> regionstats (TSV)                         -> regionstats_tsv
    all of them -> segmentation_derivatives (only when ``run`` is given)
"""

from __future__ import annotations

import json
from pathlib import Path

from nipype.interfaces.utility import IdentityInterface
from nipype.pipeline import engine as pe

from qsm_bids.bids.layout import Run
from qsm_bids.bids.segmentation import Segmentation
from qsm_bids.interfaces.load import run_to_json
from qsm_bids.interfaces.registration import (
    ApplyToTemplate,
    AtlasToSubject,
    MeasureRegistrationQuality,
    RegionStatistics,
    RegisterToTemplate,
    SegmentationToSubject,
    WriteRegistrationDerivatives,
    WriteSegmentationDerivatives,
    names_to_json,
)
from qsm_bids.interfaces.reportlets import LabelsReportlet, RegistrationReportlet, Reportlets


def init_registration_wf(
    *,
    template_resolution_mm: float = 0.0,
    registration_resolution_mm: float = 2.0,
    seed: int = 1234,
    n_procs: int = 1,
    mem_gb: float = 2.0,
    registration_params: dict | None = None,
    run: Run | None = None,
    output_dir: Path | None = None,
    bids_dir: Path | None = None,
    provenance: dict | None = None,
    force_regionstats: bool = False,
    reportlets: Reportlets | None = None,
    name: str = "registration_wf",
) -> pe.Workflow:
    """Registration to the template and regional susceptibility statistics.

    Inputs: ``magnitude`` (3D or 4D; echoes are averaged), ``mask`` (brain), ``chi`` (ppm),
    ``t1w`` (optional), ``meta`` (accepted for symmetry with the other stages; unused).
    Outputs: ``chi_template`` (chi on the MNI152NLin2009aSym grid), ``dseg_subject`` (AAL3 in
    subject space), ``transforms`` (ANTs files), ``xfm_json`` (how to chain them),
    ``quality_json`` (:class:`qsm_bids.registration.quality.RegistrationQuality` as JSON),
    ``regionstats_tsv``, and ``out_files`` (the derivatives written; only with ``run``).

    Parameters
    ----------
    template_resolution_mm : float, default 0.0
        Template grid (1, 2 or 3 mm) of ``chi_template``; 0 picks 1 mm for subject voxels
        below 1.5 mm, else 2 mm.
    registration_resolution_mm : float, default 2.0
        Template grid (1, 2 or 3 mm) the registration itself runs on (and of the SyN warp).
    seed : int, default 1234
        ANTs random seed (registration is reproducible for a fixed seed and ``n_procs``).
    n_procs : int, default 1
        ITK threads of the registration node.
    mem_gb : float, default 2.0
        Memory estimate of the registration node (about 1 GB for 1 mm data).
    registration_params : dict or None, default None
        Extra keyword arguments of
        :func:`qsm_bids.registration.ants_registration.register_to_template`.
    run, output_dir, bids_dir : optional
        When ``run`` is given, a :class:`WriteRegistrationDerivatives` node writes the
        derivatives of that run into ``output_dir`` (``bids_dir`` for ``Sources``).
    provenance : dict or None, default None
        Recipe provenance (``Recipe.provenance()``), recorded in the Chimap sidecar.
    force_regionstats : bool, default False
        Write the AAL3 table even when the registration quality fails its thresholds
        (``--force-regionstats``); otherwise such a run's table is skipped with a warning and
        ``"RegionalStatistics": "skipped: <reasons>"`` in the transforms' JSON.
    reportlets : Reportlets or None, default None
        When given, the ``desc-registration`` (template outlines over the map in template
        space) and ``desc-atlas`` (AAL3 over the map) figures are drawn.
    name : str, default "registration_wf"
        Workflow name.
    """
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(
        IdentityInterface(["magnitude", "mask", "chi", "t1w", "meta"]), name="inputnode"
    )
    outputnode = pe.Node(
        IdentityInterface(
            ["chi_template", "dseg_subject", "transforms", "xfm_json", "quality_json",
             "regionstats_tsv", "out_files"]
        ),
        name="outputnode",
    )  # fmt: skip
    register = pe.Node(
        RegisterToTemplate(
            template_resolution_mm=float(template_resolution_mm),
            registration_resolution_mm=float(registration_resolution_mm),
            seed=int(seed),
            num_threads=max(1, int(n_procs)),
        ),
        name="register",
        mem_gb=mem_gb,
        n_procs=max(1, int(n_procs)),
    )
    if registration_params:
        register.inputs.params = dict(registration_params)
    quality = pe.Node(MeasureRegistrationQuality(), name="quality", mem_gb=0.5 + mem_gb / 4)
    to_template = pe.Node(ApplyToTemplate(), name="to_template", mem_gb=0.5 + mem_gb / 4)
    atlas = pe.Node(AtlasToSubject(), name="atlas", mem_gb=0.5 + mem_gb / 4)
    stats = pe.Node(RegionStatistics(), name="regionstats", mem_gb=0.5)
    wf.connect([
        (inputnode, register, [("magnitude", "magnitude"), ("mask", "mask"), ("t1w", "t1w")]),
        (inputnode, quality, [("mask", "mask")]),
        (register, quality, [("xfm_json", "xfm_json")]),
        (quality, outputnode, [("quality_json", "quality_json")]),
        (inputnode, to_template, [("chi", "in_file")]),
        (register, to_template, [("xfm_json", "xfm_json")]),
        (inputnode, atlas, [("chi", "reference")]),
        (register, atlas, [("xfm_json", "xfm_json")]),
        (inputnode, stats, [("chi", "chi"), ("mask", "mask")]),
        (atlas, stats, [("dseg", "dseg")]),
        (register, outputnode, [("transforms", "transforms"), ("xfm_json", "xfm_json")]),
        (to_template, outputnode, [("out_file", "chi_template")]),
        (atlas, outputnode, [("dseg", "dseg_subject")]),
        (stats, outputnode, [("out_tsv", "regionstats_tsv")]),
    ])  # fmt: skip
    if reportlets is not None:
        overlay = reportlets.node(RegistrationReportlet, "registration_reportlet")
        labels = reportlets.node(LabelsReportlet, "atlas_reportlet", desc="atlas")
        wf.connect([
            (to_template, overlay, [("out_file", "chi_template")]),
            (inputnode, labels, [("chi", "chi"), ("mask", "mask")]),
            (atlas, labels, [("dseg", "labels")]),
        ])  # fmt: skip
    if run is not None:
        if output_dir is None or bids_dir is None:
            raise ValueError("output_dir and bids_dir are needed to write derivatives")
        write = pe.Node(
            WriteRegistrationDerivatives(
                run_json=run_to_json(run),
                output_dir=str(output_dir),
                bids_dir=str(bids_dir),
                provenance=json.dumps(provenance or {}),
                force_regionstats=bool(force_regionstats),
            ),
            name="registration_derivatives",
            mem_gb=0.5 + mem_gb / 4,
            run_without_submitting=True,
            overwrite=True,
        )
        wf.connect([
            (register, write, [("xfm_json", "xfm_json")]),
            (quality, write, [("quality_json", "quality_json")]),
            (to_template, write, [("out_file", "chi_template")]),
            (atlas, write, [("dseg", "dseg_subject")]),
            (stats, write, [("out_tsv", "regionstats_tsv")]),
            (write, outputnode, [("out_files", "out_files")]),
        ])  # fmt: skip
    return wf


def init_segmentation_wf(
    segmentation: Segmentation,
    *,
    mem_gb: float = 1.0,
    run: Run | None = None,
    output_dir: Path | None = None,
    bids_dir: Path | None = None,
    reportlets: Reportlets | None = None,
    name: str | None = None,
) -> pe.Workflow:
    """Regional statistics of a user segmentation (no registration needed).

    The segmentation (in the subject's scanner space) is put on the grid of ``chi`` by world
    coordinates with nearest-neighbour interpolation, then each of its regions is summarised
    inside ``mask`` as for AAL3 (:func:`qsm_bids.core.regionstats.region_statistics`, with a
    whole-brain row).

    Inputs: ``chi`` (ppm), ``mask`` (where chi is defined). Outputs: ``dseg_subject`` (the
    labels on the chi grid), ``regionstats_tsv``, and ``out_files`` (only with ``run``).

    Parameters
    ----------
    segmentation : Segmentation
        Checked with :func:`qsm_bids.bids.segmentation.check_segmentation` (its ``names``
        give the table's rows).
    mem_gb : float, default 1.0
        Memory estimate of each node.
    run, output_dir, bids_dir : optional
        When ``run`` is given, a :class:`WriteSegmentationDerivatives` node writes
        ``<prefix>_desc-<name>_dseg.nii.gz`` (+ ``.json``, ``.tsv``) and
        ``<prefix>_desc-<name>_regionstats.tsv`` (+ ``.json``) into ``output_dir``.
    reportlets : Reportlets or None, default None
        When given, the ``desc-seg<name>`` figure (the labels over the map) is drawn.
    name : str or None, default None
        Workflow name; default ``segmentation_<name>_wf``.
    """
    wf = pe.Workflow(name=name or f"segmentation_{segmentation.name}_wf")
    inputnode = pe.Node(IdentityInterface(["chi", "mask"]), name="inputnode")
    outputnode = pe.Node(
        IdentityInterface(["dseg_subject", "regionstats_tsv", "out_files"]), name="outputnode"
    )
    names_json = names_to_json(segmentation.names)
    to_subject = pe.Node(
        SegmentationToSubject(in_file=str(segmentation.path)), name="to_subject", mem_gb=mem_gb
    )
    stats = pe.Node(RegionStatistics(names_json=names_json), name="regionstats", mem_gb=mem_gb)
    wf.connect([
        (inputnode, to_subject, [("chi", "reference")]),
        (inputnode, stats, [("chi", "chi"), ("mask", "mask")]),
        (to_subject, stats, [("dseg", "dseg")]),
        (to_subject, outputnode, [("dseg", "dseg_subject")]),
        (stats, outputnode, [("out_tsv", "regionstats_tsv")]),
    ])  # fmt: skip
    if reportlets is not None:
        labels = reportlets.node(
            LabelsReportlet,
            "segmentation_reportlet",
            desc=f"seg{segmentation.name}",
            title=f"segmentation {segmentation.name}",
        )
        wf.connect([
            (inputnode, labels, [("chi", "chi"), ("mask", "mask")]),
            (to_subject, labels, [("dseg", "labels")]),
        ])  # fmt: skip
    if run is not None:
        if output_dir is None or bids_dir is None:
            raise ValueError("output_dir and bids_dir are needed to write derivatives")
        write = pe.Node(
            WriteSegmentationDerivatives(
                run_json=run_to_json(run),
                output_dir=str(output_dir),
                bids_dir=str(bids_dir),
                seg_name=segmentation.name,
                seg_file=str(segmentation.path),
                names_json=names_json,
                warnings=list(segmentation.warnings),
            ),
            name="segmentation_derivatives",
            mem_gb=mem_gb,
            run_without_submitting=True,
            overwrite=True,
        )
        if segmentation.labels_file is not None:
            write.inputs.labels_file = str(segmentation.labels_file)
        wf.connect([
            (to_subject, write, [("dseg", "dseg_subject")]),
            (stats, write, [("out_tsv", "regionstats_tsv")]),
            (write, outputnode, [("out_files", "out_files")]),
        ])  # fmt: skip
    return wf
