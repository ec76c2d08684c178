import pytest

from levity.audit.events import EventFactory
from levity.config import Settings
from tests.support.forward_receiver import ForwardReceiver


@pytest.fixture
def receiver():
    with ForwardReceiver() as r:
        yield r


@pytest.fixture
def settings_for(tmp_path):
    def make(receiver, **overrides) -> Settings:
        values = dict(fluentd_enabled=True, fluentd_host="127.0.0.1", fluentd_port=receiver.port,
                      fluentd_timeout=1.0, spool_dir=str(tmp_path / "spool"), flush_interval=0.05, batch_size=200)
        values.update(overrides)
        return Settings(**values)
    return make


@pytest.fixture
def factory():
    return EventFactory("ocpp")
