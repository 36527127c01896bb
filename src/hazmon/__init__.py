"""hazmon — real-time monitoring of major hazard installations of hazardous chemicals."""

__version__ = "0.1.0"
