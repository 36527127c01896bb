"""The alarm system (ISA-18.2): vocabulary, rule files and their compilation, the vectorized engine, journal, KPIs.
May import hazmon.plant, hazmon.reading and hazmon.errors; never gateways, storage, the API or the runtime."""
