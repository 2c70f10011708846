"""`python -m kubeguard`."""

from kubeguard.cli import main

main()
