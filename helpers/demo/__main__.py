"""`python -m helpers.demo --out data/demo [--full]`: generate the demo dataset."""
from . import main

main()
