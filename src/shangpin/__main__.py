"""`python -m shangpin` runs the CLI."""

from shangpin.cli import main

main()
