#!/usr/bin/python3
"""Test stand-in for the parts of the Elasticsearch (9200) and Kibana (5601) APIs the roles call.

The Elasticsearch and Kibana packages cannot be downloaded on the test machines, so the
roles' API tasks run against this: index templates, ILM policies, data views and imported
saved objects (the dashboard) are kept in memory and answered back as the real APIs shape them; every request is appended to
/var/tmp/elastic-stub/requests.jsonl for the verify step.
"""

import email.parser
import email.policy
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOG = "/var/tmp/elastic-stub/requests.jsonl"
STATE = {"policies": {}, "templates": {}, "data_views": {}, "saved_objects": {}}
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method):
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length) if length else b""
        if self.headers.get("Content-Type", "").startswith("multipart/form-data"):
            body = multipart_files(self.headers["Content-Type"], data)
        else:
            body = json.loads(data) if data else None
        path = self.path.split("?")[0]
        with LOCK, open(LOG, "a", encoding="utf-8") as log:
            log.write(json.dumps({"port": self.server.server_port, "method": method, "path": path, "body": body}) + "\n")
            status, answer = self.route(method, path, body)
        self._answer(status, answer)

    def route(self, method, path, body):
        parts = path.strip("/").split("/")
        if self.server.server_port == 9200:
            if path == "/_cluster/health":
                return 200, {"cluster_name": "stub", "status": "green"}
            if parts[:2] == ["_ilm", "policy"] and len(parts) == 3:
                name = parts[2]
                if method == "PUT":
                    STATE["policies"][name] = body["policy"]
                    return 200, {"acknowledged": True}
                if name in STATE["policies"]:
                    return 200, {name: {"version": 1, "modified_date": "2026-01-01T00:00:00Z", "policy": STATE["policies"][name]}}
                return 404, {"error": {"type": "resource_not_found_exception"}, "status": 404}
            if parts[0] == "_index_template" and len(parts) == 2:
                name = parts[1]
                if method == "PUT":
                    STATE["templates"][name] = body
                    return 200, {"acknowledged": True}
                if name in STATE["templates"]:
                    return 200, {"index_templates": [{"name": name, "index_template": STATE["templates"][name]}]}
                return 404, {"error": {"type": "resource_not_found_exception"}, "status": 404}
        else:
            if path == "/api/status":
                return 200, {"status": {"overall": {"level": "available"}}}
            if method != "GET" and self.headers.get("kbn-xsrf") is None:
                return 400, {"message": "Request must contain a kbn-xsrf header."}
            if path == "/api/data_views/data_view" and method == "POST":
                view = dict(body["data_view"])
                if view["id"] in STATE["data_views"] and not body.get("override"):
                    return 400, {"message": "Duplicate data view"}
                STATE["data_views"][view["id"]] = view
                return 200, {"data_view": view}
            if path == "/api/saved_objects/_import" and method == "POST":
                # As Kibana: one NDJSON file in the form field "file", one saved object a line.
                objects = [json.loads(line) for line in body.get("file", "").splitlines() if line.strip()]
                for obj in objects:
                    STATE["saved_objects"][f'{obj["type"]}/{obj["id"]}'] = obj
                return 200, {"success": True, "successCount": len(objects)}
            if parts[:2] == ["api", "saved_objects"] and len(parts) == 4 and method == "GET":
                if f"{parts[2]}/{parts[3]}" in STATE["saved_objects"]:
                    return 200, STATE["saved_objects"][f"{parts[2]}/{parts[3]}"]
                return 404, {"statusCode": 404, "error": "Not Found"}
            if parts[:3] == ["api", "data_views", "data_view"] and len(parts) == 4 and method == "GET":
                if parts[3] in STATE["data_views"]:
                    return 200, {"data_view": STATE["data_views"][parts[3]]}
                return 404, {"statusCode": 404, "error": "Not Found"}
        return 404, {"error": f"stub: no route for {method} {path}"}

    def do_GET(self):
        self._handle("GET")

    def do_PUT(self):
        self._handle("PUT")

    def do_POST(self):
        self._handle("POST")


def multipart_files(content_type, data):
    """{field name: text} of a multipart/form-data body."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + data)
    return {part.get_param("name", header="content-disposition"): part.get_payload(decode=True).decode()
            for part in message.iter_parts()}


def main():
    os.makedirs(os.path.dirname(LOG), exist_ok=True)
    servers = [ThreadingHTTPServer(("127.0.0.1", port), Handler) for port in (9200, 5601)]
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    servers[0].serve_forever()


if __name__ == "__main__":
    main()
