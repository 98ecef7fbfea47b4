import sys

from workbench.ui.cli import main

sys.exit(main())
