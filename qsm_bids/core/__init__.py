"""The numerics of qsm_bids: pure functions on numpy arrays, no file I/O, no nipype.

One sub-module (or sub-package) per pipeline stage: ``mask``, ``unwrap``, ``echoes``,
``background``, ``inversion``, ``reference``, ``relaxometry``; shared physics in
``physics`` and k-space kernels in ``kernels``.
"""
