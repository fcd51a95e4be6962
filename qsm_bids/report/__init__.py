"""Reports of qsm_bids: the per-participant HTML page and its figures.

``write_subject_report(output_dir, subject, bids_dir=...)`` writes
``<output_dir>/sub-<label>.html``; its figures are the reportlets in
``<output_dir>/sub-<label>/figures/``.

Modules, by what they do:

* :mod:`~qsm_bids.report.discovery`: finding a participant's runs and their files;
* :mod:`~qsm_bids.report.collect`: what the sidecars and tables say (provenance, messages,
  region tables, registration quality, summary numbers);
* :mod:`~qsm_bids.report.reportlets`: one figure function per stage, and their names;
* :mod:`~qsm_bids.report.figures`: the plotting primitives (matplotlib);
* :mod:`~qsm_bids.report.assemble`: the page, from the reportlets and a jinja2 template
  (``templates/subject.html.j2``).
"""

from qsm_bids.report.assemble import write_subject_report

__all__ = ["write_subject_report"]
