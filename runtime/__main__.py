"""python -m runtime --export DIR --prompt "..." [--prompt ...] [--chat] [--max-new-tokens N] ..."""
import sys

from .cli import main

sys.exit(main())
