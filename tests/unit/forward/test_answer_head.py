"""check_answer_head(): the one decision on what a well-formed upstream answer head is (both clients)."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from gateway.forward.answer_head import MalformedAnswer, check_answer_head

CONTROLS = [chr(c) for c in [*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F]]   # every CTL but HTAB

WELL_FORMED = [
    (100, "Continue", []),
    (200, "OK", [("Content-Type", "text/plain"), ("X-A", "")]),
    (599, "Edge", []),
    (204, "", []),                                          # an empty reason (RFC 9112 4)
    (200, "O\tK", [("X-A", "a\tb c")]),                     # HTAB in a reason and inside a value
    (200, "Caf\u00e9", [("X-A", "caf\u00e9 \udce9")]),      # obs-text, decoded or surrogate-escaped
    (200, "OK", [("X-A", "\u0085\u2028")]),                 # characters >= U+0080 are bytes >= 0x80: obs-text
]


@pytest.mark.parametrize(("status", "reason", "headers"), WELL_FORMED)
def test_a_well_formed_head_passes(status: int, reason: str, headers: list[tuple[str, str]]) -> None:
    check_answer_head(status, reason, headers)


@pytest.mark.parametrize(("version", "ok"), [("1.1", True), ("1.0", True), ("2.0", False), ("0.9", False),
                                             ("1.2", False), ("", False)])
def test_only_http_1_answers_pass(version: str, ok: bool) -> None:
    if ok:
        check_answer_head(200, "OK", [], version)
    else:
        with pytest.raises(MalformedAnswer):
            check_answer_head(200, "OK", [], version)


@pytest.mark.parametrize("status", [-200, 0, 1, 20, 99, 600, 999, 1000, 2000])
def test_a_status_outside_100_to_599_is_malformed(status: int) -> None:
    with pytest.raises(MalformedAnswer):
        check_answer_head(status, "X", [])


@pytest.mark.parametrize("control", CONTROLS, ids=[f"0x{ord(c):02x}" for c in CONTROLS])
@pytest.mark.parametrize("where", ["reason", "name", "value", "second value"])
def test_a_control_character_anywhere_in_the_head_is_malformed(control: str, where: str) -> None:
    reason = f"O{control}K" if where == "reason" else "OK"
    headers = [(f"X-{control}" if where == "name" else "X-A", f"a{control}b" if where == "value" else "a"),
               ("Y", f"{control}" if where == "second value" else "b")]
    with pytest.raises(MalformedAnswer):
        check_answer_head(200, reason, headers)


def test_headers_may_be_any_iterable_of_pairs() -> None:
    check_answer_head(200, "OK", iter([("X-A", "a")]))   # a multidict's items(), a generator ...
    with pytest.raises(MalformedAnswer):
        check_answer_head(200, "OK", iter([("X-A", "a"), ("X-B", "\x01")]))


printable = st.text(st.characters(exclude_categories=("Cc",)) | st.just("\t") | st.characters(min_codepoint=0x80))


@given(printable, st.lists(st.tuples(printable, printable), max_size=5), st.sampled_from(CONTROLS), st.data())
def test_one_control_character_is_enough(reason: str, headers: list[tuple[str, str]], control: str,
                                         data: st.DataObject) -> None:
    check_answer_head(200, reason, headers)
    parts = [reason, *(part for pair in headers for part in pair)]
    index = data.draw(st.integers(0, len(parts) - 1))
    at = data.draw(st.integers(0, len(parts[index])))
    parts[index] = parts[index][:at] + control + parts[index][at:]
    broken = list(zip(parts[1::2], parts[2::2]))
    with pytest.raises(MalformedAnswer):
        check_answer_head(200, parts[0], broken)


@pytest.mark.parametrize(("coding", "ok"), [
    (None, True), ("chunked", True), ("Chunked", True), (" chunked ", True),
    ("gzip", False), ("gzip, chunked", False), ("chunked, chunked", False), ("chunked, gzip", False),
    ("identity", False), ("", False), ("chunkedx", False),
])
def test_only_one_chunked_coding_passes(coding: str | None, ok: bool) -> None:
    # Both clients undo chunked at most, and Transfer-Encoding is never relayed: any other coding would
    # reach the client as if the body were plain.
    if ok:
        check_answer_head(200, "OK", [], "1.1", coding)
    else:
        with pytest.raises(MalformedAnswer):
            check_answer_head(200, "OK", [], "1.1", coding)
