import copy
from pathlib import Path

import pytest
import yaml

from levity.fluentconf import ProfileError, load_profile

HERE = Path(__file__).parent

# A small valid profile that the error tests break one key at a time.
BASE = {
    "description": "test profile",
    "sources": {"forward": {"port": 24224}},
    "filters": [{"name": "metadata", "type": "record_transformer", "record": {"environment": "test"}}],
    "outputs": [
        {"name": "console", "type": "stdout"},
        {"name": "files", "type": "file", "path": "/var/log/fluent/ocpp/${tag}/%Y-%m-%d",
         "buffer": {"type": "file", "chunk_keys": ["tag", "time"], "timekey": "1d"}},
        {"name": "es", "type": "elasticsearch", "host": "es.example", "user": "writer",
         "password": {"env": "ES_PASSWORD"},
         "buffer": {"type": "file", "total_limit_size": "1g", "retry_timeout": "1h"}},
    ],
    "routes": [{"match": "ocpp.transaction.**", "outputs": ["es", "files"]},
               {"match": "ocpp.**", "outputs": ["console", "files"]}],
}


@pytest.fixture
def base():
    return copy.deepcopy(BASE)


@pytest.fixture
def write_profile(tmp_path):
    def write(data, name="profile.yaml"):
        path = tmp_path / name
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
        return path
    return write


@pytest.fixture
def profile_error(write_profile):
    """Load a broken profile and return its ProfileError (fails if it loads)."""
    def load(data) -> ProfileError:
        path = write_profile(data)
        with pytest.raises(ProfileError) as caught:
            load_profile(path)
        return caught.value
    return load
