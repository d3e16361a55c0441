"""extract_bearer: exactly one Authorization: Bearer header, nothing else."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.errors import BadRequest, InvalidToken, MissingToken
from gateway.steps.extract import extract_bearer

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


@pytest.mark.parametrize("value", [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER {TOKEN}", f"Bearer   {TOKEN}",
                                   f"  Bearer {TOKEN}  "])
def test_bearer_token_is_extracted(value: str) -> None:
    assert extract_bearer(headers(("Authorization", value))) == TOKEN


def test_header_name_is_case_insensitive() -> None:
    assert extract_bearer(headers(("authorization", f"Bearer {TOKEN}"))) == TOKEN


def test_plain_mappings_work_too() -> None:
    assert extract_bearer({"authorization": f"Bearer {TOKEN}"}) == TOKEN
    with pytest.raises(MissingToken):
        extract_bearer({})


def test_rfc6750_b64token_characters_are_accepted() -> None:
    assert extract_bearer(headers(("Authorization", "Bearer abc-._~+/XYZ=="))) == "abc-._~+/XYZ=="


@pytest.mark.parametrize("pairs", [(), (("Authorization", ""),), (("Authorization", "   "),),
                                   (("X-Access-Token", TOKEN),), (("Cookie", f"access_token={TOKEN}"),)])
def test_no_authorization_header_is_a_missing_token(pairs: tuple[tuple[str, str], ...]) -> None:
    with pytest.raises(MissingToken):
        extract_bearer(headers(*pairs))


@pytest.mark.parametrize("value", ["Basic YWxpY2U6c2VjcmV0", "Digest username=alice", f"Token {TOKEN}",
                                   f"Bearer-ish {TOKEN}", TOKEN])
def test_other_schemes_are_a_missing_token(value: str) -> None:
    with pytest.raises(MissingToken) as info:
        extract_bearer(headers(("Authorization", value)))
    assert type(info.value) is MissingToken


@pytest.mark.parametrize("value", ["Bearer", "Bearer ", f"Bearer {TOKEN} extra", f"Bearer {TOKEN},{TOKEN}",
                                   f"Bearer {TOKEN}, Bearer {TOKEN}", 'Bearer "quoted"', "Bearer tok\u00e9n",
                                   "Bearer a=b", "Bearer =abc", f"Bearer {TOKEN}\tx"])
def test_malformed_bearer_value_is_an_invalid_token(value: str) -> None:
    with pytest.raises(InvalidToken):
        extract_bearer(headers(("Authorization", value)))


@pytest.mark.parametrize("second", [f"Bearer {TOKEN}", "Bearer other.token.here", "", "Basic YWxpY2U6c2VjcmV0"])
def test_more_than_one_authorization_header_is_a_bad_request(second: str) -> None:
    with pytest.raises(BadRequest) as info:
        extract_bearer(headers(("Authorization", f"Bearer {TOKEN}"), ("authorization", second)))
    assert info.value.status == 400


def test_malformed_description_never_echoes_the_value() -> None:
    with pytest.raises(InvalidToken) as info:
        extract_bearer(headers(("Authorization", f"Bearer {TOKEN} extra-secret-part")))
    assert TOKEN not in info.value.description and "extra-secret-part" not in info.value.description
