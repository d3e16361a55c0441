"""GET /auth/openapi.json: the document is valid OpenAPI 3.1 and lists every auth endpoint, and
schemathesis, driving the live gateway over a real socket with every check it has (`--checks all`),
finds every answer documented: no 5xx, every status, body and header as the document says, schema-valid
requests accepted and invalid ones refused, 405 with Allow for any method the document does not name.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jsonschema_rs
import pytest
import requests
import schemathesis
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings, strategies as st
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.engine import Status, events, from_schema

from gateway.auth.accounts.directory import InvalidAccount, StoreUsers, check_email
from gateway.auth.accounts.passwords import PasswordHasher
from gateway.auth.accounts.policy import PasswordPolicy, WeakPassword
from gateway.auth.accounts.resets import hash_reset_token, new_reset_token
from gateway.auth.openapi import OPENAPI_PATH, VERIFY_METHODS, openapi_document
from gateway.config.load import GatewayConfig, RateLimitsConfig
from gateway.errors import BadPath
from gateway.paths import normalise
from gateway.pipeline import GATEWAY, JWKS_PATH, Gateway
from tests.conftest import bearer
from tests.integration.auth import test_auth_routes as shared
from tests.integration.auth.test_auth_routes import CHEAP, PASSWORD, add_accounts, claims_of, until
from tests.integration.edge_kit import serve_gateway

if TYPE_CHECKING:
    from schemathesis.specs.openapi.schemas import OpenApiSchema

pytestmark = pytest.mark.integration

# The shared fixtures, by name: every live test runs on the embedded store and on a real Redis.
backend, store_url = shared.backend, shared.store_url

# Fuzzing-phase examples per operation and mode; the coverage phase adds its own cases (boundaries,
# undeclared methods, missing and malformed parts): about 1,000 requests a store, in under 10 s.
MAX_EXAMPLES = 30
SEED = 20240601
RATE_LIMITS = {name: "100000/min" for name in RateLimitsConfig.model_fields}

# operationId -> (method, path below the prefix, or absolute when it starts with /.well-known)
OPERATIONS = {
    "login": ("POST", "/login"), "refresh": ("POST", "/refresh"), "logout": ("POST", "/logout"),
    "logoutAll": ("POST", "/logout-all"), "signup": ("POST", "/signup"),
    "listSessions": ("GET", "/sessions"), "endSession": ("DELETE", "/sessions/{id}"),
    "forgotPassword": ("POST", "/forgot-password"), "resetPassword": ("POST", "/reset-password"),
    "changePassword": ("POST", "/change-password"),
    **{f"verify{m.capitalize()}": (m.upper(), "/verify") for m in VERIFY_METHODS},
    "jwks": ("GET", "/.well-known/jwks.json"), "openapi": ("GET", OPENAPI_PATH),
    "signInPage": ("GET", "/login"), "signupPage": ("GET", "/signup"),
    "forgotPasswordPage": ("GET", "/forgot-password"),
}
PAGE_FORMS = ("/login", "/signup", "/forgot-password")   # the paths whose urlencoded posts are a page's form
NEEDS_TOKEN = frozenset({"logout", "logoutAll", "changePassword", "listSessions", "endSession",
                         *(op for op in OPERATIONS if op.startswith("verify"))})


def expected_path(cfg: GatewayConfig, operation_id: str) -> str:
    path = OPERATIONS[operation_id][1]
    return path if path.startswith("/.well-known") else cfg.auth.prefix + path


@dataclass
class Live:
    """A gateway serving on a loopback socket, with alice (user), bob (admin), carol (disabled), dave."""

    url: str
    gw: Gateway
    cfg: GatewayConfig
    schema: OpenApiSchema
    mint: Callable[..., str]

    def fresh_bearer(self) -> dict[str, str]:
        """A valid access token of a subject of its own: logout and logout-all cannot spoil other cases."""
        return bearer(self.mint(sub=f"fuzz-{uuid.uuid4().hex[:12]}", roles=["user"]))


@pytest.fixture
async def make_live(make_config: Callable[..., GatewayConfig], echo_upstream: TestServer,
                    mint: Callable[..., str], store_url: str) -> AsyncIterator[Callable[..., Any]]:
    """make_live(**auth section) -> Live: the real app behind its front door (as `serve` runs it), cheap
    argon2, rate limits out of the way, mail to the log."""
    async with contextlib.AsyncExitStack() as stack:
        async def make(**auth: Any) -> Live:
            upstream = str(echo_upstream.make_url(""))
            cfg = await asyncio.to_thread(make_config, store={"url": store_url},
                                          upstreams={"accounts": {"url": upstream}, "orders": {"url": upstream}},
                                          auth={"rate_limits": RATE_LIMITS, "mail": {"backend": "log"}, **auth})
            served = await stack.enter_async_context(serve_gateway(cfg, lean=True))
            gw = served.app[GATEWAY]
            gw.hasher.close()
            gw.hasher = PasswordHasher(CHEAP)   # closed by gw.close()
            gw.users = StoreUsers(gw.store, gw.hasher)
            await add_accounts(gw)
            await gw.users.add("dave", PASSWORD, roles=["user"], email="dave@example.test")
            await until(lambda: gw.denylist.in_sync)
            schema = schemathesis.openapi.from_dict(openapi_document(cfg), config=schemathesis.Config())
            return Live(f"http://127.0.0.1:{served.port}", gw, cfg, schema, mint)

        yield make


@pytest.fixture
async def live(make_live: Callable[..., Any]) -> Live:
    return await make_live()


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


# --- the document --------------------------------------------------------------------------------

def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _resolve(document: dict[str, Any], ref: str) -> Any:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


async def test_document_is_valid_openapi_31_and_lists_every_endpoint(make_config: Callable[..., Any]) -> None:
    cfg = await asyncio.to_thread(make_config)
    document = openapi_document(cfg)
    assert document["openapi"].startswith("3.1.")
    schemathesis.openapi.from_dict(document, config=schemathesis.Config()).validate()   # the 3.1 meta-schema
    for schema in document["components"]["schemas"].values():
        jsonschema_rs.meta.validate(schema)   # each is a valid JSON Schema (2020-12, OpenAPI 3.1's dialect)
    for ref in set(_refs(document)):
        assert ref.startswith("#/components/") and _resolve(document, ref) is not None, ref
    assert all(s["url"].startswith("/") for s in document.get("servers", [])), "servers must be relative"
    found = {op["operationId"]: (method.upper(), path) for path, item in document["paths"].items()
             for method, op in item.items()}
    assert found == {op: (OPERATIONS[op][0], expected_path(cfg, op)) for op in OPERATIONS}


async def test_every_error_answer_is_the_shared_error_shape(make_config: Callable[..., Any]) -> None:
    document = openapi_document(await asyncio.to_thread(make_config))
    for path, item in document["paths"].items():
        for method, op in item.items():
            for status, answer in op["responses"].items():
                if int(status) < 400:
                    continue
                schema = answer["content"]["application/json"]["schema"]
                assert "#/components/schemas/Error" in set(_refs(schema)), (method, path, status)
                assert "Cache-Control" in answer["headers"]
                assert ("WWW-Authenticate" in answer["headers"]) == (status in ("401", "403")), (path, status)
                assert ("Retry-After" in answer["headers"]) == (status == "429"), (path, status)


async def test_document_follows_the_config(make_config: Callable[..., Any]) -> None:
    cfg = await asyncio.to_thread(make_config, auth={"prefix": "/id/v1", "signup": False, "access_cookie": True,
                                                     "refresh_token_in_body": False,
                                                     "refresh_cookie": {"name": "rt", "path": "/id"}})
    document = openapi_document(cfg)
    schemathesis.openapi.from_dict(document, config=schemathesis.Config()).validate()
    assert "/id/v1/signup" not in document["paths"] and "/id/v1/login" in document["paths"]
    assert document["components"]["securitySchemes"]["refreshCookie"] == {"type": "apiKey", "in": "cookie",
                                                                          "name": "rt"}
    assert {"accessCookie": [], "csrfHeader": []} in document["paths"]["/id/v1/logout"]["post"]["security"]
    assert "403" in document["paths"]["/id/v1/logout"]["post"]["responses"]   # CSRF refusals
    assert "refresh_token" not in document["components"]["schemas"]["TokenResponse"]["properties"]


@pytest.mark.parametrize("nonce", [False, True])
async def test_document_states_the_dpop_refusals_and_nonces(make_config: Callable[..., Any], nonce: bool) -> None:
    document = openapi_document(await asyncio.to_thread(make_config, tokens={"dpop": {"nonce": nonce}}))
    schemathesis.openapi.from_dict(document, config=schemathesis.Config()).validate()
    prefix = "/auth"

    def codes(answer: dict[str, Any]) -> set[str]:
        return set(answer["content"]["application/json"]["schema"]["allOf"][1]["properties"]["code"]["enum"])

    expected = {"invalid_dpop_proof", *(["use_dpop_nonce"] if nonce else [])}
    for endpoint in ("login", "refresh"):   # the token endpoints refuse a proof with 400 (RFC 9449 5, 8)
        refused = document["paths"][f"{prefix}/{endpoint}"]["post"]["responses"]["400"]
        assert codes(refused) & {"invalid_dpop_proof", "use_dpop_nonce"} == expected, endpoint
        assert ("DPoP-Nonce" in refused["headers"]) == nonce, endpoint
        renewed = document["paths"][f"{prefix}/{endpoint}"]["post"]["responses"]["200"]
        assert ("DPoP-Nonce" in renewed["headers"]) == nonce, endpoint
    for path, method in ((f"{prefix}/sessions", "get"), (f"{prefix}/logout", "post"), (f"{prefix}/verify", "get")):
        operation = document["paths"][path][method]
        assert {"dpopAuth": [], "dpopProof": []} in operation["security"], path
        refused = operation["responses"]["401"]   # a resource refuses a proof with 401 (RFC 9449 7.1, 9)
        assert codes(refused) & {"invalid_dpop_proof", "use_dpop_nonce"} == expected, path
        assert ("DPoP-Nonce" in refused["headers"]) == nonce, path
    schemes = document["components"]["securitySchemes"]
    assert schemes["dpopAuth"]["scheme"] == "dpop" and schemes["dpopProof"] == {
        "type": "apiKey", "in": "header", "name": "DPoP", "description": schemes["dpopProof"]["description"]}


async def test_accounts_kept_by_a_credentials_service_have_no_account_endpoints(
        make_config: Callable[..., Any]) -> None:
    cfg = await asyncio.to_thread(make_config, auth={"users": {"credentials_url": "http://127.0.0.1:9/check"}})
    paths = openapi_document(cfg)["paths"]
    assert "/auth/login" in paths
    assert not {"/auth/signup", "/auth/forgot-password", "/auth/reset-password", "/auth/change-password"} & set(paths)


def email_schema(document: dict[str, Any]) -> dict[str, Any]:
    return document["components"]["schemas"]["ForgotPasswordRequest"]["properties"]["email"]


def is_accepted_email(address: str) -> bool:
    try:
        check_email(address)
    except InvalidAccount:
        return False
    return True


async def test_email_schema_takes_exactly_the_addresses_the_gateway_takes(make_config: Callable[..., Any]) -> None:
    validator = jsonschema_rs.validator_for(email_schema(openapi_document(await asyncio.to_thread(make_config))))
    # Each character of the BMP, and a sample above it, in the local part, the domain and the middle.
    for code in [*range(0xD800), *range(0xE000, 0x10000), *range(0x10000, 0x110000, 97)]:
        for address in (f"{chr(code)}@x", f"x@{chr(code)}", f"a{chr(code)}b@x.test"):
            assert validator.is_valid(address) == is_accepted_email(address), ascii(address)
    for address in ("a@b", "a@b@c", "@a@b", "@a", "a@", "a@@", "@", "", "a b@c", "a@b\n", "x" * 250 + "@abcd"):
        assert validator.is_valid(address) == is_accepted_email(address), address


def forwarded_uri_pattern(document: dict[str, Any]) -> str:
    verify = document["paths"]["/auth/verify"]["get"]
    return next(p["schema"]["pattern"] for p in verify["parameters"] if p["name"] == "X-Forwarded-Uri")


async def test_every_forwarded_uri_the_pattern_takes_is_a_path_the_gateway_takes(
        make_config: Callable[..., Any]) -> None:
    pattern = re.compile(forwarded_uri_pattern(openapi_document(await asyncio.to_thread(make_config))))

    @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.from_regex(pattern, fullmatch=True).filter(lambda uri: "\n" not in uri))
    def judged_path_is_normalised(uri: str) -> None:
        normalise((uri or "/").partition("?")[0].partition("#")[0])   # BadPath fails the test

    judged_path_is_normalised()
    for refused in ("api", "/a\\b", "/a;b", "/%2F", "/..", "/a/../..", "/%00", "/%zz", "/%252e"):
        assert not pattern.fullmatch(refused), refused
        with pytest.raises(BadPath):
            normalise(refused)


async def test_document_is_served_cacheable(live: Live, http: requests.Session) -> None:
    resp = await asyncio.to_thread(http.get, f"{live.url}{live.cfg.auth.prefix}/openapi.json", timeout=10)
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("application/json")
    assert resp.headers["Cache-Control"] == "public, max-age=300"
    assert resp.json() == json.loads(json.dumps(openapi_document(live.cfg)))
    other = await asyncio.to_thread(http.post, f"{live.url}{live.cfg.auth.prefix}/openapi.json", timeout=10)
    assert other.status_code == 405 and other.headers["Allow"] == "GET, HEAD"


async def test_without_signup_the_document_has_no_signup(make_live: Callable[..., Any],
                                                         http: requests.Session) -> None:
    live = await make_live(signup=False)
    served = await asyncio.to_thread(http.get, f"{live.url}/auth/openapi.json", timeout=10)
    assert "/auth/signup" not in served.json()["paths"] and "/auth/forgot-password" in served.json()["paths"]
    body = {"username": "zed", "password": "a fine passphrase"}
    assert (await asyncio.to_thread(http.post, f"{live.url}/auth/signup", json=body, timeout=10)).status_code == 404
    trace = await asyncio.to_thread(http.request, "TRACE", f"{live.url}/auth/signup", timeout=10)
    assert trace.status_code == 405 and trace.json()["code"] == "method_refused"   # as on a path nothing serves


# --- schemathesis against the live gateway -------------------------------------------------------

def every_check() -> list[schemathesis.CheckFunction]:
    """What `st run --checks all` runs: every check schemathesis has registered."""
    load_all_checks()
    return [check for check in CHECKS.get_all() if callable(check) and not isinstance(check, type)]


def run_schemathesis(live: Live) -> list[str]:
    """`st run --checks all` against the live gateway, in-process: the coverage phase (boundaries, every
    undeclared method, missing and malformed parts) and MAX_EXAMPLES positive and negative fuzzing
    cases an operation, seeded. Half the requests carry a fresh valid access token (a subject of their
    own: logout and logout-all spoil no other case). Returns one line a failing check, and any error."""
    prefix = live.cfg.auth.prefix
    config = schemathesis.Config.from_dict({
        "seed": SEED, "base-url": live.url, "workers": 1, "request-timeout": 10,
        "checks": {"enabled": True},
        "generation": {"max-examples": MAX_EXAMPLES, "mode": "all"},
        "operations": [
            # OpenAPI 3.1 has no name for QUERY (3.2's `query`), and verify judges it like any method, so
            # no document can say it; every other undeclared method is tried (TRACE gets 405).
            {"include-path": f"{prefix}/verify", "phases": {"coverage": {"unexpected-methods": ["trace"]}}},
            # A schema says which requests are well formed, not which credentials exist (schemathesis lets
            # a token endpoint answer 400 for that reason): a reset token nobody issued is 400
            # invalid_reset_token, as documented. Nor can it state the password policy's rules on a new
            # password (not a common one, not the username or e-mail): a well-formed signup may get 400
            # weak_password. Nor can it hold a page's CSRF token and its cookie: a generated form post to
            # a page's path gets the page's 400. Nor a signature: a generated DPoP proof at login or refresh
            # is 400 invalid_dpop_proof. `only_refusals_no_schema_can_state` holds these 400s to exactly that.
            *({"include-path": f"{prefix}{path}", "checks": {"positive_data_acceptance": {
                "expected-statuses": ["2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"]}}}
              for path in ("/reset-password", "/signup", "/login", "/forgot-password", "/refresh")),
        ],
    })
    schema = schemathesis.openapi.from_dict(openapi_document(live.cfg), config=config)
    coin = random.Random(SEED)

    @schema.auth(refresh_interval=None)
    class HalfAuthorized:
        def get(self, case: schemathesis.Case, ctx: Any) -> str:
            return live.mint(sub=f"fuzz-{uuid.uuid4().hex[:12]}", roles=["user"])

        def set(self, case: schemathesis.Case, token: str, ctx: Any) -> None:
            if coin.random() < 0.5:
                case.headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}

    found: list[str] = []
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            for case_id, nodes in event.recorder.checks.items():
                found += [f"{node.name}: {describe(event.recorder.cases[case_id].value)}"
                          for node in nodes if node.status is Status.FAILURE]
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            found.append(f"error: {event.info.title} {event.info.message}")
    return found


@dataclass
class StateRefusals:
    """The running gateway's password policy, and the 400s that well-formed requests got, by the code
    the gateway gave (what the check below saw)."""

    policy: PasswordPolicy
    seen: dict[str, int]


STATE_REFUSALS = StateRefusals(PasswordPolicy(), {})


@schemathesis.check
def only_refusals_no_schema_can_state(ctx: Any, response: Any, case: schemathesis.Case) -> None:
    """A well-formed request (positive mode) answered 400 must be one of the refusals the document
    cannot state as a schema: reset-password's invalid_reset_token (no generated token was ever issued),
    login's and refresh's invalid_dpop_proof for a generated DPoP header (no generated proof is signed),
    signup's weak_password for a password the gateway's policy does refuse for that account, and a
    page's form post (sign-in, signup, forgot-password) answered with the page when the form's CSRF token
    does not match its cookie."""
    if case.meta is None or not case.meta.generation.mode.is_positive or response.status_code != 400:
        return
    if case.path.endswith(PAGE_FORMS) and response.text.lstrip().lower().startswith("<!doctype html"):
        # A page's form post: no generated form carries the page's CSRF token and its cookie.
        assert case.media_type == "application/x-www-form-urlencoded", case.media_type
        assert "form expired" in response.text, "a generated form post was refused for another reason"
        STATE_REFUSALS.seen["form_expired"] = STATE_REFUSALS.seen.get("form_expired", 0) + 1
        return
    code = response.json().get("code")
    if code == "invalid_dpop_proof" and "dpop" in {name.lower() for name in case.headers or {}}:
        # A generated DPoP proof is never signed by the key in its own header: no schema states a signature.
        STATE_REFUSALS.seen[code] = STATE_REFUSALS.seen.get(code, 0) + 1
        return
    if case.path.endswith("/reset-password"):
        assert code == "invalid_reset_token", f"a well-formed reset was refused with {code}"
    elif case.path.endswith("/signup"):
        assert code == "weak_password", f"a well-formed signup was refused with {code}"
        body = case.body
        with pytest.raises(WeakPassword):
            STATE_REFUSALS.policy.check(body["password"], username=body["username"], email=body.get("email"))
    else:
        raise AssertionError(f"a well-formed request to {case.path} was refused with {code}")
    STATE_REFUSALS.seen[code] = STATE_REFUSALS.seen.get(code, 0) + 1


def describe(case: schemathesis.Case) -> str:
    headers = {name: "Bearer ..." if name.lower() == "authorization" else value
               for name, value in (case.headers or {}).items()}   # no token in a test report either
    return f"{case.method} {case.formatted_path} {headers} {case.body!r:.200}"


async def test_live_gateway_answers_only_what_the_document_says(live: Live) -> None:
    # requests blocks: the run goes in a worker thread while this loop serves the gateway.
    STATE_REFUSALS.policy, STATE_REFUSALS.seen = PasswordPolicy.from_config(live.cfg.auth.password), {}
    assert await asyncio.to_thread(run_schemathesis, live) == []
    # The check ran (the run is seeded: its reset tokens were refused, and its page form posts, which
    # carry no page's token; its signups' passwords may all pass).
    assert STATE_REFUSALS.seen.get("invalid_reset_token", 0) > 0, STATE_REFUSALS.seen
    assert STATE_REFUSALS.seen.get("form_expired", 0) > 0, STATE_REFUSALS.seen


# --- well-formed requests: the 2xx answers ------------------------------------------------------

def call(live: Live, http: requests.Session, operation_id: str, *, status: int,
         **case_kw: Any) -> schemathesis.Response:
    """One hand-written request, checked against the document like the generated ones."""
    case = live.schema.find_operation_by_id(operation_id).Case(**case_kw)
    response = case.call(base_url=live.url, session=http, timeout=10)
    case.validate_response(response, checks=every_check(), headers=case_kw.get("headers"))
    assert response.status_code == status, response.text
    return response


def walk_session_paths(live: Live, http: requests.Session) -> None:
    login = {"body": {"username": "alice", "password": PASSWORD}, "media_type": "application/json"}
    pair = call(live, http, "login", status=200, **login).json()
    fresh = call(live, http, "refresh", status=200, body={"refresh_token": pair["refresh_token"]},
                 media_type="application/json").json()
    call(live, http, "refresh", status=401, body={"refresh_token": pair["refresh_token"]},
         media_type="application/json")   # reused: the family is dead
    assert call(live, http, "refresh", status=401).json()["code"] == "missing_refresh_token"   # none at all
    verify = {"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/api/orders"}
    answer = call(live, http, "verifyGet", status=200, headers={**bearer(fresh["access_token"]), **verify})
    assert answer.headers["x-user-id"] == ["alice"]
    call(live, http, "verifyPost", status=403, headers={**bearer(fresh["access_token"]),
                                                        "X-Forwarded-Method": "POST", "X-Original-URI": "/api/orders"})
    call(live, http, "verifyGet", status=200, headers={"X-Forwarded-Uri": "/api/public/x"})
    mine, other = (call(live, http, "login", status=200, **login).json() for _ in range(2))
    listed = call(live, http, "listSessions", status=200, headers=bearer(mine["access_token"])).json()["sessions"]
    assert [s["current"] for s in listed] == [True, False]   # fresh's session died of the reuse above
    for status in (204, 404):   # the second time: ended already
        call(live, http, "endSession", status=status, headers=bearer(mine["access_token"]),
             path_parameters={"id": claims_of(other["access_token"])["sid"]})
    call(live, http, "logout", status=204, headers=bearer(fresh["access_token"]))
    call(live, http, "logoutAll", status=204, headers=bearer(call(live, http, "login", status=200,
                                                                  **login).json()["access_token"]))
    call(live, http, "jwks", status=200)
    call(live, http, "openapi", status=200)


def walk_account_paths(live: Live, http: requests.Session, reset_token: str) -> None:
    as_json = {"media_type": "application/json"}
    erin = {"username": "erin", "password": "a long enough passphrase 42", "email": "erin@example.test"}
    assert call(live, http, "signup", status=201, body=erin, **as_json).json() == {"username": "erin",
                                                                                     "roles": ["user"]}
    assert call(live, http, "signup", status=409, body=erin, **as_json).json()["code"] == "username_taken"
    weak = call(live, http, "signup", status=400, body={"username": "frank", "password": "password"}, **as_json)
    assert weak.json()["code"] == "weak_password"
    for email in ("dave@example.test", "nobody@example.test"):
        call(live, http, "forgotPassword", status=202, body={"email": email}, **as_json)
    call(live, http, "resetPassword", status=400, body={"token": "not-a-reset-token", "new_password": "x" * 20},
         **as_json)
    call(live, http, "resetPassword", status=204, body={"token": reset_token, "new_password": "bob's new passphrase"},
         **as_json)
    dave = call(live, http, "login", status=200, body={"username": "dave", "password": PASSWORD}, **as_json).json()
    call(live, http, "changePassword", status=401, headers=bearer(dave["access_token"]),
         body={"current_password": "not the password", "new_password": "another long passphrase 43"}, **as_json)
    call(live, http, "changePassword", status=200, headers=bearer(dave["access_token"]),
         body={"current_password": PASSWORD, "new_password": "another long passphrase 43"}, **as_json)


def page_form_token(page: schemathesis.Response) -> dict[str, str]:
    """The page's CSRF token, as its form's field and as the Cookie header its cookie would be (the cookie
    is Secure: requests keeps it from this http:// gateway)."""
    token = page.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    return {"csrf_token": token, "Cookie": f"tokengate_form={token}"}


def walk_page_forms(live: Live, http: requests.Session) -> None:
    form = {"media_type": "application/x-www-form-urlencoded"}
    page = page_form_token(call(live, http, "signupPage", status=200, query={"rd": "/after"}))
    grace = {"username": "grace", "password": "a long enough passphrase 44", "rd": "/after",
             "csrf_token": page["csrf_token"]}
    created = call(live, http, "signup", status=302, body=grace, headers={"Cookie": page["Cookie"]}, **form)
    assert created.headers["location"] == [f"{live.cfg.auth.prefix}/login?created=1&rd=%2Fafter"]
    taken = call(live, http, "signup", status=409, body=grace, headers={"Cookie": page["Cookie"]}, **form)
    assert "This username is taken" in taken.text
    call(live, http, "signup", status=400, body={**grace, "username": "heidi", "password": "password"},
         headers={"Cookie": page["Cookie"]}, **form)
    page = page_form_token(call(live, http, "forgotPasswordPage", status=200))
    for email in ("dave@example.test", "nobody@example.test"):
        sent = call(live, http, "forgotPassword", status=200, body={"email": email, "csrf_token": page["csrf_token"]},
                    headers={"Cookie": page["Cookie"]}, **form)
        assert "a link to reset the password is on its way" in sent.text


async def test_well_formed_requests_get_their_documented_answers(live: Live, http: requests.Session) -> None:
    reset_token = new_reset_token()   # as if bob had asked for a reset link
    await live.gw.store.put_reset("bob", hash_reset_token(reset_token), time.time() + 600)
    await asyncio.to_thread(walk_session_paths, live, http)
    await asyncio.to_thread(walk_account_paths, live, http, reset_token)
    await asyncio.to_thread(walk_page_forms, live, http)


# Valid JSON ("\\ud800" escapes) that is no UTF-8 text; hypothesis never generates lone surrogates.
# Such a password once reached argon2, which cannot encode it: a 500. Now it is a 400.
@pytest.mark.parametrize("operation_id, body", [
    ("login", {"username": "alice", "password": "\ud800"}),
    ("login", {"username": "nobody", "password": "\udfff"}),
    ("signup", {"username": "zed", "password": "\ud800" * 10}),
    ("changePassword", {"current_password": "\ud800", "new_password": "a fine passphrase"}),
])
async def test_lone_surrogates_get_a_documented_answer(live: Live, http: requests.Session, operation_id: str,
                                                       body: dict[str, str]) -> None:
    headers = live.fresh_bearer() if operation_id in NEEDS_TOKEN else None
    await asyncio.to_thread(call, live, http, operation_id, status=400, body=body, media_type="application/json",
                            headers=headers)


# --- methods: one answer for TRACE and CONNECT everywhere ---------------------------------------

OWN_PATHS = ("/login", "/refresh", "/logout", "/logout-all", "/verify", "/signup", "/forgot-password",
             "/reset-password", "/change-password", "/sessions", "/sessions/some-id", OPENAPI_PATH)


@pytest.mark.parametrize("method", ["TRACE", "CONNECT"])
async def test_trace_and_connect_get_method_refused_on_every_endpoint_as_on_proxied_paths(
        live: Live, http: requests.Session, method: str) -> None:
    for path in (*(live.cfg.auth.prefix + path for path in OWN_PATHS), JWKS_PATH, "/api/public/x"):
        resp = await asyncio.to_thread(http.request, method, live.url + path, timeout=10)
        assert (resp.status_code, resp.json()["code"]) == (405, "method_refused"), path
        assert resp.headers["Allow"], path


async def test_other_undocumented_methods_get_method_not_allowed_with_allow(live: Live,
                                                                            http: requests.Session) -> None:
    for path, allow in (("/login", "GET, POST"), ("/signup", "GET, POST"), ("/forgot-password", "GET, POST"),
                        ("/change-password", "POST"), (OPENAPI_PATH, "GET, HEAD")):
        resp = await asyncio.to_thread(http.request, "PUT", f"{live.url}{live.cfg.auth.prefix}{path}", timeout=10)
        assert (resp.status_code, resp.json()["code"], resp.headers["Allow"]) == (405, "method_not_allowed", allow)


@pytest.mark.parametrize("method", ["QUERY", "PROPFIND"])
async def test_verify_judges_methods_openapi_has_no_name_for(live: Live, http: requests.Session,
                                                             method: str) -> None:
    # nginx's auth_request subrequest keeps the original request's method, whatever it is.
    resp = await asyncio.to_thread(http.request, method, f"{live.url}{live.cfg.auth.prefix}/verify",
                                   headers={"X-Forwarded-Uri": "/api/public/x"}, timeout=10)
    assert resp.status_code == 200
    denied = await asyncio.to_thread(http.request, method, f"{live.url}{live.cfg.auth.prefix}/verify",
                                     headers={"X-Forwarded-Uri": "/api/accounts/7/profile"}, timeout=10)
    assert (denied.status_code, denied.json()["code"]) == (401, "missing_token")
