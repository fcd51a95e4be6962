"""``python -m qsm_bids.cli``: the same as the ``qsm-bids`` command."""

from qsm_bids.cli.main import main

raise SystemExit(main())
