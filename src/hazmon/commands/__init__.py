"""CLI verbs, one module per area: the outermost room, may import anything.
Each module defines ``register(subparsers)``; every parser it adds
sets ``handler`` (a function of the parsed args returning the exit code) with ``set_defaults``."""
