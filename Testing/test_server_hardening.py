"""``ka2er serve`` against an attacker (issue 19): a real server process on loopback, started from the
command line with small limits, its memory read from /proc and its log read back."""

import http.client
import json
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pytest

from ka2er_core import load_bundle
from ka2er_core.cli import main
from ka2er_core.inference import InteractiveSession
from ka2er_core.server.app import Limits, create_app
from ka2er_core.server.sessions import SessionGone, SessionStore, SessionTooLarge
from ka2er_core.server.wire import encode_array, encode_volume
from ka2er_core.volume import Volume
from test_server import TOKEN, LiveServer, StoredSession, clicks_on, phantom

READ_TIMEOUT_S = 2.0
MEMORY_GB = 0.1
MAX_TARGETS = 40
MAX_VOXELS = 2_000_000
OPTIONS = ["--max-voxels", str(MAX_VOXELS), "--max-upload-mb", "8", "--max-memory-gb", str(MEMORY_GB),
           "--max-targets", str(MAX_TARGETS), "--read-timeout", str(READ_TIMEOUT_S), "--rate", "1000",
           "--device", "cpu"]
JSON = {"Content-Type": "application/json"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``ka2er serve`` in a child process on a free loopback port; its output kept in :attr:`lines`."""

    def __init__(self, folder, *options: str):
        token_file = folder / "token"
        token_file.write_text(TOKEN)
        token_file.chmod(0o600)
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ka2er_core.cli", "serve", "--token-file", str(token_file),
             "--port", str(self.port), *options],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True).start()
        self.wait_until_serving()

    def wait_until_serving(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.request("GET", "/health", token=None)[0] == 200:
                    return
            except OSError:
                pass
            assert time.monotonic() < deadline and self.process.poll() is None, self.log
            time.sleep(0.2)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def rss_mb(self) -> float:
        with open(f"/proc/{self.process.pid}/status") as status:
            kilobytes = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
        return kilobytes / 1024

    def request(self, method: str, path: str, body: bytes = b"", headers=None, token=TOKEN):
        """(status, JSON reply or bytes) of one request on a fresh connection."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        headers = dict(headers or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
        finally:
            connection.close()
        try:
            return response.status, json.loads(data)
        except ValueError:
            return response.status, data

    def new_session(self, volume: Volume) -> str:
        status, reply = self.request("POST", "/sessions", encode_volume(volume))
        assert status == 201, reply
        return reply["session"]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    server = ServerProcess(tmp_path_factory.mktemp("serve"), *OPTIONS)
    yield server
    server.stop()


def container(header, body: bytes = b"") -> bytes:
    """A KA2V container around any header (a dict, or raw JSON text) and body."""
    text = header.encode() if isinstance(header, str) else json.dumps(header).encode()
    return b"KA2V\x01" + struct.pack("<I", len(text)) + text + body


def zlib_bomb(mib: int) -> bytes:
    """A valid zlib stream of ``mib`` MiB of zeros in about ``mib`` KiB: one fully flushed 1 MiB
    segment repeated (each segment starts afresh), then the end block and the stream's checksum."""
    chunk = bytes(1 << 20)
    compressor = zlib.compressobj(9)
    first = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    segment = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    end = compressor.flush()[:-4]
    checksum = 1
    for _ in range(mib):
        checksum = zlib.adler32(chunk, checksum)
    return first + segment * (mib - 1) + end + struct.pack(">I", checksum)


def noise_volume(shape) -> Volume:
    array = np.random.default_rng(7).normal(0, 100, shape).astype(np.float32)
    return Volume(array, np.diag([0.8, 0.8, 2.0, 1.0]))


def centre_ras(volume: Volume) -> list[float]:
    ijk = (np.array(volume.shape[::-1]) - 1) / 2
    return (volume.ijk_to_ras @ np.append(ijk, 1.0))[:3].tolist()


def test_zlib_bomb_helper_makes_a_valid_stream_of_the_size_asked():
    assert len(zlib.decompress(zlib_bomb(3))) == 3 << 20


def test_decompression_bombs_are_refused_at_once_without_memory(served):
    """A shape whose int64 product wraps (to 0: "no limit" before) and a shape within the limit whose
    stream inflates 1000 times past it, as an image and as a mask: 400 naming the field, in < 2 s,
    and the server's memory grows < 100 MB (a 1 GiB inflate before)."""
    session = served.new_session(phantom(3).image)
    bomb = zlib_bomb(1024)
    wrapping = {"shape": [2**22, 2**21, 2**21], "dtype": "uint8"}
    honest = {"shape": [100, 100, 100], "dtype": "uint8"}
    geometry = {"ijk_to_ras": np.eye(4).tolist()}
    cases = [("POST", "/sessions", {**wrapping, **geometry}, "image.shape"),
             ("POST", "/sessions", {**honest, **geometry}, "image.voxels"),
             ("PUT", f"/sessions/{session}/targets/t/mask", wrapping, "mask.shape"),
             ("PUT", f"/sessions/{session}/targets/t/mask", honest, "mask.voxels")]
    before = served.rss_mb()
    for method, path, header, field in cases:
        start = time.perf_counter()
        status, reply = served.request(method, path, container(header, bomb))
        assert time.perf_counter() - start < 2.0, (field, time.perf_counter() - start)
        assert status == 400 and reply["detail"].startswith(field), (status, reply)
    assert served.rss_mb() - before < 100, (before, served.rss_mb())


MALFORMED_HEADERS = {
    "float dimensions": ({"shape": [1e9, 1e9, 1e8], "dtype": "uint8"}, "image.shape"),
    "2**63 dimensions": ({"shape": [2**63, 2**63, 2**63], "dtype": "uint8"}, "image.shape"),
    "2**40 dimensions": ({"shape": [2**40] * 3, "dtype": "uint8"}, "image.shape"),
    "4000-digit dimension": ('{"shape": [%s, 1, 1], "dtype": "uint8"}' % ("9" * 4000), "image.shape"),
    "negative dimension": ({"shape": [-1, 4, 4], "dtype": "uint8"}, "image.shape"),
    "boolean dimension": ({"shape": [True, 4, 4], "dtype": "uint8"}, "image.shape"),
    "ijk_to_ras 1000 deep": ('{"shape": [4, 4, 4], "dtype": "uint8", "ijk_to_ras": %s}'
                             % ("[" * 1000 + "]" * 1000), "image.ijk_to_ras"),
    "header 1000 deep": ("[" * 1000 + "]" * 1000, "image.header"),
    "ijk_to_ras 3x4": ({"shape": [4, 4, 4], "dtype": "uint8", "ijk_to_ras": np.eye(4)[:3].tolist()},
                       "image.ijk_to_ras"),
    "ijk_to_ras with a huge integer": ({"shape": [4, 4, 4], "dtype": "uint8",
                                        "ijk_to_ras": [[10**400, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0],
                                                       [0, 0, 0, 1]]}, "image.ijk_to_ras"),
    "ijk_to_ras with NaN": ('{"shape": [4, 4, 4], "dtype": "uint8", "ijk_to_ras": '
                            '[[NaN, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}',
                            "image.ijk_to_ras"),
    "complex64 voxels": ({"shape": [4, 4, 4], "dtype": "complex64", "ijk_to_ras": np.eye(4).tolist()},
                         "image.dtype"),
    "float16 voxels": ({"shape": [4, 4, 4], "dtype": "float16", "ijk_to_ras": np.eye(4).tolist()},
                       "image.dtype"),
    "dtype a list": ({"shape": [4, 4, 4], "dtype": ["uint8"], "ijk_to_ras": np.eye(4).tolist()},
                     "image.dtype"),
    "unknown key": ({"shape": [4, 4, 4], "dtype": "uint8", "extra": 1}, "image.header"),
}


@pytest.mark.parametrize("name", MALFORMED_HEADERS)
def test_malformed_upload_headers_get_400_naming_the_field(served, name):
    header, field = MALFORMED_HEADERS[name]
    status, reply = served.request("POST", "/sessions", container(header, zlib.compress(bytes(512))))
    assert status == 400 and reply["detail"].startswith(f"{field}: "), (status, reply)
    assert len(reply["detail"]) < 300  # the input is not echoed back


def test_a_complex_image_is_refused_before_it_travels():
    with pytest.raises(ValueError, match="dtype: expected one of .*complex64"):
        encode_array(np.zeros((2, 2, 2), np.complex64))


def create_targets(served, volume: Volume, session: str, count: int) -> list[int]:
    """``count`` requests, each on a target the session has not seen: an uploaded mask, a click, a
    read of the mask and an undo in turn. Their statuses."""
    mask = encode_array((np.arange(volume.array.size) % 7 == 0).reshape(volume.shape).astype(np.uint8))
    click = json.dumps({"ras": centre_ras(volume)}).encode()
    requests = [("PUT", "mask", mask, {}), ("POST", "points", click, JSON), ("GET", "mask", b"", {}),
                ("POST", "undo", b"", {})]
    statuses = []
    for n in range(count):
        method, route, body, headers = requests[n % len(requests)]
        status, reply = served.request(method, f"/sessions/{session}/targets/new-{n}/{route}", body,
                                       headers)
        assert status < 500 or status == 507, (n, status, reply)
        statuses.append(status)
    return statuses


def test_a_session_stops_at_max_targets_and_a_reset_makes_room(served):
    volume = noise_volume((16, 32, 32))
    session = served.new_session(volume)
    statuses = create_targets(served, volume, session, 300)
    creating = statuses[0::4] + statuses[1::4]  # the uploaded masks and the clicks
    assert set(statuses) <= {200, 204, 409}
    assert creating.count(409) == len(creating) - MAX_TARGETS
    assert statuses[2::4] == statuses[3::4] == [200] * 75  # reading or undoing creates nothing
    status, reply = served.request("PUT", f"/sessions/{session}/targets/one-more/mask",
                                   encode_array(np.zeros(volume.shape, np.uint8)))
    assert status == 409 and reply["code"] == "too_many_targets" and "--max-targets" in reply["detail"]
    assert served.request("POST", f"/sessions/{session}/targets/new-0/reset")[0] == 204
    assert served.request("PUT", f"/sessions/{session}/targets/one-more/mask",
                          encode_array(np.zeros(volume.shape, np.uint8)))[0] == 204


def test_one_session_cannot_outgrow_the_memory_of_all_sessions(served):
    """300 new-target requests on a large image: the session is refused (507) before it passes
    --max-memory-gb, and the server's memory grows by less than twice that."""
    volume = noise_volume((30, 256, 256))  # 7.5 MiB of float32, a 1.9 MiB mask per target
    warm = served.new_session(volume)  # the model's first run on this image size allocates too
    served.request("POST", f"/sessions/{warm}/targets/warm/points",
                   json.dumps({"ras": centre_ras(volume)}).encode(), JSON)
    before = served.rss_mb()
    session = served.new_session(volume)
    statuses = create_targets(served, volume, session, 300)
    growth = served.rss_mb() - before
    assert 507 in statuses and set(statuses) <= {200, 204, 507}
    assert growth < 2 * MEMORY_GB * 1024, growth
    status, reply = served.request("PUT", f"/sessions/{session}/targets/more/mask",
                                   encode_array(np.zeros(volume.shape, np.uint8)))
    assert status == 507 and "--max-memory-gb" in reply["detail"] and reply["code"].startswith(
        "session_too_large")


def half_open_sockets(port: int, count: int) -> list[tuple[str, socket.socket]]:
    """``count`` connections that stall: silent, half-sent headers, or 4 of 100 body bytes."""
    stalls = {
        "silent": b"",
        "half headers": b"POST /sessions HTTP/1.1\r\nHost: x\r\nContent-Le",
        "partial body": (f"POST /sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                         "Content-Type: application/octet-stream\r\nContent-Length: 100\r\n\r\nKA2V").encode(),
    }
    sockets = []
    for n in range(count):
        kind = list(stalls)[n % len(stalls)]
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(stalls[kind])
        sockets.append((kind, sock))
    return sockets


def read_until_closed(sock: socket.socket, deadline: float) -> bytes:
    """What the server sends until it closes the connection; fails at ``deadline``."""
    received = b""
    while True:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            data = sock.recv(4096)
        except socket.timeout:
            raise AssertionError(f"still open after the deadline; received {received!r}") from None
        if not data:
            return received
        received += data


def read_response(sock: socket.socket, deadline: float) -> bytes:
    """One whole HTTP response (headers and a Content-Length body), however the bytes arrive."""
    received = b""
    while True:
        head, _, body = received.partition(b"\r\n\r\n")
        if _:
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            if len(body) >= length:
                return received
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        data = sock.recv(4096)
        if not data:
            return received
        received += data


def test_a_session_may_not_outgrow_the_memory_of_all_sessions():
    store = SessionStore(max_sessions=5, max_bytes=1000, idle_seconds=60)
    older, growing = store.add(StoredSession(), 300), store.add(StoredSession(), 300)
    store.reserve(growing, 500)  # 1100 bytes with the older one: it makes room
    with pytest.raises(SessionGone):
        store.get(older)
    with pytest.raises(SessionTooLarge) as refused:
        store.reserve(growing, 800)  # 1100 bytes alone
    assert not refused.value.dropped and store.get(growing)
    with pytest.raises(SessionTooLarge) as dropped:
        store.update(growing, 1200)  # grew past it after all
    assert dropped.value.dropped and len(store) == 0


@pytest.fixture(scope="module")
def bundle():
    return load_bundle()


def test_the_undo_history_counts_in_a_sessions_bytes(bundle):
    """Each prompt keeps the previous answer's crop logits for undo: counted, once each."""
    subject = phantom(4)
    session = InteractiveSession(bundle, device="cpu", background=False)  # no bytes added meanwhile
    session.set_image(subject.image)
    for point in clicks_on(subject, "liver", 3):
        session.add_point(point)
    kept = len(session.target.history) - 1  # the first prompt had no answer before it
    assert kept == 2
    held = (subject.image.array.nbytes + session.mask.nbytes + session.embeddings.memory_bytes
            + sum(old.nbytes for step in session.target.history for _, old in step.pasted))
    assert session.memory_bytes - held == (kept + 1) * session.target.answer.logits.nbytes


def test_half_open_connections_are_closed_within_the_read_timeout(served):
    start = time.monotonic()
    sockets = half_open_sockets(served.port, 50)
    deadline = start + READ_TIMEOUT_S + 2.0
    for kind, sock in sockets:
        with sock:
            received = read_until_closed(sock, deadline)
        if kind == "silent":
            assert received == b""
        else:
            assert received.startswith(b"HTTP/1.1 408 "), (kind, received)
    assert served.request("GET", "/health", token=None)[0] == 200


def test_a_slow_but_steady_body_is_not_cut_off(served):
    """Three pieces 0.6 x the read timeout apart: longer than the timeout in all, never silent for it."""
    body = json.dumps({"ras": [0, 0, 0]}).encode()
    head = (f"POST /sessions/unknown/targets/t/points HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            f"{TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", served.port)) as sock:
        start = time.monotonic()
        for piece in (head, body[:5]):
            sock.sendall(piece)
            time.sleep(0.6 * READ_TIMEOUT_S)
        sock.sendall(body[5:])
        reply = read_response(sock, time.monotonic() + 10)
    assert time.monotonic() - start > READ_TIMEOUT_S
    assert reply.startswith(b"HTTP/1.1 404 ") and b"session_expired" in reply


@pytest.mark.parametrize("proxies, believed", [("", False), ("127.0.0.1", True)])
def test_x_forwarded_for_is_believed_only_from_the_proxies_named(bundle, proxies, believed):
    """A loopback client naming a new address in each request: by default still one client for the
    rate limit (2 at once, then 429); behind --forwarded-allow-ips 127.0.0.1, four clients."""
    live = LiveServer(create_app(bundle, TOKEN, Limits(rate_per_second=0.1, rate_burst=2), device="cpu"),
                      forwarded_allow_ips=proxies)
    try:
        statuses = [live.raw("GET", "/health", headers={"X-Forwarded-For": f"10.0.0.{n}"}, token=None)[0]
                    for n in range(4)]
    finally:
        live.stop()
    assert statuses == ([200] * 4 if believed else [200, 200, 429, 429])


def test_a_request_id_is_answered_once_per_target_and_route(served):
    volume = noise_volume((16, 32, 32))
    session = served.new_session(volume)
    click = json.dumps({"ras": centre_ras(volume)}).encode()
    same_id = {**JSON, "X-Request-Id": "the-same-id"}
    first = served.request("POST", f"/sessions/{session}/targets/a/points", click, same_id)
    undo = served.request("POST", f"/sessions/{session}/targets/a/undo", b"", same_id)
    other = served.request("POST", f"/sessions/{session}/targets/b/points", click, same_id)
    again = served.request("POST", f"/sessions/{session}/targets/a/points", click, same_id)
    assert first[0] == 200 and first[1]["undo_depth"] == 1
    assert undo[0] == 200 and undo[1]["undo_depth"] == 0 and "score" not in undo[1]  # undid
    assert undo[1]["changed"]["region"] == first[1]["changed"]["region"]
    assert other[0] == 200 and other[1]["undo_depth"] == 1
    assert again == first  # the retry on a: the first reply, not applied again
    status, mask = served.request("GET", f"/sessions/{session}/targets/b/mask")
    assert status == 200 and mask == served.request("GET", f"/sessions/{session}/targets/b/mask")[1]


def send_and_hang_up(port: int, request: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request)


def test_clients_that_hang_up_cost_at_most_one_info_line(served):
    """One goes away mid-body (logged once, INFO), one right after a click it never reads the reply
    of (nothing to log); neither leaves a traceback (checked at the end)."""
    seen = len(served.lines)
    send_and_hang_up(served.port, (f"POST /sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                                   f"{TOKEN}\r\nContent-Length: 100\r\n\r\nKA2V").encode())
    volume = noise_volume((16, 32, 32))
    session = served.new_session(volume)
    click = json.dumps({"ras": centre_ras(volume)})
    send_and_hang_up(served.port, (f"POST /sessions/{session}/targets/t/points HTTP/1.1\r\nHost: x\r\n"
                                   f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
                                   f"Content-Length: {len(click)}\r\n\r\n{click}").encode())
    empty = encode_array(np.zeros(volume.shape, np.uint8))
    deadline = time.monotonic() + 10
    while served.request("GET", f"/sessions/{session}/targets/t/mask")[1] == empty:
        assert time.monotonic() < deadline, "the click was not applied"
        time.sleep(0.1)
    time.sleep(0.3)  # the log reader catches up
    went_away = [line for line in served.lines[seen:] if "before its body arrived" in line]
    assert len(went_away) == 1 and " INFO " in went_away[0], served.lines[seen:]


def test_the_access_log_shows_only_a_prefix_of_session_ids(served):
    session = served.new_session(phantom(3).image)
    served.request("GET", f"/sessions/{session}/targets/t/mask")
    time.sleep(0.2)
    assert f"/sessions/{session[:6]}.../targets/t/mask" in served.log
    assert session not in served.log


def test_the_server_logged_no_traceback_and_no_error(served):
    """Run last: nothing above (bombs, malformed headers, floods, stalls, disconnects) left an
    ERROR line or a traceback in the server's log."""
    assert "Traceback" not in served.log and " ERROR " not in served.log, served.log[-5000:]


@pytest.mark.parametrize("option, value", [("--rate", "0"), ("--rate", "-5"), ("--rate", "nan"),
                                           ("--max-memory-gb", "-1"), ("--max-memory-gb", "inf"),
                                           ("--max-targets", "0"), ("--max-sessions", "-1"),
                                           ("--max-voxels", "0"), ("--max-upload-mb", "-1"),
                                           ("--idle-minutes", "0"), ("--read-timeout", "-1"),
                                           ("--keep-alive", "0"), ("--forwarded-allow-ips", "proxy")])
def test_impossible_limits_are_refused_at_startup_in_one_line(capsys, option, value):
    assert main(["serve", "--insecure-local", option, value]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith(f"ka2er: error: {option}: "), error


def test_a_binary_token_file_is_refused_in_one_line(capsys, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_bytes(bytes(range(256)) * 4)
    assert main(["serve", "--token-file", str(token_file)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--token-file: the token must be" in error, error



def test_a_silent_client_of_a_tls_server_is_closed_within_the_read_timeout(tmp_path):
    """Before any request a TLS client must finish its handshake; one that never starts it is
    closed within the read timeout, not asyncio's 60 s."""
    import trustme

    from ka2er_core.server.app import Limits, create_app
    from ka2er_core.server.serve import BackgroundServer

    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    certificate.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    certificate.private_key_pem.write_to_path(str(keyfile))
    app = create_app(load_bundle(), TOKEN, Limits(read_timeout_s=READ_TIMEOUT_S), device="cpu")
    server = BackgroundServer(app, ssl_certfile=str(certfile), ssl_keyfile=str(keyfile))
    try:
        start = time.monotonic()
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            read_until_closed(sock, start + READ_TIMEOUT_S + 2.0)
    finally:
        server.stop()
