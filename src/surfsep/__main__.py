import sys

from surfsep.cli import main

sys.exit(main())
