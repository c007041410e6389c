import sys

from strdiffusion.cli import main

sys.exit(main())
