"""Levity: an OCPP 1.6J central system that audits every exchange to Fluentd."""

__version__ = "0.1.0"
