"""The API's typed answers: FastAPI writes the OpenAPI 3.1 document from these."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ChargePoint(BaseModel):
    id: str
    connected: bool
    ocpp_version: str | None = Field(description="1.6 or 2.0.1; null for a charge point never seen")
    last_seen: str | None = Field(description="last time Levity heard from it, ISO 8601 UTC")
    registered: bool = False
    vendor: str | None = None
    model: str | None = None
    serial_number: str | None = None
    firmware_version: str | None = None
    registration_status: str | None = None


class Connector(BaseModel):
    connector_id: int
    status: str
    error_code: str
    info: str | None = None
    vendor_error_code: str | None = None
    status_timestamp: str | None = Field(None, description="the timestamp the charger sent with the status")
    updated_at: str = Field(description="when Levity received the status")


class ChargePointDetail(ChargePoint):
    connectors: list[Connector]


class Transaction(BaseModel):
    transaction_id: int
    charge_point_id: str
    connector_id: int
    id_tag: str
    meter_start: int | None = Field(description="Wh; null when the start carried no meter reading (OCPP 2.0.1 "
                                                "makes it optional), which is not a reading of 0")
    meter_stop: int | None = Field(description="Wh; null while open, or when the stop carried no reading")
    energy_delivered: int | None = Field(description="Wh, meter_stop - meter_start; null while open, or when "
                                                     "either reading is unknown")
    started_at: str = Field(description="the start timestamp the charger sent")
    stopped_at: str | None = Field(description="the stop timestamp the charger sent; null while open")
    stop_reason: str | None = Field(None, description="the reason the charger gave in its stop")
    state: str = Field(description="open, stopped, or abandoned (closed without a stop: docs/billing.md)")
    closed_reason: str | None = Field(None, description="why an abandoned transaction was closed")
    age_seconds: int | None = Field(None, description="seconds since Levity recorded the start")
    recorded_at: str | None = Field(None, description="when Levity recorded the start")
    stop_recorded_at: str | None = Field(None, description="when Levity recorded the stop")
    ocpp_version: str = Field("1.6", description="the OCPP version the transaction was started in: 1.6 or 2.0.1")
    station_transaction_id: str | None = Field(None, description="OCPP 2.0.1: the station's own transactionId")
    evse_id: int | None = Field(None, description="OCPP 2.0.1: the EVSE of the transaction")


class Problem(BaseModel):
    """application/problem+json (RFC 9457)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    error_code: str | None = None
    error_description: str | None = None
    error_details: Any = None
    unique_id: str | None = None
