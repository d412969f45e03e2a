"""`python -m bertlite ...`: see bertlite.cli."""
from .cli import main

main()
