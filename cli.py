"""Run atlas from a checkout without installing it: `python cli.py build`."""

from atlas.cli import main

if __name__ == "__main__":
    main()
