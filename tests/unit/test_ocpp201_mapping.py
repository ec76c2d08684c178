"""The 2.0.1 audit mapping's arithmetic: energy in Wh from unitOfMeasure, sample counting."""

from levity.ocpp201.handlers import as_16_meter_values, energy_wh, samples


def test_energy_is_converted_to_wh_from_unit_and_multiplier():
    assert energy_wh({"value": 1500}) == 1500  # Wh is the default unit
    assert energy_wh({"value": 1.5, "unitOfMeasure": {"unit": "kWh"}}) == 1500
    assert energy_wh({"value": 15, "unitOfMeasure": {"unit": "Wh", "multiplier": 2}}) == 1500
    assert energy_wh({"value": 15, "unitOfMeasure": {"unit": "kWh", "multiplier": -1}}) == 1500
    assert energy_wh({"value": 3, "unitOfMeasure": {"unit": "varh"}}) is None  # no energy figure


def test_samples_and_stored_rows_follow_the_1_6_shape():
    meter_value = [{"timestamp": "2024-01-15T10:00:00Z", "sampledValue": [
        {"value": 2, "unitOfMeasure": {"unit": "kWh"}},
        {"value": 2301, "measurand": "Voltage", "unitOfMeasure": {"unit": "V", "multiplier": -1}, "phase": "L1"}]}]
    assert samples(meter_value) == (2, ["Energy.Active.Import.Register", "Voltage"])
    rows = as_16_meter_values(meter_value)[0]["sampled_value"]
    assert (rows[0]["value"], rows[0]["unit"]) == ("2000", "Wh")
    assert (rows[1]["value"], rows[1]["unit"], rows[1]["phase"]) == ("230.1", "V", "L1")
