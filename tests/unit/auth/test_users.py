"""UserDirectory backends: FileUsers (YAML file, reload, atomic edits) and StoreUsers (memory store)."""

from __future__ import annotations

import stat
from pathlib import Path

import argon2
import pytest
import yaml

from gateway.auth.accounts.directory import (AuthenticatedUser, CredentialsUsers, FileUsers, InvalidAccount, StoreUsers,
                                             UsersFileError, build_directory, check_email)
from gateway.auth.accounts.passwords import PasswordHasher
from gateway.errors import DependencyDown
from gateway.store import MemoryStore
from gateway.store.base import StoreUnavailable
from tests.conftest import CHEAP_ARGON2 as CHEAP


@pytest.fixture
def hasher():
    h = PasswordHasher(CHEAP)
    yield h
    h.close()


@pytest.fixture
def dummy_calls(hasher, monkeypatch):
    """Counts verify_dummy calls (the unknown-user path)."""
    calls = []
    real = hasher.verify_dummy

    async def spy(password):
        calls.append(1)
        return await real(password)

    monkeypatch.setattr(hasher, "verify_dummy", spy)
    return calls


def entry(hasher, username, password, **fields):
    return {"username": username, "password_hash": hasher.hash_sync(password), "roles": ["user"],
            "disabled": False, **fields}


@pytest.fixture
def users_file(tmp_path, hasher) -> Path:
    path = tmp_path / "users.yaml"
    path.write_text(yaml.safe_dump([
        entry(hasher, "alice", "alice-pw", roles=["admin", "user"], email="alice@example.test"),
        entry(hasher, "bob", "bob-pw"),
        entry(hasher, "carol", "carol-pw", disabled=True),
    ]))
    path.chmod(0o600)
    return path


def read_entries(path: Path) -> dict[str, dict]:
    return {e["username"]: e for e in yaml.safe_load(path.read_text())}


# -- authenticate -------------------------------------------------------------------------------

async def test_file_account_with_right_password_authenticates(users_file, hasher):
    users = FileUsers(users_file, hasher)
    assert await users.authenticate("alice", "alice-pw") == AuthenticatedUser(
        "alice", ("admin", "user"), "alice@example.test")
    assert await users.authenticate("bob", "bob-pw") == AuthenticatedUser("bob", ("user",), None)


async def test_wrong_password_unknown_user_and_disabled_account_get_the_same_none(users_file, hasher,
                                                                                  dummy_calls):
    users = FileUsers(users_file, hasher)
    assert await users.authenticate("alice", "wrong") is None
    assert await users.authenticate("carol", "carol-pw") is None
    assert dummy_calls == []
    assert await users.authenticate("mallory", "alice-pw") is None
    assert await users.authenticate("../etc/passwd", "x") is None
    assert dummy_calls == [1, 1]


async def test_usernames_are_case_sensitive(users_file, hasher):
    assert await FileUsers(users_file, hasher).authenticate("Alice", "alice-pw") is None


async def test_non_string_credentials_are_refused(users_file, hasher):
    users = FileUsers(users_file, hasher)
    assert await users.authenticate(None, "x") is None   # type: ignore[arg-type]
    assert await users.authenticate("alice", 123) is None   # type: ignore[arg-type]


# -- loading and reloading ----------------------------------------------------------------------

async def test_missing_file_is_refused_unless_missing_ok(tmp_path, hasher):
    with pytest.raises(UsersFileError, match="does not exist"):
        FileUsers(tmp_path / "nope.yaml", hasher)
    assert await FileUsers(tmp_path / "nope.yaml", hasher, missing_ok=True).list() == []


async def test_empty_file_has_no_accounts(tmp_path, hasher):
    (tmp_path / "u.yaml").write_text("")
    assert await FileUsers(tmp_path / "u.yaml", hasher).list() == []


@pytest.mark.parametrize("content", [
    "{alice: x}",                                   # not a list
    "- [unclosed",                                  # not YAML
    "- username: alice\n  password_hash: $2b$12$abcdefghijklmnopqrstuuvwxyz0123456789ABCDEFGHIJKLMNO\n",
    "- username: alice\n  password_hash: plain-text\n",
    "- username: alice\n  password_hash: HASH\n  colour: red\n",
    "- username: alice\n  password_hash: HASH\n- username: alice\n  password_hash: HASH\n",
    "- username: 'bad name'\n  password_hash: HASH\n",
    "- username: alice\n  password_hash: HASH\n  roles: admin\n",
    "- username: alice\n  password_hash: HASH\n  roles: ['a,b']\n",
    "- username: alice\n  password_hash: HASH\n  disabled: 'no'\n",
    "- just a string\n",
])
def test_invalid_file_is_refused_with_a_message_that_shows_no_hash(tmp_path, hasher, content):
    password_hash = hasher.hash_sync("pw")
    path = tmp_path / "users.yaml"
    path.write_text(content.replace("HASH", f"'{password_hash}'"))
    with pytest.raises(UsersFileError) as caught:
        FileUsers(path, hasher)
    assert str(path) in str(caught.value)
    assert password_hash not in str(caught.value) and "$2b$" not in str(caught.value)


def test_argon2i_hashes_are_refused(tmp_path, hasher):
    argon2i = argon2.PasswordHasher(type=argon2.Type.I, time_cost=1, memory_cost=8, parallelism=1).hash("pw")
    path = tmp_path / "users.yaml"
    path.write_text(yaml.safe_dump([{"username": "alice", "password_hash": argon2i}]))
    with pytest.raises(UsersFileError, match="argon2id"):
        FileUsers(path, hasher)


async def test_reload_picks_up_a_new_file(users_file, hasher):
    users = FileUsers(users_file, hasher)
    users_file.write_text(yaml.safe_dump([entry(hasher, "dave", "dave-pw")]))
    assert await users.reload() == 1
    assert await users.authenticate("dave", "dave-pw") is not None
    assert await users.authenticate("alice", "alice-pw") is None


async def test_reload_of_a_broken_file_is_refused_and_the_old_accounts_stay(users_file, hasher):
    users = FileUsers(users_file, hasher)
    users_file.write_text("- username: alice\n  password_hash: not-argon\n")
    with pytest.raises(UsersFileError):
        await users.reload()
    assert await users.authenticate("alice", "alice-pw") is not None
    assert [u.username for u in await users.list()] == ["alice", "bob", "carol"]


# -- edits --------------------------------------------------------------------------------------

async def test_add_keeps_every_other_entry_and_the_mode(users_file, hasher):
    before = read_entries(users_file)
    inode = users_file.stat().st_ino
    users = FileUsers(users_file, hasher)
    assert await users.add("dave", "dave-pw", ["ops"], "dave@example.test")
    after = read_entries(users_file)
    assert {k: after[k] for k in before} == before
    assert after["dave"]["roles"] == ["ops"] and after["dave"]["password_hash"].startswith("$argon2id$")
    assert "dave-pw" not in users_file.read_text()
    assert stat.S_IMODE(users_file.stat().st_mode) == 0o600
    assert users_file.stat().st_ino != inode   # replaced, not rewritten in place
    assert not [p for p in users_file.parent.iterdir() if p.name.endswith(".tmp")]
    assert await users.authenticate("dave", "dave-pw") == AuthenticatedUser("dave", ("ops",), "dave@example.test")


async def test_edit_keeps_entries_written_by_someone_else_since_loading(users_file, hasher):
    users = FileUsers(users_file, hasher)
    other = FileUsers(users_file, hasher)
    assert await other.add("erin", "erin-pw")
    assert await users.add("dave", "dave-pw")
    assert set(read_entries(users_file)) == {"alice", "bob", "carol", "dave", "erin"}


async def test_add_creates_a_missing_file_with_mode_0600(tmp_path, hasher):
    path = tmp_path / "users.yaml"
    users = FileUsers(path, hasher, missing_ok=True)
    assert await users.add("alice", "pw", ["admin"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert await FileUsers(path, hasher).authenticate("alice", "pw") is not None


async def test_an_operator_chosen_mode_is_kept(users_file, hasher):
    users_file.chmod(0o640)
    assert await FileUsers(users_file, hasher).delete("bob")
    assert stat.S_IMODE(users_file.stat().st_mode) == 0o640


async def test_taken_username_is_refused_and_nothing_changes(users_file, hasher):
    before = users_file.read_text()
    assert not await FileUsers(users_file, hasher).add("alice", "other-pw")
    assert users_file.read_text() == before


async def test_disable_enable_delete_and_set_password(users_file, hasher):
    users = FileUsers(users_file, hasher)
    assert await users.set_disabled("alice", True)
    assert read_entries(users_file)["alice"]["disabled"] is True
    assert await users.authenticate("alice", "alice-pw") is None
    assert await users.set_disabled("alice", False)
    assert await users.authenticate("alice", "alice-pw") is not None
    assert await users.set_password("bob", "new-bob-pw")
    assert await users.authenticate("bob", "new-bob-pw") is not None
    assert await users.authenticate("bob", "bob-pw") is None
    assert await users.delete("carol")
    assert set(read_entries(users_file)) == {"alice", "bob"}


async def test_edits_of_unknown_accounts_say_not_found(users_file, hasher):
    users = FileUsers(users_file, hasher)
    assert not await users.set_disabled("nobody", True)
    assert not await users.delete("nobody")
    assert not await users.set_password("nobody", "pw")
    assert await users.get("nobody") is None


async def test_edit_of_a_broken_file_is_refused_and_the_file_is_left_alone(users_file, hasher):
    users = FileUsers(users_file, hasher)
    users_file.write_text("- [broken")
    with pytest.raises(UsersFileError):
        await users.add("dave", "pw")
    assert users_file.read_text() == "- [broken"


@pytest.mark.parametrize("username, password, roles, email", [
    ("", "pw", [], None), ("a" * 65, "pw", [], None), ("bad name", "pw", [], None), ("é", "pw", [], None),
    ("dave", "", [], None), ("dave", "x" * 1025, [], None),
    ("dave", "pw", [""], None), ("dave", "pw", ["a,b"], None), ("dave", "pw", ["a b"], None),
    ("dave", "pw", "admin", None), ("dave", "pw", [], "not-an-address"),
])
async def test_bad_account_input_is_refused(users_file, hasher, username, password, roles, email):
    with pytest.raises(InvalidAccount):
        await FileUsers(users_file, hasher).add(username, password, roles, email)


@pytest.mark.parametrize("email", [
    "a\tb@x.test", "a@x.test\n", "a\x7fb@x.test", "a\x85b@x.test",      # controls, C0 and C1
    "a b@x.test", "a\u00a0b@x.test", "a\u3000b@x.test", "a\u2028b@x.test",  # any space or line separator
    "admin\u202e@x.test", "ad\u200bmin@x.test", "a@x.test\ufeff", "a\U000e0041@x.test",  # invisible formats
    "a@", "@x.test", "a@x.test@", "x" * 250 + "@abcd",
])
def test_email_addresses_with_invisible_or_control_characters_are_refused(email):
    with pytest.raises(InvalidAccount):
        check_email(email)


@pytest.mark.parametrize("email", ["josé@exämple.test", "用户@例子.广告", "a@b@x.test", "o'neil+tag@x.test",
                                   "a\ue000@x.test"])
def test_international_and_unusual_but_visible_addresses_are_taken(email):
    assert check_email(email) == email


async def test_allowed_username_characters(tmp_path, hasher):
    users = FileUsers(tmp_path / "u.yaml", hasher, missing_ok=True)
    assert await users.add("a.b_c-d@example.test", "pw")
    assert await users.add("x" * 64, "pw")


# -- build_directory ----------------------------------------------------------------------------

def test_build_directory_follows_auth_users(make_config, write_config, users_file, hasher, tmp_path):
    cfg = make_config(auth={"users": {"file": str(users_file)}})
    assert isinstance(build_directory(cfg, None, hasher), FileUsers) and FileUsers.editable
    cfg = make_config(auth={"users": {"credentials_url": "http://127.0.0.1:1/check"}})
    assert isinstance(build_directory(cfg, None, hasher), CredentialsUsers)
    cfg = make_config(auth={"users": "store"})
    assert isinstance(build_directory(cfg, FailingStore(), hasher), StoreUsers)
    with pytest.raises(ValueError):
        build_directory(cfg, None, hasher)


def test_relative_users_file_is_found_beside_the_config(write_config, users_file, hasher):
    from gateway.config.load import load_config

    cfg = load_config(write_config(auth={"users": {"file": users_file.name}}))
    assert Path(cfg.source).parent == users_file.parent
    assert build_directory(cfg, None, hasher).path == users_file


# -- StoreUsers ---------------------------------------------------------------------------------

class FailingStore:
    safe_url = "redis://:***@127.0.0.1:1/0"

    async def get_user(self, username):
        raise StoreUnavailable(self.safe_url, "connection refused")

    list_users = add_user = put_user = delete_user = get_user


async def test_store_outage_is_dependency_down_never_a_refusal_or_success(hasher):
    users = StoreUsers(FailingStore(), hasher)   # type: ignore[arg-type]
    with pytest.raises(DependencyDown) as caught:
        await users.authenticate("alice", "pw")
    assert "redis" not in caught.value.description
    with pytest.raises(DependencyDown):
        await users.add("alice", "pw")


@pytest.fixture
async def memory_store():
    store = MemoryStore()
    yield store
    await store.close()


async def test_store_users_add_authenticate_and_edit(memory_store, hasher, dummy_calls):
    users = StoreUsers(memory_store, hasher)
    assert await users.add("alice", "alice-pw", ["admin"], "alice@example.test")
    assert not await users.add("alice", "other")
    assert await users.authenticate("alice", "alice-pw") == AuthenticatedUser("alice", ("admin",), "alice@example.test")
    assert await users.authenticate("alice", "wrong") is None
    assert await users.authenticate("nobody", "alice-pw") is None and dummy_calls == [1]
    assert await users.set_disabled("alice", True)
    assert await users.authenticate("alice", "alice-pw") is None
    assert (await users.get("alice")).disabled
    assert await users.set_disabled("alice", False)
    assert await users.set_password("alice", "new-pw")
    assert await users.authenticate("alice", "new-pw") is not None
    assert [u.username for u in await users.list()] == ["alice"]
    assert await users.delete("alice")
    assert not await users.delete("alice")
    assert not await users.set_disabled("alice", True)
    assert await users.list() == []
