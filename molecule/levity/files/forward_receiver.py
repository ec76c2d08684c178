#!/usr/bin/python3
"""A test stand-in for Fluentd's forward input (Forward Protocol v1, no TLS or shared key).

Usage: forward-receiver HOST PORT OUTPUT.jsonl

Accepts Message, Forward, PackedForward and CompressedPackedForward entries, EventTime
(msgpack ext type 0) or integer times, answers {"ack": chunk} when the option asks for one,
and appends one JSON line {"tag", "time", "record"} per event to OUTPUT.
"""

import gzip
import json
import os
import socketserver
import struct
import sys

import msgpack


def ext_hook(code, data):
    if code == 0 and len(data) == 8:
        seconds, nanos = struct.unpack(">II", data)
        return seconds + nanos / 1e9
    return msgpack.ExtType(code, data)


def entries(blob):
    unpacker = msgpack.Unpacker(raw=False, ext_hook=ext_hook, strict_map_key=False)
    unpacker.feed(blob)
    for entry in unpacker:
        yield entry


class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        unpacker = msgpack.Unpacker(raw=False, ext_hook=ext_hook, strict_map_key=False)
        while True:
            data = self.request.recv(65536)
            if not data:
                return
            unpacker.feed(data)
            for message in unpacker:
                self.receive(message)

    def receive(self, message):
        tag, second = message[0], message[1]
        option = {}
        events = []
        if isinstance(second, (bytes, bytearray)):  # PackedForward (maybe gzip-compressed)
            option = message[2] if len(message) > 2 and isinstance(message[2], dict) else {}
            blob = gzip.decompress(second) if option.get("compressed") == "gzip" else second
            events = list(entries(bytes(blob)))
        elif isinstance(second, list):  # Forward
            option = message[2] if len(message) > 2 and isinstance(message[2], dict) else {}
            events = second
        else:  # Message
            events = [[second, message[2]]]
            option = message[3] if len(message) > 3 and isinstance(message[3], dict) else {}
        with open(self.server.output, "a", encoding="utf-8") as out:
            for time, record in events:
                out.write(json.dumps({"tag": tag, "time": time, "record": record}, default=repr) + "\n")
        if option.get("chunk"):
            self.request.sendall(msgpack.packb({"ack": option["chunk"]}))


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def main():
    host, port, output = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    os.makedirs(os.path.dirname(output), exist_ok=True)
    server = Server((host, port), Handler)
    server.output = output
    server.serve_forever()


if __name__ == "__main__":
    main()
