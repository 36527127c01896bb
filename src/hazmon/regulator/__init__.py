"""What regulators ask for: GB 18218 identification and grading, remote-monitoring compliance.
May import hazmon.plant and hazmon.alarms' vocabulary; never gateways, storage internals or the API."""
