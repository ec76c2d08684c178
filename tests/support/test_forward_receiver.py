"""The test Fluentd receiver against frames built by hand per the Forward Protocol v1 spec."""

from __future__ import annotations

import gzip
import hashlib
import socket
import ssl
import struct
import time

import msgpack
import pytest
from fluent.sender import FluentSender

from tests.support.certs import make_certs
from tests.support.forward_receiver import ForwardReceiver, ReceivedBatch, ReceivedEvent

T = 1_700_000_000


def event_time(seconds: int, nanoseconds: int) -> msgpack.ExtType:
    return msgpack.ExtType(0, struct.pack(">II", seconds, nanoseconds))


def packb(obj, **kwargs) -> bytes:
    return msgpack.packb(obj, **kwargs)


def sha512_hex(*parts: str | bytes) -> str:
    digest = hashlib.sha512()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
    return digest.hexdigest()


class Client:
    """A raw forward client: bytes out, msgpack objects back."""

    def __init__(self, receiver: ForwardReceiver, context: ssl.SSLContext | None = None):
        sock = socket.create_connection(("127.0.0.1", receiver.port), timeout=10)
        self.sock = context.wrap_socket(sock, server_hostname="127.0.0.1") if context else sock
        self.unpacker = msgpack.Unpacker(raw=False)

    def send(self, *frames) -> None:
        self.sock.sendall(b"".join(f if isinstance(f, bytes) else packb(f) for f in frames))

    def receive(self):
        while True:
            for obj in self.unpacker:
                return obj
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("connection closed")
            self.unpacker.feed(data)

    def wait_closed(self) -> None:
        """Returns once the server has closed (or reset) the connection; fails on any data."""
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            return
        assert data == b"", f"expected the connection to close, got {data!r}"

    def handshake(self, shared_key: str, hostname: str = "client.example", username: str = "",
                  password: str = ""):
        helo = self.receive()
        assert helo[0] == "HELO"
        options = helo[1]
        nonce, auth = options["nonce"], options["auth"]
        salt = b"0123456789abcdef"
        password_digest = sha512_hex(auth, username, password) if auth else ""
        self.send(["PING", hostname, salt, sha512_hex(salt, hostname, nonce, shared_key), username,
                   password_digest])
        return options, salt, self.receive()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def receiver():
    with ForwardReceiver() as r:
        yield r


@pytest.fixture
def client(receiver):
    clients: list[Client] = []

    def make(context: ssl.SSLContext | None = None) -> Client:
        clients.append(Client(receiver, context))
        return clients[-1]

    yield make
    for c in clients:
        c.close()


# -- carrier modes ---------------------------------------------------------------------------------

def test_message_mode_with_integer_time(receiver, client):
    client().send(["app.access", T, {"message": "hi", "n": 1}])
    assert receiver.wait_for(1) == [ReceivedEvent("app.access", T * 10**9, {"message": "hi", "n": 1}, "message")]
    assert receiver.batches == [ReceivedBatch("message", "app.access", 1, None, False)]


def test_message_mode_with_event_time_fixext8_and_ext8(receiver, client):
    c = client()
    c.send(["a", event_time(T, 123_456_789), {"k": "fixext"}])
    # ext 8 form of the same EventTime: C7 08 00 + seconds + nanoseconds (the spec's second table)
    ext8 = b"\xc7\x08\x00" + struct.pack(">II", T, 987_654_321)
    c.send(b"\x93" + packb("a") + ext8 + packb({"k": "ext8"}))
    events = receiver.wait_for(2)
    assert [(e.time_ns, e.record["k"]) for e in events] == [
        (T * 10**9 + 123_456_789, "fixext"), (T * 10**9 + 987_654_321, "ext8")]


def test_float_time_is_rounded_to_nanoseconds(receiver, client):
    client().send(["a", T + 0.5, {}], ["a", T + 0.25, {}])
    assert [e.time_ns for e in receiver.wait_for(2)] == [T * 10**9 + 500_000_000, T * 10**9 + 250_000_000]


def test_record_keys_sent_as_bin_come_back_as_str(receiver, client):
    client().send(["a", T, {b"raw": {b"nested": 1}, "text": b"bytes value"}])
    assert receiver.wait_for(1)[0].record == {"raw": {"nested": 1}, "text": b"bytes value"}


def test_forward_mode(receiver, client):
    entries = [[T, {"i": 0}], [event_time(T, 5), {"i": 1}], [T + 0.5, {"i": 2}]]
    client().send(["app", entries], ["app2", [[T, {"i": 3}]], {"size": 1}])
    events = receiver.wait_for(4)
    assert [(e.tag, e.time_ns, e.record["i"], e.mode) for e in events] == [
        ("app", T * 10**9, 0, "forward"), ("app", T * 10**9 + 5, 1, "forward"),
        ("app", T * 10**9 + 500_000_000, 2, "forward"), ("app2", T * 10**9, 3, "forward")]
    assert [(b.tag, b.count) for b in receiver.batches] == [("app", 3), ("app2", 1)]


def entry_stream(n: int, start: int = 0) -> bytes:
    return b"".join(packb([event_time(T, i), {"i": i}]) for i in range(start, start + n))


def test_packed_forward_as_bin_and_as_str(receiver, client):
    c = client()
    c.send(["bin", entry_stream(3), {"size": 3}])
    # out_forward's form: the binary stream in a msgpack str (raw) for backward compatibility
    c.send(packb(["str", entry_stream(2, start=3)], use_bin_type=False))
    events = receiver.wait_for(5)
    assert [(e.tag, e.record["i"], e.time_ns - T * 10**9) for e in events] == [
        ("bin", 0, 0), ("bin", 1, 1), ("bin", 2, 2), ("str", 3, 3), ("str", 4, 4)]
    assert {e.mode for e in events} == {"packed_forward"}


def test_compressed_packed_forward_with_concatenated_gzip_members(receiver, client):
    compressed = gzip.compress(entry_stream(2)) + gzip.compress(entry_stream(3, start=2))
    c = client()
    c.send(["z", compressed, {"compressed": "gzip", "size": 5, "chunk": "Y2h1bmsx"}])
    assert c.receive() == {"ack": "Y2h1bmsx"}
    events = receiver.wait_for(5)
    assert [e.record["i"] for e in events] == [0, 1, 2, 3, 4]
    assert {e.mode for e in events} == {"compressed_packed_forward"}
    assert receiver.batches[0].mode == "compressed_packed_forward"
    assert receiver.batches[0].count == 5


def test_other_compressed_values_mean_plain_packed_forward(receiver, client):
    client().send(["p", entry_stream(1), {"compressed": "text"}])
    assert receiver.wait_for(1)[0].mode == "packed_forward"


def test_nil_heartbeat_is_ignored(receiver, client):
    client().send(None, ["a", T, {}])
    assert len(receiver.wait_for(1)) == 1
    assert receiver.protocol_errors == 0


# -- acks ------------------------------------------------------------------------------------------

def test_chunk_option_is_acked_with_the_same_value(receiver, client):
    c = client()
    c.send(["a", T, {"n": 1}, {"chunk": "p8n9gmxTQVC8/nh2wlKKeQ=="}])
    assert c.receive() == {"ack": "p8n9gmxTQVC8/nh2wlKKeQ=="}
    c.send(["a", [[T, {"n": 2}], [T, {"n": 3}]], {"chunk": "c2"}],
           ["a", entry_stream(2), {"chunk": "c3", "size": 2}])
    assert [c.receive(), c.receive()] == [{"ack": "c2"}, {"ack": "c3"}]
    assert [(b.chunk, b.count, b.acked) for b in receiver.batches] == [
        ("p8n9gmxTQVC8/nh2wlKKeQ==", 1, True), ("c2", 2, True), ("c3", 2, True)]


def test_late_acks_still_arrive_and_events_are_recorded_first(receiver, client):
    receiver.ack_delay = 0.2
    c = client()
    c.send(["a", T, {}, {"chunk": "late"}])
    assert c.receive() == {"ack": "late"}
    assert len(receiver.events) == 1
    assert receiver.batches[0].acked


def test_send_acks_false_records_but_never_acks(receiver, client):
    receiver.send_acks = False
    c = client()
    c.send(["a", T, {"n": 1}, {"chunk": "never"}])
    receiver.wait_for(1)
    receiver.send_acks = True
    c.send(["a", T, {"n": 2}, {"chunk": "second"}])
    assert c.receive() == {"ack": "second"}  # the first reply on the wire: "never" got none
    assert [(b.chunk, b.acked) for b in receiver.batches] == [("never", False), ("second", True)]


# -- fault injection -------------------------------------------------------------------------------

def test_refuse_then_listen_again_on_the_same_port(receiver, client):
    port = receiver.port
    before = client()
    receiver.refuse = True
    before.wait_closed()  # open connections go too, as when Fluentd stops
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)
    receiver.refuse = False
    assert receiver.port == port
    client().send(["back", T, {}])
    assert receiver.wait_for(1)[0].tag == "back"


@pytest.mark.parametrize("connection", ["new", "already open"])
def test_stall_reads_nothing_until_released(receiver, connection):
    already = 0
    if connection == "new":
        receiver.stall = True
    sock = socket.create_connection(("127.0.0.1", receiver.port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    if connection == "already open":
        sock.sendall(packb(["before", T, {}]))
        already = len(receiver.wait_for(1))
        receiver.stall = True
    sock.setblocking(False)
    frame = packb(["s", T, {"pad": "x" * 1000}])
    pending, sent_frames = b"", 0
    try:
        while True:  # until the client's buffers are full: nobody reads on the other side
            if not pending:
                pending, sent_frames = frame, sent_frames + 1
            pending = pending[sock.send(pending):]
    except BlockingIOError:
        pass
    assert len(receiver.events) == already
    receiver.stall = False
    sock.setblocking(True)
    sock.sendall(pending)
    assert len(receiver.wait_for(already + sent_frames, timeout=30)) == already + sent_frames
    sock.close()


def test_drop_after_bytes_mid_message_records_nothing_partial(receiver, client):
    first = packb(["a", T, {"n": 1}, {"chunk": "one"}])
    second = packb(["a", [[T, {"n": i}] for i in range(2, 12)], {"chunk": "two"}])
    receiver.drop_after_bytes = len(first) + len(second) // 2
    c = client()
    c.send(first + second)
    assert c.receive() == {"ack": "one"}
    c.wait_closed()
    assert [e.record["n"] for e in receiver.events] == [1]  # nothing of the cut message
    assert receiver.drop_after_bytes is None  # one-shot
    again = client()
    again.send(second)
    assert again.receive() == {"ack": "two"}
    assert [e.record["n"] for e in receiver.events] == list(range(1, 12))
    assert receiver.connections == 2


# -- handshake -------------------------------------------------------------------------------------

def test_shared_key_handshake_success():
    with ForwardReceiver(shared_key="s3cret", server_hostname="fluentd.test") as receiver:
        c = Client(receiver)
        options, salt, pong = c.handshake("s3cret")
        assert options["auth"] in (b"", "") and options["keepalive"] is True
        assert pong == ["PONG", True, "", "fluentd.test",
                        sha512_hex(salt, "fluentd.test", options["nonce"], "s3cret")]
        c.send(["secure", T, {"ok": True}, {"chunk": "hs"}])
        assert c.receive() == {"ack": "hs"}
        assert receiver.wait_for(1)[0].record == {"ok": True}
        assert receiver.handshake_failures == 0
        c.close()


def test_shared_key_handshake_with_username_and_password():
    with ForwardReceiver(shared_key="k", users={"alice": "pw"}) as receiver:
        c = Client(receiver)
        options, _, pong = c.handshake("k", username="alice", password="pw")
        assert options["auth"] and pong[1] is True
        c.close()
        c = Client(receiver)
        _, _, pong = c.handshake("k", username="alice", password="wrong")
        assert pong[:3] == ["PONG", False, "username/password mismatch"]
        c.wait_closed()
        assert receiver.handshake_failures == 1
        c.close()


def test_shared_key_mismatch_answers_pong_false_and_closes():
    with ForwardReceiver(shared_key="right") as receiver:
        c = Client(receiver)
        _, _, pong = c.handshake("wrong")
        assert pong[:3] == ["PONG", False, "shared_key mismatch"]
        c.wait_closed()
        # events without a PING are not accepted either
        c2 = Client(receiver)
        assert c2.receive()[0] == "HELO"
        c2.send(["a", T, {}])
        assert c2.receive()[:3] == ["PONG", False, "invalid ping message"]
        c2.wait_closed()
        assert receiver.handshake_failures == 2
        assert receiver.events == []
        c.close()
        c2.close()


# -- TLS -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["cryptography", "openssl"])
def test_tls_with_a_self_made_ca(tmp_path, backend):
    certs = make_certs(tmp_path, backend=backend)
    with ForwardReceiver(ssl_context=certs.server_context(), shared_key="k") as receiver:
        c = Client(receiver, certs.client_context())
        assert c.handshake("k")[2][1] is True
        c.send(["tls", event_time(T, 1), {"x": 1}, {"chunk": "t"}])
        assert c.receive() == {"ack": "t"}
        assert receiver.wait_for(1)[0].time_ns == T * 10**9 + 1
        c.close()
        with pytest.raises(ssl.SSLCertVerificationError):  # the CA is ours only
            ssl.create_default_context().wrap_socket(
                socket.create_connection(("127.0.0.1", receiver.port), timeout=10), server_hostname="127.0.0.1")


# -- malformed input -------------------------------------------------------------------------------

@pytest.mark.parametrize("payload", [
    b"\xc1",                                           # never-used msgpack byte
    packb(42),                                         # not an array
    packb(["only-a-tag"]),                             # too short
    packb([7, T, {}]),                                 # tag not a str
    packb(["a", T, "not a map"]),                      # record not a map
    packb(["a", "2023-01-01", {}]),                    # str entries that are no msgpack stream
    packb(["a", msgpack.ExtType(0, b"\x00" * 4), {}]), # EventTime must be 8 bytes
    packb(["a", [[T]]]),                               # entry not [time, record]
    packb(["a", b"not gzip", {"compressed": "gzip"}]), # compressed but not gzip
    packb(["a", entry_stream(2), {"size": 3}]),        # size disagrees with the entries
    packb(["a", T, {}, {"chunk": 5}]),                 # chunk not a str
])
def test_malformed_input_closes_that_connection_only(receiver, client, payload):
    good = client()
    bad = client()
    bad.send(payload)
    bad.wait_closed()
    assert receiver.protocol_errors == 1
    good.send(["still.serving", T, {}, {"chunk": "ok"}])
    assert good.receive() == {"ack": "ok"}
    assert [e.tag for e in receiver.events] == ["still.serving"]


# -- waiting and clearing --------------------------------------------------------------------------

def test_wait_for_reports_what_arrived(receiver, client):
    client().send(["only", T, {"one": 1}])
    receiver.wait_for(1)
    with pytest.raises(AssertionError, match=r"expected at least 2 events.*got 1.*'only'"):
        receiver.wait_for(2, timeout=0.2)


async def test_wait_for_async_does_not_block_the_loop(receiver):
    import asyncio

    async def send_later():
        await asyncio.sleep(0.05)
        _, writer = await asyncio.open_connection("127.0.0.1", receiver.port)
        writer.write(packb(["async", T, {}]))
        await writer.drain()
        return writer

    sender = asyncio.create_task(send_later())
    events = await receiver.wait_for_async(1)
    assert events[0].tag == "async"
    (await sender).close()


def test_clear_forgets_events_and_batches(receiver, client):
    client().send(["a", T, {}])
    receiver.wait_for(1)
    receiver.clear()
    assert receiver.events == [] and receiver.batches == []
    assert receiver.connections == 1


# -- interoperability ------------------------------------------------------------------------------

def test_fluent_logger_sender_with_nanosecond_precision(receiver):
    sender = FluentSender("levity", host="127.0.0.1", port=receiver.port, nanosecond_precision=True)
    try:
        before = time.time_ns()
        assert sender.emit("ocpp.boot", {"charge_point_id": "CP-1", "n": 1})
        assert sender.emit_with_time("ocpp.meter", T + 0.25, {"energy": 42})
    finally:
        sender.close()
    events = receiver.wait_for(2)
    assert [(e.tag, e.mode) for e in events] == [("levity.ocpp.boot", "message"), ("levity.ocpp.meter", "message")]
    assert events[0].record == {"charge_point_id": "CP-1", "n": 1} and events[0].time_ns >= before // 10**9 * 10**9
    assert events[1].time_ns == T * 10**9 + 250_000_000
