import sys

from .domain_process import main

sys.exit(main(sys.argv[1:]))
