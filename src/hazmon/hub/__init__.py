"""The regulator hub: the receiving end of enterprises' uplinks (docs/uplink.md).

Today it is the seed of it: an HTTP receiver (``receiver.py``) that checks the signature, decrypts
SM4 and hands each message to a sink (``sink.py``; a JSON-lines file that drops duplicates and
counts what it received). `hazmon hub receive` (or ``python -m hazmon.hub``) runs it; a future
``hazmon serve --role hub`` grows it into the regulator's platform (storage, views, warnings).
The hub shares the wire format with the sender (``hazmon.regulator.uplink_payload``) and nothing
else of an enterprise's runtime.
"""
