import sys

from hazmon.hub.cli import main

sys.exit(main())
