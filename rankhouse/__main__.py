"""``python -m rankhouse COMMAND ...``: the console script without its entry point."""

from rankhouse import main

main()
