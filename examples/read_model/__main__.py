"""``python -m examples.read_model run|rebuild -c CONFIG --db FILE``."""

from examples.read_model.service import main

main()
