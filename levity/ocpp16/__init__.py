"""OCPP 1.6J: the actions a charge point sends, their schemas, handlers and audit mapping."""
