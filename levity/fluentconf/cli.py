"""`levity fluentd ...` sub-commands (placeholder until the generator lands)."""


def register(commands) -> None:
    commands.add_parser("fluentd", help="render and validate fluent.conf from YAML profiles")
