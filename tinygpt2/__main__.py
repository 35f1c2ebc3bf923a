import sys

from tinygpt2.cli import main

sys.exit(main())
