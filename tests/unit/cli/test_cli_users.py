"""``tokengate users ...`` against a users file, and its refusals for stores it cannot reach."""

from __future__ import annotations

import io
import json
import stat
from functools import partial

import pytest
import yaml

import gateway.cli.users
import gateway.store
from gateway.auth.accounts.directory import FileUsers
from gateway.auth.accounts.passwords import PasswordHasher
from gateway.cli import main
from tests.conftest import CHEAP_ARGON2 as CHEAP

PASSWORD = "correct horse battery"
OTHER_PASSWORD = "a different passphrase"


@pytest.fixture(autouse=True)
def cheap_hasher(monkeypatch):
    monkeypatch.setattr(gateway.cli.users, "PasswordHasher", partial(PasswordHasher, CHEAP))


@pytest.fixture
def users_path(tmp_path):
    return tmp_path / "users.yaml"


@pytest.fixture
def config(write_config, users_path):
    return str(write_config(auth={"users": {"file": str(users_path)}}))


@pytest.fixture
def stdin(monkeypatch):
    def feed(text: str) -> None:
        monkeypatch.setattr("sys.stdin", io.StringIO(text))
    return feed


@pytest.fixture
def run(capsys):
    def _run(*argv: str) -> tuple[int, str, str]:
        status = main(list(argv))
        out, err = capsys.readouterr()
        return status, out, err
    return _run


@pytest.fixture
def alice(run, stdin, config):
    stdin(f"{PASSWORD}\n")
    assert run("users", "add", "--config", config, "alice", "--role", "admin", "--role", "user",
               "--email", "alice@example.test")[0] == 0


def entries(path):
    return {e["username"]: e for e in yaml.safe_load(path.read_text())}


def authenticate(path, username, password):
    import asyncio

    hasher = PasswordHasher(CHEAP)
    try:
        return asyncio.run(FileUsers(path, hasher).authenticate(username, password))
    finally:
        hasher.close()


def test_add_reads_the_password_from_the_first_line_of_stdin(run, stdin, config, users_path):
    stdin(f"{PASSWORD}\nsecond line is ignored\n")
    status, out, err = run("users", "add", "--config", config, "alice", "--role", "admin", "--email", "a@example.test")
    assert status == 0, err
    assert "alice" in out
    assert PASSWORD not in out + err + users_path.read_text()
    entry = entries(users_path)["alice"]
    assert entry["password_hash"].startswith("$argon2id$") and entry["roles"] == ["admin"]
    assert stat.S_IMODE(users_path.stat().st_mode) == 0o600
    assert authenticate(users_path, "alice", PASSWORD).roles == ("admin",)


def test_password_keeps_its_spaces_and_loses_only_the_line_end(run, stdin, config, users_path):
    stdin(" padded pw \r\n")
    assert run("users", "add", "--config", config, "bob")[0] == 0
    assert authenticate(users_path, "bob", " padded pw ") is not None


def test_list_shows_accounts_and_never_hashes(run, config, alice, stdin):
    stdin(f"{OTHER_PASSWORD}\n")
    run("users", "add", "--config", config, "bob")
    run("users", "disable", "--config", config, "bob")
    status, out, _ = run("users", "list", "--config", config)
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == ["USERNAME", "ROLES", "EMAIL", "DISABLED"]
    assert lines[1].split() == ["alice", "admin,user", "alice@example.test", "no"]
    assert lines[2].split() == ["bob", "-", "-", "yes"]
    assert "argon2" not in out and "$" not in out


def test_list_of_a_missing_file_is_empty(run, config):
    status, out, _ = run("users", "list", "--config", config)
    assert status == 0 and out.splitlines()[1:] == []


def test_disable_enable_delete(run, config, alice, users_path):
    assert run("users", "disable", "--config", config, "alice")[0] == 0
    assert entries(users_path)["alice"]["disabled"] is True
    assert authenticate(users_path, "alice", PASSWORD) is None
    assert run("users", "enable", "--config", config, "alice")[0] == 0
    assert authenticate(users_path, "alice", PASSWORD) is not None
    assert run("users", "delete", "--config", config, "alice")[0] == 0
    assert entries(users_path) == {}


@pytest.mark.parametrize("action", ["disable", "enable", "delete", "set-password"])
def test_unknown_account_exits_1_saying_not_found(run, config, alice, action, stdin):
    stdin("pw\n")
    status, _, err = run("users", action, "--config", config, "nobody")
    assert status == 1 and "not found" in err


def test_taken_username_exits_1_and_changes_nothing(run, stdin, config, alice, users_path):
    before = users_path.read_text()
    stdin("other password\n")
    status, _, err = run("users", "add", "--config", config, "alice")
    assert status == 1 and "taken" in err
    assert users_path.read_text() == before


@pytest.mark.parametrize("text", ["\n", "", "\r\n"])
def test_empty_password_is_refused(run, stdin, config, users_path, text):
    stdin(text)
    status, _, err = run("users", "add", "--config", config, "alice")
    assert status == 2 and "empty password" in err
    assert not users_path.exists()


def test_password_is_never_taken_from_argv(run, stdin, config, users_path):
    stdin("")
    for argv in (["--password", PASSWORD], [PASSWORD]):
        with pytest.raises(SystemExit) as caught:
            main(["users", "add", "--config", config, "alice", *argv])
        assert caught.value.code == 2
    assert not users_path.exists()


def test_set_password_reads_stdin(run, stdin, config, alice, users_path):
    stdin(f"{OTHER_PASSWORD}\n")
    assert run("users", "set-password", "--config", config, "alice")[0] == 0
    assert authenticate(users_path, "alice", OTHER_PASSWORD) is not None
    assert authenticate(users_path, "alice", PASSWORD) is None


@pytest.mark.parametrize("password, cause", [
    ("123", "characters"),            # shorter than auth.password.min_length
    ("password", "common"),           # on the shipped common-password list, in any case
    ("PassWord1", "common"),
    ("carol.longname", "username"),   # the account's own username
    ("Carol.Longname", "username"),
])
def test_add_refuses_a_password_signup_refuses_exit_2_naming_why(run, stdin, config, users_path, password,
                                                                 cause):
    stdin(f"{password}\n")
    status, out, err = run("users", "add", "--config", config, "carol.longname")
    assert status == 2
    assert len(err.splitlines()) == 1 and cause in err and "Traceback" not in err
    assert not users_path.exists()


def test_add_refuses_the_accounts_e_mail_address_as_password(run, stdin, config, users_path):
    for password in ("Dave.Smith@example.test", "dave.smith"):   # the address, or its local part
        stdin(f"{password}\n")
        status, _, err = run("users", "add", "--config", config, "dave", "--email", "dave.smith@example.test")
        assert status == 2 and "e-mail" in err
    assert not users_path.exists()


def test_add_follows_the_configured_length_bounds(run, stdin, write_config, users_path):
    config = str(write_config(auth={"users": {"file": str(users_path)},
                                    "password": {"min_length": 24, "max_length": 30}}))
    for password in (PASSWORD, "x" * 31 + "yz"):
        stdin(f"{password}\n")
        status, _, err = run("users", "add", "--config", config, "alice")
        assert status == 2 and "characters" in err
    stdin("correct horse battery staple\n")   # 28 characters
    assert run("users", "add", "--config", config, "alice")[0] == 0


@pytest.mark.parametrize("password, cause", [("123", "characters"), ("qwerty123", "common"),
                                             ("alice@example.test", "e-mail")])
def test_set_password_refuses_a_weak_password_and_keeps_the_old_one(run, stdin, config, alice, users_path,
                                                                    password, cause):
    before = users_path.read_text()
    stdin(f"{password}\n")
    status, out, err = run("users", "set-password", "--config", config, "alice")
    assert status == 2 and cause in err and len(err.splitlines()) == 1
    assert users_path.read_text() == before
    assert authenticate(users_path, "alice", PASSWORD) is not None


def test_set_password_refuses_the_username(run, stdin, config, users_path):
    stdin(f"{PASSWORD}\n")
    assert run("users", "add", "--config", config, "carol.longname")[0] == 0
    stdin("CAROL.LONGNAME\n")
    status, _, err = run("users", "set-password", "--config", config, "carol.longname")
    assert status == 2 and "username" in err
    assert authenticate(users_path, "carol.longname", PASSWORD) is not None


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("answers, status", [([PASSWORD, PASSWORD], 0), ([PASSWORD, OTHER_PASSWORD], 2)])
def test_on_a_terminal_the_password_is_asked_twice(run, config, monkeypatch, answers, status, users_path):
    monkeypatch.setattr("sys.stdin", Tty())
    asked = iter(answers)
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(asked))
    assert run("users", "add", "--config", config, "alice")[0] == status
    assert users_path.exists() == (status == 0)


@pytest.mark.parametrize("argv", [["bad name"], ["alice", "--role", "a,b"], ["alice", "--email", "nope"]])
def test_bad_account_input_exits_2_before_asking_for_a_password(run, stdin, config, argv, users_path):
    stdin(f"{PASSWORD}\n")
    status, _, err = run("users", "add", "--config", config, *argv)
    assert status == 2 and err.startswith("tokengate: ")
    assert not users_path.exists()


def test_broken_users_file_exits_2_and_is_left_alone(run, config, users_path):
    users_path.write_text("- username: alice\n  password_hash: plain\n")
    status, _, err = run("users", "list", "--config", config)
    assert status == 2 and "argon2id" in err and "Traceback" not in err


def test_relative_users_file_lives_beside_the_config(run, stdin, write_config, tmp_path):
    config = str(write_config(auth={"users": {"file": "accounts.yaml"}}))
    stdin(f"{PASSWORD}\n")
    assert run("users", "add", "--config", config, "alice")[0] == 0
    assert "alice" in entries(tmp_path / "accounts.yaml")


def test_memory_store_accounts_cannot_be_reached(run, write_config, stdin):
    config = str(write_config(store={"url": "memory://"}, auth={"users": "store"}))
    stdin(f"{PASSWORD}\n")
    status, _, err = run("users", "add", "--config", config, "alice")
    assert status == 1
    assert "only inside the serving process" in err and "Traceback" not in err


def test_credentials_service_accounts_are_managed_there(run, write_config):
    config = str(write_config(auth={"users": {"credentials_url": "http://127.0.0.1:1/check"}}))
    status, _, err = run("users", "list", "--config", config)
    assert status == 1 and "credentials service" in err


def test_unreachable_store_exits_1_naming_it_without_its_password(run, write_config):
    from tests.redisproc import free_port

    url = f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0"   # nothing listens there
    config = str(write_config(store={"url": url}, auth={"users": "store"}))
    status, _, err = run("users", "list", "--config", config)
    assert status == 1
    assert ":***@127.0.0.1:" in err and "hunter2-secret" not in err and "Traceback" not in err


@pytest.mark.integration
def test_store_accounts_are_edited_through_a_real_redis(run, stdin, write_config, redis_url):
    import asyncio

    from tests.conftest import flush

    asyncio.run(flush(redis_url))
    config = str(write_config(store={"url": redis_url}, auth={"users": "store"}))
    stdin(f"{PASSWORD}\n")
    assert run("users", "add", "--config", config, "alice", "--role", "admin")[0] == 0
    stdin("another password\n")
    assert run("users", "add", "--config", config, "alice")[0] == 1
    status, out, err = run("users", "disable", "--config", config, "alice")
    assert status == 0 and "revoked every token of subject alice" in out
    (line,) = [json.loads(text) for text in err.splitlines()]   # the sessions it ended are audited
    assert {k: line[k] for k in ("event", "subject", "kind", "target", "via", "client")} == {
        "event": "admin_revoke", "subject": "alice", "kind": "sub", "target": "alice", "via": "cli", "client": None}
    assert asyncio.run(_subject_revoked(redis_url, "alice"))   # disabling ends the sessions everywhere
    status, out, _ = run("users", "list", "--config", config)
    assert status == 0 and out.splitlines()[1].split() == ["alice", "admin", "-", "yes"]
    assert run("users", "delete", "--config", config, "alice")[0] == 0
    assert run("users", "delete", "--config", config, "alice")[0] == 1


async def _subject_revoked(redis_url: str, sub: str) -> bool:
    import time

    from gateway.config.load import StoreConfig
    from gateway.store import open_store

    store = await open_store(StoreConfig(url=redis_url))
    try:
        return any(r.kind == "sub" and r.id == sub for r in await store.live_revocations(time.time()))
    finally:
        await store.close()


def test_a_delegated_account_is_listed_disabled_and_deleted_but_never_given_a_password(run, stdin, config,
                                                                                         users_path):
    import asyncio

    hasher = PasswordHasher(CHEAP)
    try:
        asyncio.run(FileUsers(users_path, hasher, missing_ok=True).upsert_delegated("corp:carol", ["user"], None))
    finally:
        hasher.close()
    status, out, _ = run("users", "list", "--config", config)
    assert status == 0 and "corp:carol" in out
    assert run("users", "disable", "--config", config, "corp:carol")[0] == 0
    assert entries(users_path)["corp:carol"]["disabled"] is True
    stdin(f"{PASSWORD}\n")
    assert run("users", "set-password", "--config", config, "corp:carol")[0] == 2   # it signs in at its provider
    assert entries(users_path)["corp:carol"]["password_hash"] == ""
    stdin(f"{PASSWORD}\n")
    assert run("users", "add", "--config", config, "corp:dave")[0] == 2
    assert run("users", "delete", "--config", config, "corp:carol")[0] == 0
    assert entries(users_path) == {}
