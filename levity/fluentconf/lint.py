"""A structural check of a fluent.conf, written from the Fluentd documentation (v1.16/1.17).

It parses the config into sections and reports, per line: unbalanced sections, a missing
`@type`, required parameters that are missing, parameters or sections a plugin does not have
(core plugins and the elasticsearch, s3 and cloudwatch_logs gems), values of the wrong kind
(booleans, integers, sizes, durations, enums, as `--strict-config-value` wants them),
`${tag}`/`%Y` placeholders that the buffer chunk keys cannot fill, secrets that are not
`"#{ENV['NAME']}"` (or `"#{File.read('/path').strip}"`), duplicate `@id`s and buffer paths,
undefined labels and `<match>` sections shadowed by an earlier one.

It is not Fluentd: it knows only the plugins below and cannot see runtime behaviour. Used by
the tests on every shipped profile and by `levity fluentd validate` (and `levity doctor`).

    from levity.fluentconf.lint import lint
    for issue in lint(text): print(issue)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from levity.fluentconf.units import (duration_seconds, has_tag_placeholder, has_time_placeholder, tag_pattern_covers,
                                     time_granularity)


@dataclass(frozen=True)
class LintIssue:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass
class Section:
    name: str
    arg: str
    line: int
    params: list[tuple[str, str, int]] = field(default_factory=list)
    children: list["Section"] = field(default_factory=list)

    def get(self, key: str) -> str | None:
        for name, value, _line in self.params:
            if name == key:
                return value
        return None

    def line_of(self, key: str) -> int:
        for name, _value, line in self.params:
            if name == key:
                return line
        return self.line

    def sections(self, name: str) -> list["Section"]:
        return [child for child in self.children if child.name == name]

    @property
    def type(self) -> str | None:
        return self.get("@type")


_OPEN = re.compile(r"^<\s*([A-Za-z_][\w.-]*)(?:\s+([^>]*?))?\s*>$")
_CLOSE = re.compile(r"^<\s*/\s*([A-Za-z_][\w.-]*)\s*>$")


def parse(text: str) -> tuple[Section, list[LintIssue]]:
    """The config as a tree under a root Section, and the balance problems found on the way."""
    root = Section("(root)", "", 0)
    stack = [root]
    issues: list[LintIssue] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if match := _CLOSE.match(line):
            if len(stack) == 1:
                issues.append(LintIssue(number, f"</{match.group(1)}> closes nothing"))
            elif stack[-1].name != match.group(1):
                issues.append(LintIssue(number, f"</{match.group(1)}> closes <{stack[-1].name}> "
                                                 f"opened on line {stack[-1].line}"))
                stack.pop()
            else:
                stack.pop()
            continue
        if match := _OPEN.match(line):
            section = Section(match.group(1), (match.group(2) or "").strip(), number)
            stack[-1].children.append(section)
            stack.append(section)
            continue
        if line.startswith("<"):
            issues.append(LintIssue(number, f"malformed section line {line!r}"))
            continue
        key, _, value = line.partition(" ")
        if len(stack) == 1:
            issues.append(LintIssue(number, f"parameter {key!r} outside any section"))
        stack[-1].params.append((key, value.strip(), number))
    for section in stack[1:]:
        issues.append(LintIssue(section.line, f"<{section.name}> is never closed"))
    return root, issues


# ------------------------------------------------------------------------------- plugin knowledge
# Value kinds: str, bool, int, float, size, time, enum:a|b, secret (must be embedded Ruby).

@dataclass(frozen=True)
class Spec:
    params: dict[str, str]
    required: frozenset[str] = frozenset()
    sections: dict[str, "Spec"] = field(default_factory=dict)
    multi: frozenset[str] = frozenset()     # sections that may appear more than once
    free: bool = False                      # any parameter allowed (<record>, <labels>)


def _spec(params: str = "", required: str = "", sections: dict | None = None, multi: str = "",
          free: bool = False) -> Spec:
    parsed = {}
    for item in params.split():
        name, _, kind = item.partition("=")
        parsed[name] = kind or "str"
    return Spec(parsed, frozenset(required.split()), sections or {}, frozenset(multi.split()), free)


BUFFER = _spec(
    "@type=enum:memory|file|file_single path chunk_limit_size=size chunk_limit_records=int "
    "total_limit_size=size queue_limit_length=int chunk_full_threshold=float "
    "queued_chunks_limit_size=int compress=enum:text|gzip flush_at_shutdown=bool "
    "flush_mode=enum:default|lazy|interval|immediate flush_interval=time flush_thread_count=int "
    "flush_thread_interval=float flush_thread_burst_interval=float delayed_commit_timeout=time "
    "overflow_action=enum:throw_exception|block|drop_oldest_chunk retry_timeout=time "
    "retry_forever=bool retry_max_times=int retry_secondary_threshold=float "
    "retry_type=enum:exponential_backoff|periodic retry_wait=time retry_exponential_backoff_base=float "
    "retry_max_interval=time retry_randomize=bool disable_chunk_backup=bool timekey=time "
    "timekey_wait=time timekey_use_utc=bool timekey_zone path_suffix")
FORMAT = _spec("@type add_newline=bool json_parser delimiter output_tag=bool output_time=bool "
               "time_format time_type=enum:float|unixtime|string|mixed localtime=bool utc=bool timezone "
               "message_key", "@type")
INJECT = _spec("hostname_key hostname worker_id_key tag_key time_key time_type=enum:float|unixtime|string|mixed "
               "time_format localtime=bool utc=bool timezone")
SECONDARY_FILE = _spec("@type @id @log_level directory basename append=bool compress=enum:text|gzip",
                       "@type directory")
OUTPUT_SECTIONS = {"buffer": BUFFER, "format": FORMAT, "inject": INJECT, "secondary": SECONDARY_FILE}
COMMON = "@type @id @log_level=enum:trace|debug|info|warn|error|fatal"

TRANSPORT = _spec(
    "protocol cert_path private_key_path private_key_passphrase=secret client_cert_auth=bool ca_path "
    "version min_version max_version ciphers insecure=bool cert_verifier ca_cert_path "
    "ca_private_key_path ca_private_key_passphrase=secret generate_private_key_length=int "
    "generate_cert_country generate_cert_state generate_cert_locality generate_cert_common_name "
    "generate_cert_expiration=time generate_cert_digest cert_thumbprint cert_logical_store_name "
    "cert_use_enterprise_store=bool ensure_fips=bool linger_timeout=int")
IN_SECURITY = _spec("self_hostname shared_key=secret user_auth=bool allow_anonymous_source=bool",
                    "self_hostname shared_key",
                    {"user": _spec("username password=secret", "username password"),
                     "client": _spec("host network shared_key=secret users")}, "user client")
SERVER = _spec("host port=int name weight=int standby=bool username password=secret shared_key=secret", "host")
OUT_SECURITY = _spec("self_hostname shared_key=secret username password=secret", "self_hostname shared_key")
AWS_CREDENTIAL_SECTIONS = {
    "assume_role_credentials": _spec("role_arn role_session_name policy duration_seconds=int external_id "
                                     "sts_region sts_http_proxy sts_endpoint_url", "role_arn role_session_name"),
    "web_identity_credentials": _spec("role_arn role_session_name web_identity_token_file policy "
                                      "duration_seconds=int sts_region sts_http_proxy sts_endpoint_url"),
    "instance_profile_credentials": _spec("retries=int ip_address port=int http_open_timeout=float "
                                          "http_read_timeout=float"),
    "shared_credentials": _spec("path profile_name"),
}

PLUGINS: dict[tuple[str, str], Spec] = {
    ("source", "forward"): _spec(
        f"{COMMON} @label port=int bind tag add_tag_prefix linger_timeout=int resolve_hostname=bool "
        "deny_keepalive=bool send_keepalive_packet=bool chunk_size_warn_limit=size "
        "chunk_size_limit=size skip_invalid_event=bool source_address_key source_hostname_key backlog=int",
        "@type", {"transport": TRANSPORT, "security": IN_SECURITY}),
    ("source", "monitor_agent"): _spec(
        f"{COMMON} @label bind port=int tag emit_interval=time include_config=bool include_retry=bool", "@type"),
    ("source", "prometheus"): _spec(
        f"{COMMON} bind port=int metrics_path aggregated_metrics_path", "@type",
        {"ssl": _spec("enable=bool certificate_path private_key_path ca_path extra_conf", free=False),
         "transport": TRANSPORT}),
    ("source", "prometheus_monitor"): _spec(f"{COMMON} interval=time", "@type", {"labels": _spec(free=True)}),
    ("source", "prometheus_output_monitor"): _spec(
        f"{COMMON} interval=time gauge_all=bool", "@type", {"labels": _spec(free=True)}),
    ("filter", "grep"): _spec(
        f"{COMMON}", "@type",
        {"regexp": _spec("key pattern", "key pattern"), "exclude": _spec("key pattern", "key pattern"),
         "and": _spec("", "", {"regexp": _spec("key pattern", "key pattern"),
                               "exclude": _spec("key pattern", "key pattern")}, "regexp exclude"),
         "or": _spec("", "", {"regexp": _spec("key pattern", "key pattern"),
                              "exclude": _spec("key pattern", "key pattern")}, "regexp exclude")},
        "regexp exclude and or"),
    ("filter", "record_transformer"): _spec(
        f"{COMMON} enable_ruby=bool auto_typecast=bool renew_record=bool renew_time_key keep_keys remove_keys",
        "@type", {"record": _spec(free=True)}),
    ("match", "stdout"): _spec(f"{COMMON} output_type", "@type",
                               {"buffer": BUFFER, "format": FORMAT, "inject": INJECT}),
    ("match", "copy"): _spec(f"{COMMON} copy_mode=enum:no_copy|shallow|deep|marshal deep_copy=bool", "@type",
                             {"store": _spec(free=True)}, "store"),  # each <store> is checked as an output
    ("match", "relabel"): _spec(f"{COMMON} @label", "@type @label"),
    ("match", "null"): _spec(f"{COMMON} never_flush=bool", "@type", {"buffer": BUFFER}),
    ("match", "file"): _spec(
        f"{COMMON} path append=bool add_path_suffix=bool path_suffix compress=enum:text|gzip "
        "recompress=bool symlink_path symlink_path_use_relative=bool file_permission dir_permission",
        "@type path", OUTPUT_SECTIONS),
    ("match", "forward"): _spec(
        f"{COMMON} transport=enum:tcp|tls require_ack_response=bool ack_response_timeout=time "
        "heartbeat_type=enum:transport|tcp|udp|none heartbeat_interval=time send_timeout=time "
        "connect_timeout=time recover_wait=time phi_failure_detector=bool phi_threshold=int "
        "hard_timeout=time expire_dns_cache=time dns_round_robin=bool "
        "ignore_network_errors_at_startup=bool verify_connection_at_startup=bool keepalive=bool "
        "keepalive_timeout=time compress=enum:text|gzip tls_version tls_min_version tls_max_version "
        "tls_ciphers tls_insecure_mode=bool tls_allow_self_signed_cert=bool tls_verify_hostname=bool "
        "tls_cert_path tls_client_cert_path tls_client_private_key_path "
        "tls_client_private_key_passphrase=secret tls_cert_thumbprint tls_cert_logical_store_name "
        "tls_cert_use_enterprise_store=bool",
        "@type", {**OUTPUT_SECTIONS, "server": SERVER, "security": OUT_SECURITY}, "server"),
    # fluent-plugin-elasticsearch 5.x
    ("match", "elasticsearch"): _spec(
        f"{COMMON} host port=int hosts user password=secret path scheme=enum:http|https "
        "ssl_verify=bool ssl_version ssl_min_version ssl_max_version client_key client_cert "
        "client_key_pass=secret ca_file api_key=secret index_name logstash_format=bool logstash_prefix "
        "logstash_prefix_separator logstash_dateformat include_timestamp=bool include_tag_key=bool tag_key "
        "time_key time_key_format time_precision=int time_key_exclude_timestamp=bool utc_index=bool "
        "id_key parent_key routing_key write_operation=enum:index|create|update|upsert target_index_key "
        "target_type_key type_name remove_keys remove_keys_on_update remove_keys_on_update_key "
        "flatten_hashes=bool flatten_hashes_separator request_timeout=time reload_connections=bool "
        "reload_on_failure=bool reload_after=int resurrect_after=time reconnect_on_error=bool "
        "with_transporter_log=bool content_type http_backend=enum:excon|typhoeus "
        "prefer_oj_serializer=bool pipeline suppress_type_name=bool verify_es_version_at_startup=bool "
        "default_elasticsearch_version=int max_retry_get_es_version=int log_es_400_reason=bool "
        "suppress_doc_wrap=bool ignore_exceptions exception_backup=bool "
        "bulk_message_request_threshold=size compression_level sniffer_class_name selector_class_name "
        "custom_headers include_index_in_url=bool emit_error_for_missing_id=bool enable_ilm=bool "
        "ilm_policy_id ilm_policy ilm_policy_overwrite=bool template_name template_file "
        "template_overwrite=bool templates customize_template rollover_index=bool index_date_pattern "
        "deflector_alias application_name use_legacy_template=bool",
        "@type", OUTPUT_SECTIONS),
    # fluent-plugin-s3 1.x
    ("match", "s3"): _spec(
        f"{COMMON} aws_key_id=secret aws_sec_key=secret aws_iam_retries=int s3_bucket s3_region s3_endpoint "
        "enable_transfer_acceleration=bool enable_dual_stack=bool use_bundled_cert=bool "
        "ssl_verify_peer=bool s3_object_key_format force_path_style=bool "
        "store_as=enum:gzip|json|text|lzo|lzma2|gzip_command|parquet|zstd auto_create_bucket=bool "
        "check_bucket=bool check_object=bool check_apikey_on_start=bool proxy_uri path utc=bool "
        "storage_class reduced_redundancy=bool acl grant_full_control grant_read grant_read_acp "
        "grant_write_acp hex_random_length=int index_format overwrite=bool use_server_side_encryption "
        "ssekms_key_id sse_customer_algorithm sse_customer_key=secret sse_customer_key_md5 "
        "compute_checksums=bool signature_version warn_for_delay=time time_slice_format",
        "@type s3_bucket",
        {**OUTPUT_SECTIONS, **AWS_CREDENTIAL_SECTIONS,
         "bucket_lifecycle_rule": _spec("id prefix expiration_days=int", "id expiration_days"),
         "compress": _spec("parquet_compression_codec parquet_page_size=size parquet_row_group_size=size "
                           "record_type schema_type schema_file")},
        "bucket_lifecycle_rule"),
    # fluent-plugin-cloudwatch-logs 0.14+
    ("match", "cloudwatch_logs"): _spec(
        f"{COMMON} aws_key_id=secret aws_sec_key=secret aws_instance_profile_credentials_retries=int "
        "aws_use_sts=bool aws_sts_role_arn aws_sts_session_name aws_sts_external_id aws_sts_policy "
        "aws_sts_duration_seconds=time aws_sts_endpoint_url aws_ecs_authentication=bool region endpoint "
        "ssl_verify_peer=bool log_group_name log_stream_name auto_create_stream=bool message_keys "
        "max_message_length=int max_events_per_batch=int use_tag_as_group=bool use_tag_as_stream=bool "
        "log_group_name_key log_stream_name_key remove_log_group_name_key=bool "
        "remove_log_stream_name_key=bool http_proxy put_log_events_retry_wait=time "
        "put_log_events_retry_limit=int put_log_events_disable_retry_limit=bool concurrency=int "
        "retention_in_days=int retention_in_days_key remove_retention_in_days_key=bool "
        "log_group_aws_tags log_group_aws_tags_key remove_log_group_aws_tags_key=bool "
        "json_handler=enum:yajl|json log_rejected_request=bool include_time_key=bool localtime=bool",
        "@type", {**OUTPUT_SECTIONS, "web_identity_credentials": AWS_CREDENTIAL_SECTIONS["web_identity_credentials"]}),
}

SYSTEM = _spec(
    "log_level=enum:trace|debug|info|warn|error|fatal workers=int root_dir suppress_repeated_stacktrace=bool "
    "emit_error_log_interval=time suppress_config_dump=bool without_source=bool rpc_endpoint "
    "enable_get_dump=bool process_name log_event_verbose=bool ignore_repeated_log_interval=time "
    "ignore_same_log_interval=time enable_msgpack_time_support=bool file_permission dir_permission "
    "strict_config_value=bool disable_shared_socket=bool enable_input_metrics=bool enable_size_metrics=bool",
    sections={"log": _spec("format=enum:text|json time_format rotate_age rotate_size=size "
                           "forced_stacktrace_level")})

SECRET_VALUE = re.compile(r"""^"#\{ENV\['[A-Z_][A-Z0-9_]*'\]\}"$|^"#\{File\.read\('/[^'"\s]+'\)\.strip\}"$""")
_KINDS = {
    "bool": (re.compile(r"^(true|false)$"), "true or false"),
    "int": (re.compile(r"^-?\d+$"), "an integer"),
    "float": (re.compile(r"^-?\d+(\.\d+)?$"), "a number"),
    "size": (re.compile(r"^\d+[kmgtKMGT]?$"), "a size such as 8m"),
    "time": (re.compile(r"^\d+(\.\d+)?[smhd]?$"), "a duration such as 5s"),
}


def _check_value(kind: str, name: str, value: str, line: int, issues: list[LintIssue]) -> None:
    if kind == "secret":
        if not SECRET_VALUE.match(value):
            issues.append(LintIssue(line, f"{name} must be \"#{{ENV['NAME']}}\" or \"#{{File.read('/path').strip}}\", "
                                          f"not a literal value"))
        return
    if kind.startswith("enum:"):
        choices = kind[5:].split("|")
        if value not in choices:
            issues.append(LintIssue(line, f"{name} {value!r} is not one of {', '.join(choices)}"))
        return
    if kind in _KINDS:
        pattern, what = _KINDS[kind]
        if not pattern.match(value):
            issues.append(LintIssue(line, f"{name} {value!r} is not {what}"))


def _check_section(section: Section, spec: Spec, where: str, issues: list[LintIssue]) -> None:
    if not spec.free:
        for name, value, line in section.params:
            kind = spec.params.get(name)
            if kind is None:
                issues.append(LintIssue(line, f"parameter {name!r} is not used by {where}"))
            else:
                _check_value(kind, name, value, line, issues)
        for name in sorted(spec.required):
            if section.get(name) is None:
                issues.append(LintIssue(section.line, f"{where} needs the parameter {name!r}"))
    if spec.free:
        return
    counts: dict[str, int] = {}
    for child in section.children:
        counts[child.name] = counts.get(child.name, 0) + 1
        child_spec = spec.sections.get(child.name)
        if child_spec is None:
            issues.append(LintIssue(child.line, f"section <{child.name}> is not used by {where}"))
            continue
        if counts[child.name] > 1 and child.name not in spec.multi:
            issues.append(LintIssue(child.line, f"section <{child.name}> appears more than once in {where}"))
        _check_section(child, child_spec, f"<{child.name}> of {where}", issues)


def _plugin_spec(kind: str, plugin_type: str) -> Spec | None:
    return PLUGINS.get((kind, plugin_type))


def _check_plugin(section: Section, kind: str, issues: list[LintIssue], context: dict) -> None:
    plugin_type = section.type
    if plugin_type is None:
        issues.append(LintIssue(section.line, f"<{section.name}> has no @type"))
        return
    spec = _plugin_spec(kind, plugin_type)
    where = f"{kind} plugin {plugin_type!r}"
    if spec is None:
        issues.append(LintIssue(section.line, f"unknown {kind} plugin {plugin_type!r} (not checked)"))
        return
    _check_section(section, spec, where, issues)
    plugin_id = section.get("@id")
    if plugin_id is not None:
        if plugin_id in context["ids"]:
            issues.append(LintIssue(section.line_of("@id"), f"@id {plugin_id!r} is also used on line "
                                                            f"{context['ids'][plugin_id]}"))
        context["ids"].setdefault(plugin_id, section.line_of("@id"))
    if section.get("@label") is not None:
        context["label_refs"].append((section.get("@label"), section.line_of("@label")))
    if kind == "match":
        _check_output(section, plugin_type, issues, context)
    if plugin_type == "copy":
        for store in section.sections("store"):
            _check_plugin(store, "match", issues, context)
    if plugin_type == "elasticsearch" and section.get("type_name") is not None:
        issues.append(LintIssue(section.line_of("type_name"),
                                "type_name is deprecated (Elasticsearch 7+ has no mapping types)"))
    if plugin_type == "elasticsearch" and section.get("id_key") is None:
        issues.append(LintIssue(section.line, "elasticsearch output without id_key: an event sent again after "
                                              "an outage is stored twice (use id_key event_id)"))
    if plugin_type == "s3" and not any(unique in (section.get("s3_object_key_format") or "")
                                       for unique in ("${chunk_id}", "%{uuid_flush}", "%{hex_random}")):
        issues.append(LintIssue(section.line, "s3 object keys without ${chunk_id}: flush threads writing at "
                                              "once overwrite each other's objects"))


def _check_output(section: Section, plugin_type: str, issues: list[LintIssue], context: dict) -> None:
    buffers = section.sections("buffer")
    buffer = buffers[0] if buffers else None
    keys = [key.strip() for key in (buffer.arg.split(",") if buffer and buffer.arg else []) if key.strip()]
    timekey = buffer.get("timekey") if buffer else None
    if buffer is not None:
        if "time" in keys and timekey is None:
            issues.append(LintIssue(buffer.line, "the chunk key 'time' needs a timekey"))
        if timekey is not None and "time" not in keys:
            issues.append(LintIssue(buffer.line_of("timekey"), "timekey without the chunk key 'time'"))
        if "time" in keys and buffer.get("flush_interval") is not None and buffer.get("flush_mode") != "interval":
            issues.append(LintIssue(buffer.line_of("flush_interval"),
                                    "flush_interval is ignored with a time chunk key unless flush_mode is interval"))
        if buffer.get("@type") == "file":
            path = buffer.get("path")
            if path is None:
                issues.append(LintIssue(buffer.line, "a file buffer needs a path"))
            elif path in context["buffer_paths"]:
                issues.append(LintIssue(buffer.line_of("path"), f"buffer path {path!r} is also used on line "
                                                                f"{context['buffer_paths'][path]}"))
            else:
                context["buffer_paths"][path] = buffer.line_of("path")
    if plugin_type in ("file", "s3") and buffer is None:
        issues.append(LintIssue(section.line, f"{plugin_type} output without <buffer>: its default buffer "
                                              "has a time chunk key and the path must match it"))
    for param in ("path", "s3_object_key_format"):
        if plugin_type not in ("file", "s3") or section.get(param) is None:
            continue
        value, line = section.get(param), section.line_of(param)
        if has_tag_placeholder(value) and "tag" not in keys:
            issues.append(LintIssue(line, f"{param} has ${{tag}} but the buffer chunk keys {keys} have no 'tag'"))
        granularity = time_granularity(value)
        if has_time_placeholder(value.replace("%{", "")) and "time" not in keys:
            issues.append(LintIssue(line, f"{param} has time placeholders but the chunk keys {keys} have no 'time'"))
        elif granularity and timekey and _seconds(timekey) is not None and _seconds(timekey) < granularity:
            issues.append(LintIssue(line, f"timekey {timekey} is shorter than the finest placeholder of {param}"))
        if plugin_type == "file" and param == "path":
            if "tag" in keys and not has_tag_placeholder(value):
                issues.append(LintIssue(line, "path needs ${tag}: the buffer has the chunk key 'tag'"))
            if "time" in keys and granularity is None:
                issues.append(LintIssue(line, "path needs a time placeholder: the buffer has the chunk key 'time'"))
    secondary = section.sections("secondary")
    if secondary:
        if buffer is None and plugin_type not in ("file", "s3", "forward", "elasticsearch", "cloudwatch_logs"):
            issues.append(LintIssue(secondary[0].line, "<secondary> on an output without a buffer"))
        if secondary[0].get("@type") != "secondary_file":
            issues.append(LintIssue(secondary[0].line, "only secondary_file is checked as a <secondary>"))
    if plugin_type == "forward" and not section.sections("server"):
        issues.append(LintIssue(section.line, "forward output needs at least one <server>"))
    if plugin_type == "cloudwatch_logs":
        for options in (("log_group_name", "use_tag_as_group", "log_group_name_key"),
                        ("log_stream_name", "use_tag_as_stream", "log_stream_name_key")):
            present = [name for name in options if section.get(name) is not None]
            if len(present) != 1:
                issues.append(LintIssue(section.line, f"cloudwatch_logs needs exactly one of {', '.join(options)}"))


def _seconds(text: str) -> int | None:
    try:
        return duration_seconds(text)
    except ValueError:
        return None



def _check_matches(sections: list[Section], where: str, issues: list[LintIssue]) -> None:
    matches = [section for section in sections if section.name == "match"]
    for i, later in enumerate(matches):
        for earlier in matches[:i]:
            if tag_pattern_covers(earlier.arg, later.arg):
                issues.append(LintIssue(later.line, f"<match {later.arg}> {where} never matches: "
                                                    f"<match {earlier.arg}> on line {earlier.line} comes first"))
                break


def lint(text: str) -> list[LintIssue]:
    """Every structural problem found in a fluent.conf text (empty list: none found)."""
    root, issues = parse(text)
    context: dict = {"ids": {}, "buffer_paths": {}, "label_refs": []}
    labels: dict[str, int] = {}
    for section in root.children:
        if section.name == "system":
            _check_section(section, SYSTEM, "<system>", issues)
        elif section.name in ("source", "filter", "match"):
            if section.name != "source" and not section.arg:
                issues.append(LintIssue(section.line, f"<{section.name}> without a tag pattern"))
            _check_plugin(section, section.name, issues, context)
        elif section.name == "label":
            if not section.arg.startswith("@"):
                issues.append(LintIssue(section.line, "a label name starts with @"))
            if section.arg in labels:
                issues.append(LintIssue(section.line, f"label {section.arg} is also defined on line {labels[section.arg]}"))
            labels.setdefault(section.arg, section.line)
            for child in section.children:
                if child.name in ("filter", "match"):
                    _check_plugin(child, child.name, issues, context)
                else:
                    issues.append(LintIssue(child.line, f"<{child.name}> cannot appear in a <label>"))
            for name, value, line in section.params:
                issues.append(LintIssue(line, f"parameter {name!r} directly in a <label>"))
            _check_matches(section.children, f"in {section.arg}", issues)
        else:
            issues.append(LintIssue(section.line, f"unknown top-level section <{section.name}>"))
    _check_matches(root.children, "at the top level", issues)
    referenced = set()
    for label, line in context["label_refs"]:
        referenced.add(label)
        if label not in labels and label not in ("@FLUENT_LOG", "@ERROR", "@ROOT"):
            issues.append(LintIssue(line, f"@label {label} is not defined"))
    for label, line in labels.items():
        if label not in referenced and label not in ("@FLUENT_LOG", "@ERROR"):
            issues.append(LintIssue(line, f"label {label} receives no events (no @label refers to it)"))
    return sorted(issues, key=lambda issue: issue.line)


def lint_file(path: str | Path) -> list[LintIssue]:
    return lint(Path(path).read_text(encoding="utf-8"))
