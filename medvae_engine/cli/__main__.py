"""`python -m medvae_engine.cli ...` (as under torchrun): the `medvae` command."""

import sys

from .main import main

sys.exit(main())
