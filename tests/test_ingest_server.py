"""Self-test of the fake cmdrdata ingest server (tests/ingest_server.py), driven with `requests`."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from ingest_server import IngestServer

# None of these tests drives the openai SDK (bar those marked drives_sdk): newest SDK only.
pytestmark = pytest.mark.sdk_independent

API_KEY = "cd-test-key"


@pytest.fixture
def server() -> Iterator[IngestServer]:
    with IngestServer(api_key=API_KEY) as ingest:
        yield ingest


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as client:
        client.headers["Authorization"] = f"Bearer {API_KEY}"
        yield client


def event(event_id: str, **fields: Any) -> dict[str, Any]:
    return {"event_id": event_id, "customer_id": "cust-1", "tokens": 10, **fields}


def post(
    session: requests.Session,
    server: IngestServer,
    body: dict[str, Any],
    *,
    key: str | None = None,
    timeout: float = 5.0,
) -> requests.Response:
    return session.post(
        server.url,
        json=body,
        headers={"Idempotency-Key": key or body["event_id"]},
        timeout=timeout,
    )


# --------------------------------------------------------------------------- endpoints


def test_single_event_is_accepted_and_recorded(
    server: IngestServer, session: requests.Session
) -> None:
    assert server.url == f"http://127.0.0.1:{server.port}/api/events"
    assert server.batch_url == f"http://127.0.0.1:{server.port}/api/events/batch"

    response = post(session, server, event("e1"))

    assert response.status_code == 201
    assert response.json() == {"status": "accepted", "event_id": "e1"}
    assert response.headers["Content-Type"] == "application/json"
    assert server.accepted() == {"e1": event("e1")}
    assert server.accepted_ids() == {"e1"}
    assert server.duplicates() == 0
    [request] = server.requests
    assert request.method == "POST"
    assert request.path == "/api/events"
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.headers["content-type"] == "application/json"
    assert request.idempotency_key == "e1"
    assert request.body == event("e1")
    assert request.status == 201
    assert request.fault is None
    assert request.event_ids == ["e1"]
    assert request.time <= time.monotonic()


def test_duplicates_by_event_id_and_by_idempotency_key(
    server: IngestServer, session: requests.Session
) -> None:
    assert post(session, server, event("e1")).status_code == 201

    again = post(session, server, event("e1", tokens=99))
    same_key = post(session, server, event("e1-copy"), key="e1")

    assert again.status_code == 200
    assert again.json() == {"status": "duplicate", "event_id": "e1"}
    assert same_key.status_code == 200
    assert same_key.json() == {"status": "duplicate", "event_id": "e1-copy"}
    assert server.accepted() == {"e1": event("e1")}  # the first body is kept
    assert server.duplicates() == 2
    assert [r.status for r in server.requests] == [201, 200, 200]
    assert server.received_ids() == {"e1", "e1-copy"}


def test_batch_gives_per_event_results_with_one_rejected_event(
    server: IngestServer, session: requests.Session
) -> None:
    server.reject_event("bad", status=422, message="unknown meter")
    assert post(session, server, event("old")).status_code == 201

    response = session.post(
        server.batch_url,
        json={"events": [event("e1"), event("bad"), event("old"), event("e2"), {"tokens": 1}]},
        headers={"Idempotency-Key": "batch-1"},
        timeout=5,
    )

    assert response.status_code == 200
    assert response.json() == {
        "results": [
            {"event_id": "e1", "status": 201},
            {"event_id": "bad", "status": 422, "error": "unknown meter"},
            {"event_id": "old", "status": 200},
            {"event_id": "e2", "status": 201},
            {"event_id": None, "status": 400, "error": "event_id is required (a non-empty string)"},
        ]
    }
    assert server.accepted_ids() == {"old", "e1", "e2"}
    assert server.duplicates() == 1
    assert server.rejected_ids() == {"bad"}
    assert server.requests[-1].idempotency_key == "batch-1"
    assert server.requests[-1].event_ids == ["e1", "bad", "old", "e2"]

    # The rejection holds for the event on its own too, every time.
    for _ in range(2):
        alone = post(session, server, event("bad"))
        assert alone.status_code == 422
        assert alone.json() == {"error": "unknown meter", "event_id": "bad"}
    assert "bad" not in server.accepted_ids()


def test_batch_replay_is_all_duplicates(server: IngestServer, session: requests.Session) -> None:
    batch = {"events": [event("e1"), event("e2")]}
    first = session.post(server.batch_url, json=batch, headers={"Idempotency-Key": "b"}, timeout=5)
    second = session.post(server.batch_url, json=batch, headers={"Idempotency-Key": "b"}, timeout=5)

    assert [r["status"] for r in first.json()["results"]] == [201, 201]
    assert [r["status"] for r in second.json()["results"]] == [200, 200]
    assert server.accepted_ids() == {"e1", "e2"}
    assert server.duplicates() == 2


def test_bad_bodies_are_400(server: IngestServer, session: requests.Session) -> None:
    not_json = session.post(server.url, data=b"{nope", timeout=5)
    no_id = session.post(server.url, json={"tokens": 1}, timeout=5)
    bad_batch = session.post(server.batch_url, json={"events": "e1"}, timeout=5)

    assert [not_json.status_code, no_id.status_code, bad_batch.status_code] == [400, 400, 400]
    assert "error" in not_json.json()
    assert server.accepted_ids() == set()


def test_unknown_path_is_404_and_wrong_method_405(
    server: IngestServer, session: requests.Session
) -> None:
    missing = session.post(f"{server.root_url}/api/other", json=event("e1"), timeout=5)
    wrong_method = session.get(server.url, timeout=5)

    assert missing.status_code == 404
    assert missing.json()["error"] == "not found"
    assert wrong_method.status_code == 405
    assert wrong_method.headers["Allow"] == "POST"
    assert server.accepted_ids() == set()


def test_missing_or_wrong_bearer_token_is_401(server: IngestServer) -> None:
    with requests.Session() as anonymous:
        missing = anonymous.post(server.url, json=event("e1"), timeout=5)
        wrong = anonymous.post(
            server.batch_url,
            json={"events": [event("e1")]},
            headers={"Authorization": "Bearer nope"},
            timeout=5,
        )

    assert missing.status_code == 401
    assert missing.json() == {"error": "missing or invalid API key"}
    assert wrong.status_code == 401
    assert server.accepted_ids() == set()


def test_no_api_key_accepts_any_caller() -> None:
    with IngestServer() as open_server, requests.Session() as client:
        response = client.post(open_server.url, json=event("e1"), timeout=5)
    assert response.status_code == 201


def test_chunked_request_body(server: IngestServer, session: requests.Session) -> None:
    data = json.dumps(event("e1")).encode()
    response = session.post(
        server.url, data=iter([data[:5], data[5:]]), headers={"Idempotency-Key": "e1"}, timeout=5
    )
    assert response.status_code == 201
    assert server.accepted() == {"e1": event("e1")}


# --------------------------------------------------------------------------- connections


def test_keep_alive_reuses_one_connection(server: IngestServer, session: requests.Session) -> None:
    for index in range(20):
        assert post(session, server, event(f"e{index}")).status_code == 201
    assert server.connections() == 1
    assert len(server.accepted_ids()) == 20


def test_connection_close_is_honoured(server: IngestServer, session: requests.Session) -> None:
    first = session.post(server.url, json=event("e1"), headers={"Connection": "close"}, timeout=5)
    second = post(session, server, event("e2"))

    assert first.status_code == 201
    assert first.headers["Connection"] == "close"
    assert second.status_code == 201
    assert server.connections() == 2


def test_raw_http_1_1_pipelined_requests_on_one_socket(server: IngestServer) -> None:
    def request(event_id: str, close: bool) -> bytes:
        body = json.dumps(event(event_id)).encode()
        head = (
            f"POST /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{'Connection: close' + chr(13) + chr(10) if close else ''}\r\n"
        )
        return head.encode() + body

    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        raw.sendall(request("e1", False) + request("e2", True))
        received = b""
        while chunk := raw.recv(65536):
            received += chunk

    assert received.count(b"HTTP/1.1 201 Created") == 2
    assert server.accepted_ids() == {"e1", "e2"}


# --------------------------------------------------------------------------- faults


def test_fail_then_success(server: IngestServer, session: requests.Session) -> None:
    server.fail(503, retry_after="2")

    failed = post(session, server, event("e1"))
    assert failed.status_code == 503
    assert failed.headers["Retry-After"] == "2"
    assert failed.json() == {"error": "injected failure", "status": 503}
    assert server.accepted_ids() == set()

    assert post(session, server, event("e1")).status_code == 201
    assert server.accepted_ids() == {"e1"}
    assert [(r.status, r.fault) for r in server.requests] == [(503, "status"), (201, None)]
    assert server.pending_faults == 0


def test_fail_fails_a_whole_batch(server: IngestServer, session: requests.Session) -> None:
    server.fail(500, body={"message": "boom"})
    batch = {"events": [event("e1"), event("e2")]}

    failed = session.post(server.batch_url, json=batch, timeout=5)
    retried = session.post(server.batch_url, json=batch, timeout=5)

    assert failed.status_code == 500
    assert failed.json() == {"message": "boom"}
    assert "Retry-After" not in failed.headers
    assert [r["status"] for r in retried.json()["results"]] == [201, 201]
    assert server.duplicates() == 0


def test_faults_run_as_a_fifo_script_and_clear(
    server: IngestServer, session: requests.Session
) -> None:
    server.fail(500, times=2)
    server.rate_limit(retry_after="0")
    server.fail(502, times=None)

    statuses = [post(session, server, event("e1")).status_code for _ in range(5)]
    assert statuses == [500, 500, 429, 502, 502]

    server.clear()
    assert server.pending_faults == 0
    assert post(session, server, event("e1")).status_code == 201


def test_rate_limit_sends_retry_after(server: IngestServer, session: requests.Session) -> None:
    server.rate_limit(retry_after="3")

    limited = post(session, server, event("e1"))

    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "3"
    assert limited.json()["error"] == "rate limit exceeded"
    assert post(session, server, event("e1")).status_code == 201


def test_slow_answers_normally_after_the_delay(
    server: IngestServer, session: requests.Session
) -> None:
    server.slow(0.3)
    started = time.monotonic()

    response = post(session, server, event("e1"))

    assert response.status_code == 201
    assert time.monotonic() - started >= 0.3
    assert server.requests[0].fault == "slow"


def test_slow_beyond_client_timeout_then_retry_counts_once(
    server: IngestServer, session: requests.Session
) -> None:
    server.slow(1.0)

    with pytest.raises(requests.exceptions.ReadTimeout):
        post(session, server, event("e1"), timeout=0.2)
    retry = post(session, server, event("e1"))

    assert retry.status_code == 201
    # The held request is processed when its delay ends: a duplicate, not a second event.
    assert server.wait_for_requests(2)
    assert server.accepted_ids() == {"e1"}
    assert server.duplicates() == 1
    assert sorted((r.status, r.fault) for r in server.requests) == [(200, "slow"), (201, None)]


def test_reset_connection_gives_connection_error(
    server: IngestServer, session: requests.Session
) -> None:
    assert post(session, server, event("e0")).status_code == 201  # a pooled connection
    server.reset_connection()

    with pytest.raises(requests.exceptions.ConnectionError):
        post(session, server, event("e1"))

    assert server.requests[-1].status is None
    assert server.requests[-1].fault == "reset"
    assert server.requests[-1].event_ids == ["e1"]
    assert server.accepted_ids() == {"e0"}
    assert post(session, server, event("e1")).status_code == 201
    assert server.received_ids() == server.accepted_ids() == {"e0", "e1"}


def test_reset_connection_is_a_tcp_reset(server: IngestServer) -> None:
    server.reset_connection()
    body = json.dumps(event("e1")).encode()
    head = (
        f"POST /api/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()

    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        raw.sendall(head + body)
        with pytest.raises(ConnectionResetError):
            raw.recv(1024)


def test_down_refuses_then_up_serves_on_the_same_port(
    server: IngestServer, session: requests.Session
) -> None:
    port = server.port
    for round_ in range(3):
        assert post(session, server, event(f"before-{round_}")).status_code == 201  # keep-alive
        server.down()
        assert not server.running

        with pytest.raises(requests.exceptions.ConnectionError):
            post(session, server, event(f"during-{round_}"))
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()

        server.up()
        assert server.running
        assert server.port == port
        assert post(session, server, event(f"after-{round_}")).status_code == 201

    expected = {f"{stage}-{r}" for r in range(3) for stage in ("before", "after")}
    assert server.accepted_ids() == expected


def test_down_keeps_recorded_state_and_queued_faults(
    server: IngestServer, session: requests.Session
) -> None:
    assert post(session, server, event("e1")).status_code == 201
    server.fail(503)
    server.down()
    server.up()

    assert server.accepted_ids() == {"e1"}
    assert len(server.requests) == 1
    assert post(session, server, event("e2")).status_code == 503


def test_stop_does_not_hang_on_slow_responses_or_idle_connections(
    session: requests.Session,
) -> None:
    server = IngestServer(api_key=API_KEY).start()
    assert post(session, server, event("e0")).status_code == 201  # leaves an idle keep-alive
    server.slow(60)
    errors: list[BaseException] = []

    def held() -> None:
        with requests.Session() as other:
            other.headers["Authorization"] = f"Bearer {API_KEY}"
            try:
                post(other, server, event("e1"), timeout=30)
            except requests.RequestException as error:
                errors.append(error)

    client = threading.Thread(target=held)
    client.start()
    assert server.wait_for_arrivals(2)

    started = time.monotonic()
    server.stop()
    stopped_in = time.monotonic() - started
    client.join(10)

    assert stopped_in < 2
    assert not client.is_alive()
    assert len(errors) == 1
    assert isinstance(errors[0], requests.exceptions.ConnectionError)
    assert server.requests[-1].status is None
    assert server.requests[-1].fault == "slow"
    assert server.accepted_ids() == {"e0"}


def test_invalid_fault_arguments() -> None:
    server = IngestServer()
    with pytest.raises(ValueError):
        server.fail(times=0)
    with pytest.raises(ValueError):
        server.slow(-1)


# --------------------------------------------------------------------------- waiting and reset


def test_wait_for_events_with_a_background_poster(
    server: IngestServer, session: requests.Session
) -> None:
    def deliver() -> None:
        with requests.Session() as client:
            client.headers["Authorization"] = f"Bearer {API_KEY}"
            for index in range(25):
                post(client, server, event(f"e{index}"))

    poster = threading.Thread(target=deliver)
    poster.start()
    try:
        assert server.wait_for_events(25, timeout=10)
    finally:
        poster.join(10)

    assert server.accepted_ids() == {f"e{index}" for index in range(25)}
    assert server.wait_for_requests(25, timeout=0)
    assert not server.wait_for_events(26, timeout=0.05)


def test_concurrent_duplicates_are_counted_once(server: IngestServer) -> None:
    def deliver() -> None:
        with requests.Session() as client:
            client.headers["Authorization"] = f"Bearer {API_KEY}"
            for index in range(10):
                post(client, server, event(f"e{index}"))

    posters = [threading.Thread(target=deliver) for _ in range(4)]
    for poster in posters:
        poster.start()
    for poster in posters:
        poster.join(10)

    assert server.wait_for_requests(40)
    assert server.accepted_ids() == {f"e{index}" for index in range(10)}
    assert server.duplicates() == 30
    assert [r.status for r in server.requests].count(201) == 10


def test_reset_forgets_everything(server: IngestServer, session: requests.Session) -> None:
    requests_list = server.requests
    assert post(session, server, event("e1")).status_code == 201
    assert post(session, server, event("e1")).status_code == 200
    server.fail(500, times=None)
    server.reject_event("e2")

    server.reset()

    assert server.requests is requests_list
    assert server.requests == []
    assert server.accepted_ids() == set()
    assert server.duplicates() == 0
    assert server.pending_faults == 0
    assert post(session, server, event("e1")).status_code == 201
    assert post(session, server, event("e2")).status_code == 201
