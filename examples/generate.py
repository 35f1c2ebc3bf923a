"""Generate text: the same as `tinygpt2 generate`.

    python examples/generate.py --model shakespeare --prompt "ROMEO:"
    python examples/generate.py --model gpt2 --target webgpu
"""

import sys

from tinygpt2.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
