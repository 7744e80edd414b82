"""``python -m cdc_bridge.cli``: the same as the ``cdc-bridge`` console script."""

from cdc_bridge.cli.main import main

main()
