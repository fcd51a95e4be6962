"""The ``qsm-bids`` command line."""
