"""``python -m pefteval``: the same as the ``pefteval`` command."""

from pefteval.cli import main

if __name__ == "__main__":
    main()
