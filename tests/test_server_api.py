"""The API over real HTTP, on a running city (its own broker, ledger and uvicorn on a free port):
every role's allowed and refused actions, logins by signed challenge, the live streams, chat,
proposals and votes, jobs posted to the market and followed to payment, health and metrics."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ledger import Identity, sign_ballot, sign_document
from server.runner import Served

OPEN: list[httpx.Client] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while OPEN:
        OPEN.pop().close()


def client(served: Served, who: str | None = None, token: str | None = None) -> httpx.Client:
    """An HTTP client of the served API, as ``who`` (a demo login) or with ``token``, or anonymous."""
    headers = {}
    if who is not None:
        token = served.login(who).token
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    c = httpx.Client(base_url=served.url, headers=headers, timeout=30)
    OPEN.append(c)
    return c


def events(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    """Server-sent events of a streamed response, as (event name, data)."""
    name, data = "message", []
    for line in response.iter_lines():
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif not line and data:
            yield name, json.loads("\n".join(data))
            name, data = "message", []


def own_machine(served: Served, who: str = "alice") -> str:
    me = client(served, who).get("/v1/me").json()
    return next(m for m, roles in me["roles"].items() if "stakeholder" in roles)


def others(served: Served, who: str = "alice") -> str:
    me = client(served, who).get("/v1/me").json()
    return next(n.id for n in served.city.nodes if n.id not in me["roles"])


def login_as(served: Served, name: str, key: str, **grants: Any) -> httpx.Client:
    """Register a key through the admin API and log in with it by signed challenge."""
    identity = served.city.keys.get_or_create(key)
    admin = client(served, "admin")
    r = admin.post("/v1/admin/principals", json={"name": name, "did": identity.did, **grants})
    assert r.status_code in (201, 400), r.text  # 400: registered already by an earlier test
    anon = client(served)
    nonce = anon.post("/v1/auth/challenge", json={"did": identity.did}).json()
    token = anon.post("/v1/auth/token", json=sign_document(nonce["sign"], identity, signer_field="did")).json()["token"]
    return client(served, token=token)


def test_health_and_metrics_answer_without_a_token(served: Served) -> None:
    anon = client(served)
    health = anon.get("/health").json()
    assert health["status"] == "ok" and health["hub"] and health["machines"] == 4 and health["model"] == "rules"
    text = anon.get("/metrics").text
    assert "tamc_machines 4.0" in text and "tamc_http_requests_total" in text
    assert anon.get("/openapi.json").json()["info"]["title"] == "TAMC"


@pytest.mark.parametrize("path", ["/v1/me", "/v1/machines", "/v1/machines/prusa-n1", "/v1/stream", "/v1/jobs"])
def test_without_a_valid_token_every_route_is_401_with_a_reason(served: Served, path: str) -> None:
    for c in (client(served), client(served, token="not-a-token")):
        r = c.get(path)
        assert r.status_code == 401, r.text
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"] == "NotAuthenticated" and "token" in r.json()["detail"]


def test_login_by_signed_challenge_and_its_refusals(served: Served) -> None:
    key = Identity.generate()
    anon = client(served)
    refused = anon.post("/v1/auth/challenge", json={"did": key.did})
    assert refused.status_code == 401 and "not a principal" in refused.json()["detail"]
    assert client(served, "admin").post("/v1/admin/principals", json={"name": "kim", "did": key.did}).status_code == 201
    challenge = anon.post("/v1/auth/challenge", json={"did": key.did}).json()
    forged = sign_document(challenge["sign"], Identity.generate(), signer_field="did")
    forged["did"] = key.did  # claims kim's did, signed by another key
    assert anon.post("/v1/auth/token", json=forged).status_code == 401
    # the nonce was spent by the failed try: a correct signature on it is refused too
    assert anon.post("/v1/auth/token", json=sign_document(challenge["sign"], key, signer_field="did")).status_code == 401
    challenge = anon.post("/v1/auth/challenge", json={"did": key.did}).json()
    signed = sign_document(challenge["sign"], key, signer_field="did")
    token = anon.post("/v1/auth/token", json=signed)
    assert token.status_code == 200, token.text
    me = client(served, token=token.json()["token"]).get("/v1/me").json()
    assert me == {"did": key.did, "name": "kim", "admin": False, "roles": {}, "requester_wallet": None, "balance": None}
    assert anon.post("/v1/auth/token", json=signed).status_code == 401  # a nonce is good once


def test_a_stakeholder_sees_inside_their_machine_and_not_another(served: Served) -> None:
    alice = client(served, "alice")
    mine, other = own_machine(served), others(served)
    fleet = {m["id"]: m for m in alice.get("/v1/machines").json()}
    assert set(fleet) == {n.id for n in served.city.nodes}
    assert fleet[mine]["roles"] == ["stakeholder"] and fleet[other]["roles"] == []
    detail = alice.get(f"/v1/machines/{mine}").json()
    assert detail["profile"]["id"] == mine and detail["telemetry"]["machine_id"] == mine
    shares = alice.get(f"/v1/machines/{mine}/shares").json()
    assert shares["yours"] == {"holder:alice": 50} and shares["total_units"] == 100
    statement = alice.get(f"/v1/machines/{mine}/statement").json()
    assert statement["account"] == f"machine:{mine}" and isinstance(statement["balance"], int)
    for path in ("", "/shares", "/statement", "/jobs", "/chat", "/proposals", "/stream"):
        r = alice.get(f"/v1/machines/{other}{path}")
        assert r.status_code == 403, (path, r.text)
        assert r.json() == {"error": "Forbidden", "detail": f"alice is not a stakeholder or operator of {other}"}
    r = alice.post(f"/v1/machines/{other}/chat", json={"message": "how much did you earn?"})
    assert r.status_code == 403
    assert alice.get("/v1/machines/no-such-machine").status_code == 404


def test_chat_streams_an_answer_and_each_stakeholder_keeps_their_own(served: Served) -> None:
    mine = own_machine(served)
    alice = client(served, "alice")
    with alice.stream("POST", f"/v1/machines/{mine}/chat", json={"message": "how much did you earn this week?"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        got = list(events(r))
    names = [n for n, _ in got]
    assert names[0] == "delta" and names[-1] == "answer"
    answer = got[-1][1]
    assert answer["mode"] == "offline" and "earnings" in answer["sources"] and "paid" in answer["text"]
    assert "".join(d["text"] for n, d in got if n == "delta") == answer["text"]
    history = alice.get(f"/v1/machines/{mine}/chat").json()
    assert history[-2:] == [{"role": "you", "text": "how much did you earn this week?"}, {"role": "machine", "text": answer["text"]}]
    # bob holds shares of the same machine: his conversation is his own
    bob = login_as(served, "bob", "holder-bob")
    assert bob.get(f"/v1/machines/{mine}/chat").json() == []
    # the operator chats too (it holds no shares: the server vouches for it)
    olga = client(served, "olga")
    with olga.stream("POST", f"/v1/machines/{mine}/chat", json={"message": "what is your wear?"}) as r:
        assert r.status_code == 200
        assert [n for n, _ in events(r)][-1] == "answer"
    assert client(served, "rita").post(f"/v1/machines/{mine}/chat", json={"message": "hi"}).status_code == 403
    assert alice.post(f"/v1/machines/{mine}/chat", json={"message": ""}).status_code == 422


def test_telemetry_streams_live_from_the_hub(served: Served) -> None:
    mine = own_machine(served)
    seen: list[dict[str, Any]] = []
    with client(served, "alice").stream("GET", f"/v1/machines/{mine}/stream") as r:
        assert r.status_code == 200
        for _name, event in events(r):
            assert event["machine_id"] == mine
            if event["type"] == "telemetry":
                seen.append(event["data"])
            if len({t["at"] for t in seen}) >= 3:
                break
    assert len({t["at"] for t in seen}) >= 3, "telemetry did not change"
    assert all(t["machine_id"] == mine for t in seen)


def test_proposals_and_votes_by_role(served: Served) -> None:
    mine = own_machine(served)
    alice, olga, rita = client(served, "alice"), client(served, "olga"), client(served, "rita")
    body = {"kind": "pricing", "title": "Raise the floor", "price_floor": "2.5", "rationale": "the market pays more"}
    assert olga.post(f"/v1/machines/{mine}/proposals", json=body).status_code == 403  # operators do not propose
    assert rita.post(f"/v1/machines/{mine}/proposals", json=body).status_code == 403
    bad = alice.post(f"/v1/machines/{mine}/proposals", json={"kind": "maintenance"})
    assert bad.status_code == 400 and bad.json()["error"] == "InvalidProposal" and "budget" in bad.json()["detail"]
    opened = alice.post(f"/v1/machines/{mine}/proposals", json=body)
    assert opened.status_code == 201, opened.text
    p = opened.json()
    assert p["state"] == "open" and p["yes"] == 0 and p["payload"]["price_floor"] == 2_500_000
    assert olga.get(f"/v1/machines/{mine}/proposals").status_code == 200  # operators read them
    refused = olga.post(f"/v1/proposals/{p['id']}/votes", json={"choice": "yes"})
    assert refused.status_code == 403 and "stakeholder" in refused.json()["detail"]
    # bob signs his own ballot with his own key (the server never sees it)
    bob = login_as(served, "bob", "holder-bob")
    bob_key = served.city.keys.get("holder-bob")
    forged = sign_ballot(Identity.generate(), p["id"], "holder:bob", "no")
    r = bob.post(f"/v1/proposals/{p['id']}/votes", json={"choice": "no", "ballot": forged})
    assert r.status_code == 403
    ballot = sign_ballot(bob_key, p["id"], "holder:bob", "no")
    r = bob.post(f"/v1/proposals/{p['id']}/votes", json={"choice": "no", "ballot": ballot})
    assert r.status_code == 200, r.text
    assert r.json()["proposal"]["no"] == 30
    # alice lets the server sign with the key it keeps for her
    r = alice.post(f"/v1/proposals/{p['id']}/votes", json={"choice": "yes"})
    assert r.status_code == 200, r.text
    after = r.json()["proposal"]
    assert after["yes"] == 50 and after["no"] == 30
    assert alice.get(f"/v1/proposals/{p['id']}").json()["yes"] == 50
    assert client(served, "rita").get(f"/v1/proposals/{p['id']}").status_code == 403
    assert alice.get("/v1/proposals/no-such-proposal").status_code == 404
    # a proposal on a machine bob holds and alice does not: she can neither read nor vote on it
    alices = set(alice.get("/v1/me").json()["roles"])
    bobs = next(m for m, roles in bob.get("/v1/me").json()["roles"].items() if "stakeholder" in roles and m not in alices)
    theirs = bob.post(f"/v1/machines/{bobs}/proposals", json={"kind": "park", "title": "Park for the winter"})
    assert theirs.status_code == 201, theirs.text
    assert alice.get(f"/v1/proposals/{theirs.json()['id']}").status_code == 403
    refused = alice.post(f"/v1/proposals/{theirs.json()['id']}/votes", json={"choice": "no"})
    assert refused.status_code == 403 and refused.json()["detail"] == f"alice is not a stakeholder of {bobs}"
    assert bob.get(f"/v1/proposals/{theirs.json()['id']}").json()["no"] == 0


def test_a_requester_posts_a_job_to_the_market_and_follows_it_to_payment(served: Served) -> None:
    rita, alice = client(served, "rita"), client(served, "alice")
    job = {"kind": "printer_3d", "capability": "print", "region": "north", "deadline_h": 48, "reserve": 80_000_000,
           "material": "PLA", "size_mm": [60, 40, 30], "amount": 20, "description": "a bracket"}
    assert alice.post("/v1/jobs", json=job).status_code == 403  # no requester wallet
    too_dear = rita.post("/v1/jobs", json={**job, "reserve": 10**14})
    assert too_dear.status_code == 400 and "wallet" in too_dear.json()["detail"]
    no_material = rita.post("/v1/jobs", json={k: v for k, v in job.items() if k != "material"})
    assert no_material.status_code == 400 and "material" in no_material.json()["detail"]
    posted = rita.post("/v1/jobs", json=job)
    assert posted.status_code == 202, posted.text
    job_id = posted.json()["job_id"]
    assert alice.get(f"/v1/jobs/{job_id}").status_code == 403
    assert alice.get(f"/v1/jobs/{job_id}/stream").status_code == 403
    assert client(served, "admin").get(f"/v1/jobs/{job_id}").status_code == 200
    followed: list[str] = []
    with rita.stream("GET", f"/v1/jobs/{job_id}/stream", timeout=90) as r:  # follow it live to the end of the work
        assert r.status_code == 200
        for _name, event in events(r):
            assert event["job_id"] == job_id and event["type"] == "job"
            followed.append(event["data"]["kind"])
            if event["data"]["kind"] in ("done", "failed"):
                break
    assert followed[-1] == "done" and "progress" in followed, followed
    deadline = time.monotonic() + 90
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = rita.get(f"/v1/jobs/{job_id}").json()
        if status["state"] in ("paid", "refunded", "expired"):
            break
        time.sleep(0.3)
    assert status["state"] == "paid", (status["state"], status["reason"], status["steps"])
    assert status["machine_id"] and 0 < status["price"] <= job["reserve"]
    assert {s["kind"] for s in status["steps"]} >= {"started", "done"}
    assert [j["job_id"] for j in rita.get("/v1/jobs").json()] == [job_id]
    me = rita.get("/v1/me").json()
    assert me["requester_wallet"] == "requester:rita" and me["balance"] == 5_000_000_000 - status["price"]
    assert rita.get("/v1/jobs/api-nothing").status_code == 404


def test_admin_only_routes(served: Served) -> None:
    key = Identity.generate()
    for who in ("alice", "olga", "rita"):
        r = client(served, who).post("/v1/admin/principals", json={"name": "mallory", "did": key.did, "admin": True})
        assert r.status_code == 403 and r.json()["error"] == "Forbidden"
    r = client(served, "admin").post("/v1/admin/principals", json={"name": "owen", "did": key.did, "operator_of": ["nope"]})
    assert r.status_code == 404


def test_an_operator_of_one_machine_reads_it_and_no_other(served: Served) -> None:
    mine, other = own_machine(served), others(served)
    oscar = login_as(served, "oscar", "login-oscar", operator_of=[other])
    assert oscar.get(f"/v1/machines/{other}").json()["roles"] == ["operator"]
    assert oscar.get(f"/v1/machines/{mine}").status_code == 403
    assert oscar.get(f"/v1/machines/{other}/jobs").status_code == 200
