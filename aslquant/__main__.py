import sys

from aslquant.cli import main

sys.exit(main())
