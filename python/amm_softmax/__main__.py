"""`python -m amm_softmax info`: what is installed and what runs (see _info.py)."""
import sys

from ._info import main

sys.exit(main())
