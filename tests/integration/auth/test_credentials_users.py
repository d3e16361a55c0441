"""CredentialsUsers against a real aiohttp credentials service on loopback: yes, no, and every outage."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import unused_port

from gateway.auth.accounts.directory import AuthenticatedUser, CredentialsUsers, NotEditable
from gateway.errors import DependencyDown

pytestmark = pytest.mark.integration

RECEIVED = web.AppKey("received", list)
MALFORMED = {
    "not-json": b"<html>ok</html>",
    "a-list": b'["alice"]',
    "no-sub": b'{"roles": ["admin"]}',
    "empty-sub": b'{"sub": ""}',
    "number-sub": b'{"sub": 42}',
    "roles-string": b'{"sub": "alice", "roles": "admin"}',
    "roles-numbers": b'{"sub": "alice", "roles": [1, 2]}',
    "email-number": b'{"sub": "alice", "email": 7}',
    "huge": b'{"sub": "alice", "pad": "' + b"x" * 70_000 + b'"}',
}


async def login(request: web.Request) -> web.Response:
    body = await request.json()
    request.app[RECEIVED].append(body)
    if body == {"username": "alice", "password": "alice-pw"}:
        return web.json_response({"sub": "user-1", "roles": ["admin", "user"], "email": "alice@example.test"})
    if body["username"] == "bare":
        return web.json_response({"sub": "user-2"})
    return web.json_response({"error": "no"}, status=401)


async def status(request: web.Request) -> web.Response:
    return web.json_response({"sub": "alice"}, status=int(request.match_info["code"]))


async def malformed(request: web.Request) -> web.Response:
    return web.Response(body=MALFORMED[request.match_info["name"]], content_type="application/json")


async def chunked(request: web.Request) -> web.StreamResponse:
    body = json.dumps({"sub": "alice", "pad": "x" * 30_000}).encode()
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    for start in range(0, len(body), 7_000):
        await resp.write(body[start:start + 7_000])
        await asyncio.sleep(0.01)
    await resp.write_eof()
    return resp


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(2)
    return web.json_response({"sub": "alice"})


async def redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound("/login")


@pytest.fixture
async def service(aiohttp_server):
    app = web.Application()
    app[RECEIVED] = []
    app.router.add_post("/login", login)
    app.router.add_post("/status/{code}", status)
    app.router.add_post("/malformed/{name}", malformed)
    app.router.add_post("/slow", slow)
    app.router.add_post("/chunked", chunked)
    app.router.add_post("/redirect", redirect)
    return await aiohttp_server(app)


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


async def test_a_200_with_sub_is_a_yes_and_the_service_gets_json_credentials(service, session):
    users = CredentialsUsers(str(service.make_url("/login")), session)
    assert await users.authenticate("alice", "alice-pw") == AuthenticatedUser(
        "user-1", ("admin", "user"), "alice@example.test")
    assert service.app[RECEIVED] == [{"username": "alice", "password": "alice-pw"}]


async def test_roles_and_email_are_optional(service, session):
    users = CredentialsUsers(str(service.make_url("/login")), session)
    assert await users.authenticate("bare", "x") == AuthenticatedUser("user-2", (), None)


async def test_an_answer_that_arrives_in_pieces_is_read_whole(service, session):
    users = CredentialsUsers(str(service.make_url("/chunked")), session)
    assert await users.authenticate("alice", "alice-pw") == AuthenticatedUser("alice", (), None)


async def test_wrong_password_is_a_no(service, session):
    users = CredentialsUsers(str(service.make_url("/login")), session)
    assert await users.authenticate("alice", "wrong") is None


@pytest.mark.parametrize("code", [401, 403, 404])
async def test_refusal_statuses_are_a_no(service, session, code):
    assert await CredentialsUsers(str(service.make_url(f"/status/{code}")), session).authenticate("a", "b") is None


@pytest.mark.parametrize("code", [500, 502, 503, 400, 201, 204, 429])
async def test_any_other_status_is_dependency_down(service, session, code):
    with pytest.raises(DependencyDown):
        await CredentialsUsers(str(service.make_url(f"/status/{code}")), session).authenticate("a", "b")


async def test_a_redirect_is_not_followed_and_is_dependency_down(service, session):
    with pytest.raises(DependencyDown):
        await CredentialsUsers(str(service.make_url("/redirect")), session).authenticate("alice", "alice-pw")


@pytest.mark.parametrize("name", sorted(MALFORMED))
async def test_a_malformed_200_is_dependency_down_never_a_yes(service, session, name):
    with pytest.raises(DependencyDown):
        await CredentialsUsers(str(service.make_url(f"/malformed/{name}")), session).authenticate("a", "b")


async def test_an_unreachable_service_is_dependency_down(session):
    users = CredentialsUsers(f"http://127.0.0.1:{unused_port()}/login", session)
    with pytest.raises(DependencyDown) as caught:
        await users.authenticate("alice", "alice-pw")
    assert caught.value.status == 503


async def test_a_slow_service_times_out_as_dependency_down(service, session):
    users = CredentialsUsers(str(service.make_url("/slow")), session, timeout_s=0.2)
    with pytest.raises(DependencyDown):
        await users.authenticate("alice", "alice-pw")


async def test_without_a_session_it_opens_and_closes_its_own(service):
    users = CredentialsUsers(str(service.make_url("/login")))
    try:
        assert await users.authenticate("alice", "alice-pw") is not None
    finally:
        await users.close()


async def test_accounts_cannot_be_edited_here(session):
    users = CredentialsUsers("http://127.0.0.1:1/login", session)
    assert not users.editable
    for edit in (users.add("a", "pw"), users.list(), users.set_disabled("a", True), users.delete("a"),
                 users.set_password("a", "pw"), users.get("a")):
        with pytest.raises(NotEditable, match="credentials"):
            await edit

