"""``ka2er serve`` over real HTTP on loopback (uvicorn in a thread) with ``RemoteSession``."""

import json
import http.client
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from ka2er_core import load_bundle
from ka2er_core.data import PHANTOM_LABELS, TEST_SEEDS, ct_phantom
from ka2er_core.errors import PromptError
from ka2er_core.inference.prefetch import BACKGROUND_BYTES
from ka2er_core.geometry import foreground_bounds, ijk_to_ras_points
from ka2er_core.inference import InteractiveSession
from ka2er_core.server.app import Limits, create_app
from ka2er_core.server.client import AuthenticationError, RemoteError, RemoteSession, ServerUnavailableError
from ka2er_core.server.serve import BackgroundServer, ServerConfigError, check_config
from ka2er_core.server.wire import WireError, decode_array, encode_array, encode_volume
from ka2er_core.modelspace.clicks import component_centre

TOKEN = "t0ken-for-the-loopback-tests-only"


class LiveServer(BackgroundServer):
    """A real uvicorn server on a free loopback port, in a thread."""

    def __init__(self, app, **config):
        super().__init__(app, **config)
        self.app = app

    @property
    def store(self):
        return self.app.state.store

    def raw(self, method, path, body=b"", headers=None, token=TOKEN):
        """One request with http.client: (status, parsed JSON or bytes)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        headers = dict(headers or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        data = response.read()
        connection.close()
        try:
            return response.status, json.loads(data)
        except ValueError:
            return response.status, data


@pytest.fixture(scope="module")
def bundle():
    return load_bundle()


@pytest.fixture(scope="module")
def server(bundle):
    live = LiveServer(create_app(bundle, TOKEN, Limits(max_upload_bytes=8 << 20, max_voxels=2_000_000),
                                 device="cpu"))
    yield live
    live.stop()


def phantom(seed, shape=(24, 48, 48)):
    return ct_phantom(seed, shape=shape, spacing=(4.0, 3.0, 3.0), oblique=True)


def clicks_on(subject, name, count):
    """RAS points: the centre of the target, then points spread through it."""
    truth = subject.label.array == PHANTOM_LABELS[name]
    points = [component_centre(truth)[0]]
    inside = np.argwhere(truth)
    points += [inside[i] for i in np.linspace(0, len(inside) - 1, count - 1).astype(int)]
    return [ijk_to_ras_points(p[::-1].astype(float), subject.image.ijk_to_ras) for p in points]


def test_the_same_clicks_give_the_same_mask_as_in_process(server, bundle):
    subject = phantom(TEST_SEEDS[0])
    local = InteractiveSession(bundle, device="cpu", background=True)  # as the server's
    remote = RemoteSession(server.url, token=TOKEN)
    for session in (local, remote):
        session.set_image(subject.image)
    points = clicks_on(subject, "liver", 3)
    low, high = (np.min(points, axis=0), np.max(points, axis=0))
    steps = [("box", (low, high))] + [("point", (p, i != 1)) for i, p in enumerate(points)] + [("undo", ())]
    for kind, args in steps:
        if kind == "box":
            a, b = local.add_box(*args), remote.add_box(*args)
        elif kind == "point":
            a, b = local.add_point(*args), remote.add_point(*args)
        else:
            a, b = local.undo(), remote.undo()
        assert np.array_equal(local.mask, remote.mask), kind
        if kind != "undo":
            assert a.region == b.region and a.member == b.member
            assert abs(a.score - b.score) < 1e-5
        assert local.undo_depth == remote.undo_depth
    assert remote.mask.any()
    remote.set_target("second")
    assert not remote.mask.any() and remote.undo_depth == 0
    remote.add_point(points[0])
    remote.set_target("Segment_1")
    assert np.array_equal(local.mask, remote.mask)
    remote.set_mask(np.zeros_like(remote.mask))
    assert remote.undo_depth == 0 and not remote.mask.any()
    remote.reset()
    remote.close()


def test_session_info_reports_the_background_embeddings_counted_in_the_sessions_memory(server):
    subject = phantom(TEST_SEEDS[0])
    remote = RemoteSession(server.url, token=TOKEN)
    remote.set_image(subject.image)
    assert remote.background.planned == 0  # nothing to plan before the first prompt
    low, high = foreground_bounds(subject.label.array == PHANTOM_LABELS["liver"])
    remote.add_box(*(ijk_to_ras_points(corner[::-1].astype(float), subject.image.ijk_to_ras)
                     for corner in (low, high)))
    assert remote.mask.any()
    served = server.store.get(remote.session_id).session
    served.prefetcher.wait(600)  # a bound on a hung worker, not a timing requirement
    status = remote.background
    assert status.done and status.planned > 0 and status.ready == status.planned
    limits = server.app.state.limits
    assert status.budget == min(BACKGROUND_BYTES, limits.max_memory_bytes // limits.max_sessions)
    assert 0 < status.bytes <= status.budget
    _, info = server.raw("GET", f"/sessions/{remote.session_id}")
    assert info["shape"] == list(subject.image.shape) and info["background"]["ready"] == status.ready
    assert info["memory_bytes"] >= subject.image.array.nbytes + remote.mask.nbytes + status.budget
    remote.close()


def test_wrong_or_missing_token_is_refused_and_nothing_happens(server, bundle):
    image = encode_volume(phantom(TEST_SEEDS[0]).image)
    sessions_before = len(server.store)
    for token in (None, "wrong-token-of-the-same-kind-xx", TOKEN + "x"):
        status, reply = server.raw("POST", "/sessions", image, token=token)
        assert status == 401 and "token" in reply["detail"]
        status, _ = server.raw("POST", "/sessions/abc/targets/x/points", b"{not json", token=token)
        assert status == 401
    assert len(server.store) == sessions_before
    assert server.raw("GET", "/health", token=None)[0] == 200
    assert server.raw("GET", "/openapi.json", token=None)[0] == 401
    with pytest.raises(AuthenticationError, match="refused the token"):
        RemoteSession(server.url, token="wrong-token-of-the-same-kind-xx").set_image(
            phantom(TEST_SEEDS[0]).image)


def test_bad_requests_get_4xx_with_a_message_and_the_server_keeps_serving(server):
    subject = phantom(TEST_SEEDS[1])
    image = encode_volume(subject.image)
    status, reply = server.raw("POST", "/sessions", image)
    assert status == 201
    session = reply["session"]
    points = f"/sessions/{session}/targets/liver/points"
    json_headers = {"Content-Type": "application/json"}
    nan_geometry = encode_array(subject.image.array, np.full((4, 4), np.nan))
    big = encode_array(np.zeros((200, 200, 200), np.uint8), np.eye(4))  # 8 M voxels > 2 M allowed
    cases = {
        "oversized upload": ("POST", "/sessions", b"\0" * (9 << 20), {}, 413),
        "too many voxels": ("POST", "/sessions", big, {}, 400),
        "NaN geometry": ("POST", "/sessions", nan_geometry, {}, 400),
        "truncated body": ("POST", "/sessions", image[: len(image) // 2], {}, 400),
        "not a container": ("POST", "/sessions", b"hello", {}, 400),
        "malformed JSON": ("POST", points, b'{"ras": [1, 2', json_headers, 422),
        "point outside the volume": ("POST", points, json.dumps({"ras": [5000, 0, 0]}).encode(),
                                     json_headers, 422),
        "NaN point": ("POST", points, b'{"ras": [NaN, 0, 0]}', json_headers, 422),
        "extra field": ("POST", points, json.dumps({"ras": [0, 0, 0], "x": 1}).encode(), json_headers, 422),
        "big JSON": ("POST", points, b" " * (70 << 10), json_headers, 413),
        "unknown session": ("POST", "/sessions/nope/targets/liver/points",
                            json.dumps({"ras": [0, 0, 0]}).encode(), json_headers, 404),
        "unknown member": ("PUT", f"/sessions/{session}/member", b'{"member": "nobody"}', json_headers, 422),
        "positive not a bool": ("POST", points, b'{"ras": [0, 0, 0], "positive": "no"}', json_headers,
                                422),
        "overlap not a bool": ("PUT", f"/sessions/{session}/overlap", b'{"overlap": "no"}', json_headers,
                               422),
        "mask of the wrong shape": ("PUT", f"/sessions/{session}/targets/liver/mask",
                                    encode_array(np.zeros((3, 3, 3), np.uint8)), {}, 422),
    }
    for name, (method, path, body, headers, expected) in cases.items():
        status, reply = server.raw(method, path, body, headers)
        assert status == expected, (name, status, reply)
        assert isinstance(reply, dict) and reply.get("detail"), name
    centre = ijk_to_ras_points(np.array(subject.image.shape[::-1]) / 2, subject.image.ijk_to_ras)
    status, reply = server.raw("POST", points, json.dumps({"ras": centre.tolist()}).encode(), json_headers)
    assert status == 200 and reply["undo_depth"] == 1


def dice(a, b):
    return 2 * np.sum((a > 0) & (b > 0)) / max(np.sum(a > 0) + np.sum(b > 0), 1)


def test_eight_concurrent_clients_get_their_own_masks(bundle):
    """8 clients, 12 clicks each, on different images (different shapes too, so a mix-up cannot go
    unnoticed): with room for 8 sessions each mask is the in-process one; with room for 5, the
    sessions evicted under them are uploaded again and the clicks still land on their own images."""
    subjects = [phantom(TEST_SEEDS[0] + n, shape=(18 + n, 40, 40)) for n in range(8)]

    def clicks(subject):
        return clicks_on(subject, "liver", 12)

    def expected(subject):
        session = InteractiveSession(bundle, device="cpu", background=True)  # as the server's
        session.set_image(subject.image)
        for point in clicks(subject):
            session.add_point(point)
        return session.mask.copy()

    def client(url, subject):
        with RemoteSession(url, token=TOKEN) as remote:
            remote.set_image(subject.image)
            for point in clicks(subject):
                remote.add_point(point)
            return remote.mask.copy(), remote.uploads

    references = [expected(s) for s in subjects]
    for max_sessions in (8, 5):
        app = create_app(bundle, TOKEN, Limits(max_sessions=max_sessions, rate_burst=1000), device="cpu")
        live = LiveServer(app)
        try:
            with ThreadPoolExecutor(8) as pool:
                results = list(pool.map(lambda s: client(live.url, s), subjects))
        finally:
            live.stop()
        assert live.store.peak_sessions <= max_sessions
        for subject, reference, (mask, uploads) in zip(subjects, references, results):
            assert mask.shape == reference.shape
            if max_sessions == 8:
                assert uploads == 1 and np.array_equal(mask, reference)
            else:  # the undo history is lost at each re-upload, so the answer may differ a little
                liver = subject.label.array == PHANTOM_LABELS["liver"]
                assert dice(mask, liver) > 0.5 * dice(reference, liver) > 0
        if max_sessions == 5:
            assert live.store.evicted > 0 and sum(u for _, u in results) > 8


def test_an_expired_session_is_uploaded_again_and_the_mask_kept(server):
    subject = phantom(TEST_SEEDS[0])
    remote = RemoteSession(server.url, token=TOKEN)
    remote.set_image(subject.image)
    points = clicks_on(subject, "liver", 3)
    remote.add_point(points[0])
    before = remote.mask.copy()
    server.store.remove(remote.session_id)  # as if it had expired
    result = remote.add_point(points[1])
    assert remote.uploads == 2
    assert result.region is not None
    outside = np.ones(before.shape, bool)
    outside[result.region] = False
    assert before.any() and np.array_equal(remote.mask[outside], before[outside])  # restored, corrected
    status, mask = server.raw("GET", f"/sessions/{remote.session_id}/targets/Segment_1/mask")
    assert status == 200
    array, _ = decode_array(mask, 10**7)
    assert np.array_equal(array, remote.mask)  # the server's copy is the client's


def test_without_overlap_the_server_keeps_other_segments_and_a_restore_keeps_the_choice(server,
                                                                                        bundle):
    """overlap = False on a RemoteSession reaches the server (the same masks as in process), and
    is set again on the new server session after the old one was dropped."""
    subject = phantom(TEST_SEEDS[0])
    local = InteractiveSession(bundle, device="cpu", background=True)  # as the server's
    remote = RemoteSession(server.url, token=TOKEN)
    liver = clicks_on(subject, "liver", 2)
    for session in (local, remote):
        session.set_image(subject.image)
        session.overlap = False
        session.set_target("first")
        session.add_point(liver[0])
        session.set_target("second")  # a box over the first segment
        session.add_box(np.min(liver, axis=0) - 20, np.max(liver, axis=0) + 20)
    first = local.targets["first"].mask > 0
    assert first.any() and not (local.mask[first]).any()
    assert np.array_equal(local.mask, remote.mask)
    server.store.remove(remote.session_id)  # dropped: the client restores it with overlap off
    remote.set_target("first")
    remote.add_point(liver[1], positive=False)
    assert remote.uploads == 2
    status, reply = server.raw("GET", f"/sessions/{remote.session_id}/targets/second/mask")
    assert status == 200 and server.store.get(remote.session_id).session.overlap is False
    remote.close()


def test_a_retried_prompt_is_applied_once(server):
    subject = phantom(TEST_SEEDS[0])
    status, reply = server.raw("POST", "/sessions", encode_volume(subject.image))
    path = f"/sessions/{reply['session']}/targets/t/points"
    body = json.dumps({"ras": clicks_on(subject, "liver", 1)[0].tolist()}).encode()
    headers = {"Content-Type": "application/json", "X-Request-Id": "same-id"}
    first = server.raw("POST", path, body, headers)
    again = server.raw("POST", path, body, headers)
    assert first == again and first[1]["undo_depth"] == 1


def test_tls_serves_clients_that_trust_its_certificate(bundle, tmp_path):
    import ssl

    import trustme

    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    certificate.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    certificate.private_key_pem.write_to_path(str(keyfile))
    live = LiveServer(create_app(bundle, TOKEN, device="cpu"), ssl_certfile=str(certfile),
                      ssl_keyfile=str(keyfile))
    try:
        assert live.url.startswith("https://")
        context = ssl.create_default_context()
        authority.configure_trust(context)
        subject = phantom(TEST_SEEDS[0])
        with RemoteSession(live.url, token=TOKEN, ssl_context=context) as remote:
            remote.set_image(subject.image)
            assert remote.add_point(clicks_on(subject, "liver", 1)[0]).region is not None
        with pytest.raises(ServerUnavailableError, match="CERTIFICATE_VERIFY_FAILED"):
            RemoteSession(live.url, token=TOKEN, retries=0).set_image(subject.image)  # untrusted
    finally:
        live.stop()


def test_client_errors_are_clear(server, bundle):
    with pytest.raises(ServerUnavailableError, match="cannot reach"):
        RemoteSession("http://127.0.0.1:9", token=TOKEN, retries=1, backoff=0.01).set_image(
            phantom(TEST_SEEDS[0]).image)
    remote = RemoteSession(server.url, token=TOKEN)
    with pytest.raises(PromptError, match="set_image"):
        remote.add_point((0, 0, 0))
    remote.set_image(phantom(TEST_SEEDS[0]).image)
    with pytest.raises(PromptError, match="outside the image"):
        remote.add_point((5000, 0, 0))
    with pytest.raises(RemoteError, match="unknown member"):
        remote.pin("nobody")
    assert remote.members == list(bundle.members) and remote.members[0] == "general"


def test_wire_containers_reject_bombs_and_keep_geometry(rng):
    array = rng.integers(-1000, 1000, (5, 6, 7)).astype(np.int16)
    matrix = np.diag([0.5, 0.7, 2.0, 1.0])
    back, geometry = decode_array(encode_array(array, matrix), 1000)
    assert back.dtype == np.int16 and np.array_equal(back, array) and np.array_equal(geometry, matrix)
    header = json.dumps({"shape": [5, 6, 7], "dtype": "uint8"}).encode()
    bomb = b"KA2V\x01" + len(header).to_bytes(4, "little") + header + zlib.compress(b"\0" * 10**7)
    with pytest.raises(WireError, match="longer than the shape"):
        decode_array(bomb, 1000)
    with pytest.raises(WireError, match="exceed"):
        decode_array(encode_array(array), 100)


def test_the_server_refuses_to_start_unsafely(tmp_path):
    with pytest.raises(ServerConfigError, match="without a token"):
        check_config("0.0.0.0", None, False, None, None)
    with pytest.raises(ServerConfigError, match="loopback"):
        check_config("0.0.0.0", None, True, None, None)
    assert check_config("127.0.0.1", None, True, None, None) is None
    short = tmp_path / "short"
    short.write_text("abc\n")
    with pytest.raises(ServerConfigError, match="at least 16"):
        check_config("0.0.0.0", short, False, None, None)
    good = tmp_path / "token"
    good.write_text(TOKEN + "\n")
    assert check_config("0.0.0.0", good, False, None, None) == TOKEN
    with pytest.raises(ServerConfigError, match="both"):
        check_config("0.0.0.0", good, False, tmp_path / "cert.pem", None)


def test_schemathesis_finds_no_server_error(bundle):
    """Requests generated from the OpenAPI schema against the real server on loopback, with the token:
    per operation 10 schema-conforming cases with random ids, then 15 conforming and 15
    schema-violating cases on a real session (bounded in count; about 20 s). No answer is a 5xx."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode

    live = LiveServer(create_app(bundle, TOKEN, Limits(max_upload_bytes=1 << 20, max_voxels=100_000,
                                                        rate_burst=100_000), device="cpu"))
    image = encode_volume(phantom(TEST_SEEDS[0], shape=(16, 32, 32)).image)
    seen = []
    try:
        status, document = live.raw("GET", "/openapi.json")
        assert status == 200
        schema = schemathesis.openapi.from_dict(document)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 9
        for operation in operations:
            runs = [(GenerationMode.POSITIVE, None, 10)]
            if "{session_id}" in operation.path:
                session = live.raw("POST", "/sessions", image)[1]["session"]
                runs += [(GenerationMode.POSITIVE, session, 15), (GenerationMode.NEGATIVE, session, 15)]
            for mode, session, count in runs:
                fixed = None if session is None else {"session_id": session}

                @settings(max_examples=count, deadline=None, database=None,
                          suppress_health_check=list(HealthCheck))
                @given(case=operation.as_strategy(mode, path_parameters=fixed))
                def no_server_error(case):
                    response = case.call(base_url=live.url, timeout=30,
                                         headers={"Authorization": f"Bearer {TOKEN}"})
                    seen.append(response.status_code)
                    assert response.status_code < 500, (case.method, case.path, response.text[:300])
                no_server_error()
        assert live.raw("GET", "/health", token=None)[0] == 200  # still serving
    finally:
        live.stop()
    assert len(seen) >= 100 and any(s < 300 for s in seen) and any(400 <= s < 500 for s in seen)


def test_ka2er_serve_starts_from_the_command_line_and_refuses_without_a_token(tmp_path):
    import socket
    import subprocess
    import sys
    import time

    def free_port():
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    refused = subprocess.run([sys.executable, "-m", "ka2er_core.cli", "serve", "--host", "0.0.0.0"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "without a token" in refused.stderr
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "ka2er_core.cli", "serve", "--token-file",
                                str(token_file), "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                connection.request("GET", "/health")
                health = connection.getresponse()
                assert health.status == 200 and json.loads(health.read())["status"] == "ok"
                break
            except OSError:
                assert time.monotonic() < deadline and process.poll() is None, process.stdout.read()
                time.sleep(0.2)
        times = []
        for token in (TOKEN, TOKEN, TOKEN, "wrong-token-of-the-same-kind-xx"):
            start = time.perf_counter()
            connection.request("GET", "/capabilities", headers={"Authorization": f"Bearer {token}"})
            response = connection.getresponse()
            body = json.loads(response.read())
            times.append(time.perf_counter() - start)
        assert response.status == 401 and "token" in body["detail"]
        assert min(times[1:3]) < 0.03  # kept-alive requests are not held back by Nagle + delayed ACK
    finally:
        process.terminate()
        process.wait(20)


class StoredSession:
    """What the session store needs of a session: to be closed when dropped."""

    closed = False

    def close(self):
        self.closed = True


def test_sessions_expire_when_idle_and_the_least_recently_used_go_first():
    from ka2er_core.server.sessions import SessionGone, SessionStore

    now = [0.0]
    store = SessionStore(max_sessions=3, max_bytes=1000, idle_seconds=60, clock=lambda: now[0])
    sessions = [StoredSession() for _ in range(3)]
    a, b, c = (store.add(session, 100) for session in sessions)
    now[0] = 30
    store.get(a)  # a is now the most recently used
    d = store.add(StoredSession(), 100)  # a 4th session: b (least recently used) goes
    with pytest.raises(SessionGone):
        store.get(b)
    assert [s.closed for s in sessions] == [False, True, False]  # its background embeddings stop
    store.update(d, 850)  # d grew: 100 + 100 + 850 > 1000, so c goes (a was used later)
    with pytest.raises(SessionGone):
        store.get(c)
    assert store.nbytes <= 1000 and store.evicted == 2
    now[0] = 100  # a was last used at 30, d at 30: both idle for 70 s > 60 s
    with pytest.raises(SessionGone):
        store.get(a)
    assert len(store) == 0 and store.peak_sessions == 3


def test_a_new_session_waiting_for_its_first_request_is_evicted_last():
    """Three slots: a session whose client already prompted goes before two just uploaded; past
    the grace period the least recently used goes again, used or not."""
    from ka2er_core.server.sessions import UPLOAD_GRACE_SECONDS, SessionGone, SessionStore

    now = [0.0]
    store = SessionStore(max_sessions=3, max_bytes=10**6, idle_seconds=600, clock=lambda: now[0])
    a = store.add(StoredSession(), 100)
    now[0] = 0.5
    b, c = store.add(StoredSession(), 100), store.add(StoredSession(), 100)
    store.get(a)  # a's client prompted; b's and c's have not yet
    now[0] = 1.0
    store.add(StoredSession(), 100)
    with pytest.raises(SessionGone):
        store.get(a)
    now[0] += UPLOAD_GRACE_SECONDS
    store.add(StoredSession(), 100)  # b: the least recently used, its grace over
    with pytest.raises(SessionGone):
        store.get(b)
    store.get(c)


def test_the_http_layer_answers_while_the_model_works(server):
    """A first click on a larger volume keeps the model thread busy for a while; /health meanwhile
    answers at once (the event loop never waits on the model)."""
    import threading
    import time

    subject = ct_phantom(TEST_SEEDS[2], shape=(64, 96, 96), spacing=(2.0, 2.0, 3.0))
    remote = RemoteSession(server.url, token=TOKEN)
    remote.set_image(subject.image)
    click = threading.Thread(target=remote.add_point, args=(clicks_on(subject, "liver", 1)[0],))
    start = time.perf_counter()
    click.start()
    time.sleep(0.05)
    health = []
    while click.is_alive():
        t = time.perf_counter()
        assert server.raw("GET", "/health", token=None)[0] == 200
        health.append(time.perf_counter() - t)
        time.sleep(0.05)  # within the per-client rate limit
    click.join()
    busy = time.perf_counter() - start
    assert busy > 0.2 and len(health) >= 2 and max(health) < 0.1, (busy, health)


def test_a_client_over_the_rate_limit_gets_429_with_retry_after(bundle):
    live = LiveServer(create_app(bundle, TOKEN, Limits(rate_per_second=0.5, rate_burst=3), device="cpu"))
    try:
        connection = http.client.HTTPConnection("127.0.0.1", live.port, timeout=10)
        statuses = []
        for _ in range(4):
            connection.request("GET", "/health")
            response = connection.getresponse()
            response.read()
            statuses.append(response.status)
        assert statuses == [200, 200, 200, 429] and int(response.getheader("Retry-After")) >= 1
    finally:
        live.stop()
