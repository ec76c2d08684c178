#!/usr/bin/env bash
# One-shot setup of the local stack (the `setup` service of docker-compose.yml):
#   1. the ILM policy and the index template for ocpp_events* into Elasticsearch,
#   2. the "OCPP audit events" data view and the Levity dashboard into Kibana.
# It uses the same JSON files as the Ansible roles (share/ at the top of the repository,
# mounted read-only at /share): one copy of each. Safe to run again: every call is a PUT
# or an overwrite.
set -euo pipefail

ES=${ELASTICSEARCH_URL:-http://elasticsearch:9200}
KIBANA=${KIBANA_URL:-http://kibana:5601}
SHARE=${SHARE_DIR:-/share}
# The policy name is the one the template's "index.lifecycle.name" refers to.
ILM_POLICY=${ILM_POLICY:-ocpp-events-retention}
INDEX_TEMPLATE=${INDEX_TEMPLATE:-ocpp-events}
INDEX_PATTERN=${INDEX_PATTERN:-ocpp_events*}

# call METHOD URL [curl args...]: prints the body; fails with the body when the status is not 2xx.
call() {
    local method=$1 url=$2 out status
    shift 2
    out=$(mktemp)
    status=$(curl -sS -o "$out" -w '%{http_code}' -X "$method" "$url" "$@") || { rm -f "$out"; return 1; }
    if [ "${status:0:1}" != 2 ]; then
        echo "setup: $method $url answered HTTP $status:" >&2
        cat "$out" >&2; echo >&2
        rm -f "$out"
        return 1
    fi
    cat "$out"; echo
    rm -f "$out"
}

# depends_on waits for both to be healthy; this only covers a slow first answer.
wait_for() {
    local url=$1 tries=0
    until curl -fsS -o /dev/null "$url"; do
        tries=$((tries + 1))
        if [ "$tries" -ge 30 ]; then echo "setup: $url does not answer" >&2; return 1; fi
        sleep 2
    done
}

wait_for "$ES/_cluster/health?wait_for_status=yellow&timeout=5s"
echo "setup: ILM policy $ILM_POLICY"
call PUT "$ES/_ilm/policy/$ILM_POLICY" -H 'Content-Type: application/json' \
    --data-binary "@$SHARE/elasticsearch/ocpp-events-ilm-policy.json"
echo "setup: index template $INDEX_TEMPLATE"
call PUT "$ES/_index_template/$INDEX_TEMPLATE" -H 'Content-Type: application/json' \
    --data-binary "@$SHARE/elasticsearch/ocpp-events-index-template.json"

# A template only applies to indices created after it. An index that Fluentd created before
# this ran has dynamic mappings (charge_point_id as text): term queries on it find nothing.
mapping=$(curl -sS "$ES/$INDEX_PATTERN/_mapping/field/charge_point_id" || true)
if printf '%s' "$mapping" | grep -q '"type":"text"'; then
    echo "setup: WARNING: $INDEX_PATTERN indices created before the template map charge_point_id" >&2
    echo "setup: as text. On this local stack, delete them by name (Elasticsearch 8 refuses wildcard" >&2
    echo "setup: deletes) and let Fluentd recreate them with the template's mapping:" >&2
    for index in $(curl -sS "$ES/_cat/indices/$INDEX_PATTERN?h=index" || true); do
        echo "setup:   curl -X DELETE http://localhost:9200/$index" >&2
    done
fi

wait_for "$KIBANA/api/status"
echo "setup: Kibana data view"
call POST "$KIBANA/api/data_views/data_view" -H 'kbn-xsrf: true' -H 'Content-Type: application/json' \
    --data-binary "@$SHARE/kibana/ocpp-events-data-view.json" >/dev/null
echo "setup: Kibana dashboard"
# The import answers 200 even when objects fail: its "success" says whether all went in.
imported=$(call POST "$KIBANA/api/saved_objects/_import?overwrite=true" -H 'kbn-xsrf: true' \
    -F "file=@$SHARE/kibana/levity-dashboard.ndjson")
if ! printf '%s' "$imported" | grep -q '"success": *true'; then
    echo "setup: Kibana did not import the dashboard: $imported" >&2
    exit 1
fi
echo "setup: done: open Kibana, Dashboards, \"Levity: charging sessions, chargers and commands\""
