"""CLI verbs, one module per area: the outermost room, may import anything.
Each module defines ``register(subparsers)``; every parser it adds
sets ``handler`` (a function of the parsed args returning the exit code) with ``set_defaults``."""

DATABASE_HELP = (
    "database: HAZMON_DATABASE_URL (a PostgreSQL/TimescaleDB URL) or, when unset, the embedded PostgreSQL "
    "in HAZMON_DATA_DIR/postgres (default .hazmon, the same directory `hazmon demo` uses)"
)
