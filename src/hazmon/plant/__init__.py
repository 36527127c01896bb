"""The plant model: site files (enterprise, site, installations, equipment, tags), the tag index, the directory
of places. The innermost room: imports nothing of hazmon but hazmon.errors."""
