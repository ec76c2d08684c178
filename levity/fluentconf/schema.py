"""The profile schema: what a YAML profile may say, checked key by key (unknown keys are errors).

Only parameters the real plugins accept are modelled; the template adds the few fixed ones
(e.g. `suppress_type_name true` for Elasticsearch 8). Error messages raised here start with
"expected ..." so that levity.fluentconf.profile can build "found X; expected Y".
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (BaseModel, ValidationError, BeforeValidator, ConfigDict, Field, StringConstraints,
                      field_validator, model_validator)
from pydantic_core import PydanticCustomError

from levity.config import is_loopback_host
from levity.fluentconf.units import canonical_duration, canonical_size

ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
SECRET_FILE = re.compile(r"^/[A-Za-z0-9_./@+-]+$")


def _no_control(value: Any) -> Any:
    if isinstance(value, str) and any(ch in value for ch in "\r\n\t\x00"):
        raise ValueError("expected a single-line string (no newlines or tabs)")
    return value


Size = Annotated[str, BeforeValidator(canonical_size)]
Duration = Annotated[str, BeforeValidator(canonical_duration)]
Name = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,62}$")]
Port = Annotated[int, Field(ge=1, le=65535)]
Host = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$|^[0-9A-Fa-f:.]+$")]
# Paths: absolute or relative, with Fluentd placeholders (${tag}, %Y...), never quotes or spaces.
Path = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_./${}\[\]%@+=:-]+$")]
AbsPath = Annotated[str, StringConstraints(pattern=r"^/[A-Za-z0-9_./@+=:-]*$")]
TagPattern = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.*{},@-]+( [A-Za-z0-9_.*{},@-]+)*$")]
Word = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_./@:+-]+$")]
Text = Annotated[str, BeforeValidator(_no_control)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False, validate_default=True)


class SecretRef(Strict):
    """Where Fluentd reads a secret at start: an environment variable or a file."""

    env: str | None = None
    file: str | None = None

    @model_validator(mode="after")
    def _one(self) -> "SecretRef":
        if (self.env is None) == (self.file is None):
            raise ValueError("expected exactly one of {env: NAME} or {file: /path}")
        if self.env is not None and not ENV_NAME.match(self.env):
            raise ValueError("expected an environment variable name matching ^[A-Z_][A-Z0-9_]*$")
        if self.file is not None and not SECRET_FILE.match(self.file):
            raise ValueError("expected an absolute file path of letters, digits and _./@+- (no quotes or spaces)")
        return self

    def ruby(self) -> str:
        """The embedded-Ruby string Fluentd evaluates when it reads the config (double quotes)."""
        if self.env is not None:
            return f"\"#{{ENV['{self.env}']}}\""
        return f"\"#{{File.read('{self.file}').strip}}\""


def _secret(value: Any) -> Any:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        raise PydanticCustomError(
            "literal_secret",
            "expected {env: NAME} or {file: /path}: secrets never appear literally in a profile "
            "or in the rendered fluent.conf",
        )
    return value


Secret = Annotated[SecretRef, BeforeValidator(_secret)]


def _true_is_empty(value: Any) -> Any:
    """`monitor_agent: true` means the defaults; `false` means off."""
    if value is True:
        return {}
    if value is False:
        return None
    return value


# ---------------------------------------------------------------------------------------- system

class System(Strict):
    log_level: Literal["trace", "debug", "info", "warn", "error", "fatal"] = "info"
    workers: Annotated[int, Field(ge=1, le=64)] | None = None


class Directories(Strict):
    """Defaults for file buffer paths and secondary_file directories (one sub-directory per output)."""

    buffers: AbsPath = "/var/log/fluent/buffer"
    failed: AbsPath = "/var/log/fluent/failed"


# --------------------------------------------------------------------------------------- sources

class SourceTls(Strict):
    enabled: bool = True
    cert_path: AbsPath | None = None
    private_key_path: AbsPath | None = None
    private_key_passphrase: Secret | None = None
    client_cert_auth: bool = False
    ca_path: AbsPath | None = None

    @model_validator(mode="after")
    def _paths(self) -> "SourceTls":
        if self.enabled:
            missing = [k for k in ("cert_path", "private_key_path") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"expected cert_path and private_key_path when TLS is enabled "
                                 f"(missing: {', '.join(missing)})")
            if self.client_cert_auth and self.ca_path is None:
                raise ValueError("expected ca_path when client_cert_auth is true (mutual TLS)")
        return self


class Security(Strict):
    self_hostname: Host
    shared_key: Secret


class ForwardSource(Strict):
    # Loopback unless a profile says otherwise: a forward input takes events from anyone who
    # reaches it, so one reachable from other hosts needs TLS and a shared key.
    bind: Host = "127.0.0.1"
    port: Port = 24224
    tls: SourceTls | None = None
    security: Security | None = None
    # For a network only trusted peers reach (a compose network): no TLS or key beyond loopback.
    allow_unauthenticated: bool = False

    @model_validator(mode="after")
    def _remote_needs_tls_and_key(self) -> "ForwardSource":
        secured = self.tls is not None and self.tls.enabled and self.security is not None
        if not (secured or self.allow_unauthenticated or is_loopback_host(self.bind)):
            raise ValueError(f"expected tls and security (shared key) on a forward input bound to {self.bind}, "
                             "which other hosts reach; or bind 127.0.0.1; or allow_unauthenticated: true "
                             "on a network only trusted peers reach")
        return self


class Sources(Strict):
    forward: ForwardSource = ForwardSource()


class MonitorAgent(Strict):
    bind: Host = "0.0.0.0"
    port: Port = 24220
    include_config: bool = False


class Prometheus(Strict):
    """fluent-plugin-prometheus (not bundled with every Fluentd): only when asked for."""

    bind: Host = "0.0.0.0"
    port: Port = 24231
    metrics_path: AbsPath = "/metrics"
    interval: Duration = "10s"


class Monitoring(Strict):
    monitor_agent: Annotated[MonitorAgent | None, BeforeValidator(_true_is_empty)] = None
    prometheus: Annotated[Prometheus | None, BeforeValidator(_true_is_empty)] = None


# --------------------------------------------------------------------------------------- filters

class FilterBase(Strict):
    name: Name
    type: str
    match: TagPattern = "ocpp.**"


RecordKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_@][A-Za-z0-9_.@-]*$")]


def _record_value(value: Any) -> Any:
    if isinstance(value, dict):
        try:
            return SecretRef.model_validate(value)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ValueError(first["msg"].removeprefix("Value error, ")) from None
    if isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return _no_control(value)
    raise ValueError("expected a string, number, boolean or {env: NAME} / {file: /path}")


RecordValue = Annotated[Any, BeforeValidator(_record_value)]


class RecordTransformerFilter(FilterBase):
    """Adds fields (environment, region, facility_id, ...) to every matching event."""

    type: Literal["record_transformer"]
    record: dict[RecordKey, RecordValue]

    @field_validator("record")
    @classmethod
    def _not_empty(cls, value: dict) -> dict:
        if not value:
            raise ValueError("expected at least one field to add")
        return value


class GrepRule(Strict):
    key: RecordKey
    pattern: Annotated[Text, StringConstraints(min_length=1)]

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        # Rendered unquoted as /pattern/: a '#' could start a comment and outer spaces are trimmed.
        if "#" in value or value != value.strip():
            raise ValueError("expected a regular expression without '#' or leading/trailing spaces "
                             "(use [#] or \\s instead)")
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"expected a regular expression ({exc})") from None
        return value


class AtLeastRule(Strict):
    key: RecordKey
    value: Annotated[int, Field(ge=0)]


class GrepFilter(FilterBase):
    """Keeps (regexp, at_least) or drops (exclude) events; every rule must hold (AND)."""

    type: Literal["grep"]
    regexp: list[GrepRule] = []
    exclude: list[GrepRule] = []
    at_least: list[AtLeastRule] = []

    @model_validator(mode="after")
    def _some_rule(self) -> "GrepFilter":
        if not (self.regexp or self.exclude or self.at_least):
            raise ValueError("expected at least one of regexp, exclude or at_least")
        return self


FILTER_TYPES: dict[str, type[FilterBase]] = {
    "record_transformer": RecordTransformerFilter,
    "grep": GrepFilter,
}


# --------------------------------------------------------------------------------------- outputs

ChunkKey = Literal["tag", "time"]


class Buffer(Strict):
    type: Literal["file", "memory"] = "memory"
    path: AbsPath | None = None
    chunk_keys: list[ChunkKey] = []
    timekey: Duration | None = None
    timekey_wait: Duration | None = None
    timekey_use_utc: bool | None = None
    chunk_limit_size: Size | None = None
    total_limit_size: Size | None = None
    flush_interval: Duration | None = None
    flush_thread_count: Annotated[int, Field(ge=1, le=64)] | None = None
    flush_at_shutdown: bool | None = None
    overflow_action: Literal["throw_exception", "block", "drop_oldest_chunk"] | None = None
    retry_type: Literal["exponential_backoff", "periodic"] | None = None
    retry_wait: Duration | None = None
    retry_max_interval: Duration | None = None
    retry_forever: bool | None = None
    retry_timeout: Duration | None = None
    retry_max_times: Annotated[int, Field(ge=0)] | None = None
    # With the profile's `sizing`: the fraction of the event rate this output receives (billing
    # gets only the transaction events). Not a Fluentd parameter: used by the sizing only.
    share: Annotated[float, Field(gt=0, le=1)] = 1.0

    @field_validator("chunk_keys")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("expected each chunk key at most once")
        return sorted(value)  # order is not semantic: sorted for deterministic output

    @model_validator(mode="after")
    def _consistent(self) -> "Buffer":
        if "time" in self.chunk_keys and self.timekey is None:
            raise ValueError("expected timekey: the chunk key 'time' needs a timekey (e.g. 1d)")
        if "time" not in self.chunk_keys and (self.timekey or self.timekey_wait or self.timekey_use_utc is not None):
            raise ValueError("expected chunk key 'time' when timekey, timekey_wait or timekey_use_utc is set")
        if self.type == "memory" and self.path is not None:
            raise ValueError("expected no path for a memory buffer (path is for type: file)")
        if self.retry_forever and (self.retry_timeout is not None or self.retry_max_times is not None):
            raise ValueError("expected either retry_forever or retry_timeout/retry_max_times, not both")
        return self

    @property
    def flush_mode(self) -> str | None:
        # With a time chunk key Fluentd's default flush_mode is lazy and it ignores (with a
        # warning) flush_interval; with a flush_interval we always ask for interval mode.
        return "interval" if self.flush_interval is not None else None


class Secondary(Strict):
    directory: AbsPath | None = None
    compress: Literal["text", "gzip"] = "text"


class OutputBase(Strict):
    name: Name
    type: str
    buffer: Buffer | None = None
    secondary: Annotated[Secondary | None, BeforeValidator(_true_is_empty)] = None

    BUFFERED: ClassVar[bool] = True
    NEEDS_BUFFER: ClassVar[bool] = False  # plugins whose default buffer has a time key
    PATH_FIELD: ClassVar[str | None] = None  # the parameter that may carry ${tag} / %Y placeholders

    @model_validator(mode="after")
    def _secondary_needs_buffer(self) -> "OutputBase":
        if self.secondary is not None and self.buffer is None:
            raise ValueError("expected a buffer section: secondary_file only applies to buffered outputs")
        return self


class StdoutOutput(OutputBase):
    type: Literal["stdout"]
    BUFFERED: ClassVar[bool] = False

    @model_validator(mode="after")
    def _unbuffered(self) -> "StdoutOutput":
        if self.buffer is not None:
            raise ValueError("expected no buffer for stdout (it writes synchronously)")
        return self


class FileOutput(OutputBase):
    type: Literal["file"]
    path: Path
    compress: Literal["gzip", "text"] = "gzip"
    append: bool = False
    format: Literal["json", "out_file"] = "json"
    NEEDS_BUFFER: ClassVar[bool] = True
    PATH_FIELD: ClassVar[str | None] = "path"


class ElasticsearchOutput(OutputBase):
    type: Literal["elasticsearch"]
    host: Host = "localhost"
    port: Port = 9200
    scheme: Literal["http", "https"] = "http"
    user: Word | None = None
    password: Secret | None = None
    index_name: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]*$")] = "ocpp_events"
    include_tag_key: bool = True
    tag_key: RecordKey = "@log_name"
    default_elasticsearch_version: Literal[7, 8] = 8
    # Idempotent writes: the document _id is the event's event_id, so an event Levity or
    # Fluentd sends again after an outage overwrites its first copy instead of doubling it.
    id_key: RecordKey = "event_id"
    write_operation: Literal["index", "create"] = "index"
    ssl_verify: bool | None = None
    ca_file: AbsPath | None = None
    request_timeout: Duration | None = None
    reconnect_on_error: bool | None = None
    reload_on_failure: bool | None = None
    reload_connections: bool | None = None

    @model_validator(mode="after")
    def _auth(self) -> "ElasticsearchOutput":
        if (self.user is None) != (self.password is None):
            raise ValueError("expected both user and password, or neither")
        return self


class CloudwatchLogsOutput(OutputBase):
    type: Literal["cloudwatch_logs"]
    region: Word
    log_group_name: Path = "/ocpp/audit"
    use_tag_as_stream: bool = True
    log_stream_name: Word | None = None
    auto_create_stream: bool = True
    aws_key_id: Secret | None = None
    aws_sec_key: Secret | None = None
    retention_in_days: Annotated[int, Field(ge=1)] | None = None

    @model_validator(mode="after")
    def _stream(self) -> "CloudwatchLogsOutput":
        # The plugin raises unless exactly one of log_stream_name / use_tag_as_stream is given.
        if self.use_tag_as_stream == (self.log_stream_name is not None):
            raise ValueError("expected exactly one of use_tag_as_stream: true or log_stream_name")
        if (self.aws_key_id is None) != (self.aws_sec_key is None):
            raise ValueError("expected both aws_key_id and aws_sec_key, or neither (instance role)")
        return self


class S3Output(OutputBase):
    type: Literal["s3"]
    bucket: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")]
    region: Word
    path: Path = "ocpp/${tag}/%Y/%m/%d/"
    store_as: Literal["gzip", "json", "text"] = "gzip"
    aws_key_id: Secret | None = None
    aws_sec_key: Secret | None = None
    NEEDS_BUFFER: ClassVar[bool] = True
    PATH_FIELD: ClassVar[str | None] = "path"

    @model_validator(mode="after")
    def _keys(self) -> "S3Output":
        if (self.aws_key_id is None) != (self.aws_sec_key is None):
            raise ValueError("expected both aws_key_id and aws_sec_key, or neither (instance role)")
        return self


class ForwardServer(Strict):
    host: Host
    port: Port = 24224
    name: Name | None = None
    standby: bool = False
    weight: Annotated[int, Field(ge=1, le=1000)] | None = None


class ForwardTls(Strict):
    enabled: bool = True
    ca_path: AbsPath | None = None  # rendered as tls_cert_path (the CA that signed the servers)
    verify_hostname: bool = True
    client_cert_path: AbsPath | None = None
    client_private_key_path: AbsPath | None = None

    @model_validator(mode="after")
    def _client(self) -> "ForwardTls":
        if (self.client_cert_path is None) != (self.client_private_key_path is None):
            raise ValueError("expected both client_cert_path and client_private_key_path, or neither")
        return self


class ForwardOutput(OutputBase):
    type: Literal["forward"]
    servers: Annotated[list[ForwardServer], Field(min_length=1)]
    require_ack_response: bool = True
    ack_response_timeout: Duration | None = None
    # Fluentd resolves server names while reading the config; without this a billing host
    # that does not resolve (yet) stops Fluentd from starting at all.
    ignore_network_errors_at_startup: bool = True
    tls: ForwardTls | None = None
    self_hostname: Host | None = None
    shared_key: Secret | None = None

    @model_validator(mode="after")
    def _servers(self) -> "ForwardOutput":
        if all(server.standby for server in self.servers):
            raise ValueError("expected at least one server that is not standby")
        if (self.shared_key is None) != (self.self_hostname is None):
            raise ValueError("expected both shared_key and self_hostname, or neither")
        return self


OUTPUT_TYPES: dict[str, type[OutputBase]] = {
    "stdout": StdoutOutput,
    "file": FileOutput,
    "elasticsearch": ElasticsearchOutput,
    "cloudwatch_logs": CloudwatchLogsOutput,
    "s3": S3Output,
    "forward": ForwardOutput,
}


def _rate(value: Any) -> Any:
    """Events per second: 5000, 5000.5, "5000/s" or "5000 events/s"."""
    if isinstance(value, str):
        match = re.match(r"^\s*(\d+(?:\.\d+)?)\s*(?:events?\s*)?(?:/\s*s(?:ec(?:ond)?)?)?\s*$", value)
        if match:
            value = float(match.group(1))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e9:
        raise ValueError('expected a positive number of events per second, like 5000 or "5000 events/s"')
    return float(value)


class Sizing(Strict):
    """What the file buffers must hold: the generator computes their limits from it (sizing.py)."""

    rate: Annotated[float, BeforeValidator(_rate)]  # events per second at peak
    survive: Duration  # the outage of a destination the buffers hold without losing events
    event_size: Size = "1k"  # average size of one event in a buffer chunk (JSON with metadata)
    catch_up: Duration | None = None  # drain the backlog within this after the outage (default: survive)
    write_time: Duration = "1s"  # how long one chunk write to the destination takes
    headroom: Annotated[float, Field(ge=1, le=10)] = 1.5
    max_disk: Size | None = None  # refuse a profile whose sized buffers need more disk than this

    @field_validator("survive")
    @classmethod
    def _not_zero(cls, value: str) -> str:
        if value.startswith("0") and value.rstrip("smhd") == "0":
            raise ValueError("expected a duration longer than 0, like 2h")
        return value


class Route(Strict):
    match: TagPattern
    outputs: Annotated[list[Name], Field(min_length=1)]

    @field_validator("outputs")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("expected each output at most once per route")
        return value


class ProfileDoc(Strict):
    """The top level of a profile (filters and outputs are validated per type, see profile.py)."""

    description: Annotated[Text, StringConstraints(min_length=1, max_length=200)]
    extends: str | None = None
    system: System = System()
    directories: Directories = Directories()
    sources: Sources = Sources()
    monitoring: Monitoring = Monitoring()
    sizing: Sizing | None = None
    filters: list[dict[str, Any]] = []
    outputs: Annotated[list[dict[str, Any]], Field(min_length=1)]
    routes: Annotated[list[Route], Field(min_length=1)]
