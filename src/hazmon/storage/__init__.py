"""Storage: the database connection, migrations, the reading store (binary COPY), the disk spool and forwarder,
maintenance (rollups, retention) and the site registry. May import hazmon.plant, hazmon.regulator's grading,
hazmon.reading and hazmon.backoff; never the API, the runtime or the alarm engine."""
