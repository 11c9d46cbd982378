import sys

from rgtp.cli import main

sys.exit(main())
