"""`python -m pi0.ript.bench`: the runner bench (`pi0-ript bench runner`)."""

import sys

from pi0.ript.bench import main

sys.exit(main())
