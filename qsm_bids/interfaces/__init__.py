"""Thin nipype interfaces: read files, call one :mod:`qsm_bids.core` function, write files."""
