"""fluent.conf generator: YAML profiles in, Fluentd configs out."""
