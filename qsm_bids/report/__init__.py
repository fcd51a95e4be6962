"""Reports of qsm_bids: the per-participant HTML page and its figures.

``write_subject_report(output_dir, subject, bids_dir=...)`` writes
``<output_dir>/sub-<label>.html`` with its figures in ``<output_dir>/sub-<label>/figures/``.
"""

from qsm_bids.report.html import write_subject_report

__all__ = ["write_subject_report"]
