import sys

from avpretrain.cli import main

sys.exit(main())
