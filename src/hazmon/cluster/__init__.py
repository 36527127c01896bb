"""Scale-out on NATS JetStream: the stages of one hazmon process (gateways, rule engine, writers) as separate
processes joined by streams. May import every room below the runtime; the runtime and the API do not import it."""
