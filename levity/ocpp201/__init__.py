"""OCPP 2.0.1: the messages a charging station sends, their schemas, handlers and their
mapping onto the one audit contract (levity/audit/events.py)."""
