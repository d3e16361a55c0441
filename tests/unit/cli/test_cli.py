"""The ``tokengate`` command line, run in-process (and once as a real process for tracebacks)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import jwt
import pytest
import yaml

from gateway.cli import main
from gateway.config.load import load_config
from gateway.config.source import read_source
from tests.conftest import AUDIENCE, HS_SECRET, ISSUER


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_check_config_accepts_a_good_file_with_a_one_line_summary(write_config, capsys):
    status, out, _ = run(capsys, "check-config", "--config", str(write_config()))
    assert status == 0
    assert len(out.strip().splitlines()) == 1
    assert "5 routes" in out and "2 upstreams" in out and "4 keys" in out


def test_check_config_reports_every_error_with_its_line_and_exits_2(write_config, capsys):
    path = write_config(raw="tokens:\n  issuer: x\n  audience: api\n  keys:\n"
                            "    - {kid: a, alg: HS256, secret: short}\n"
                            "upstreams: {u: {url: 'ftp://x'}}\n"
                            "routes:\n  - {path: /a, upstream: nowhere, colour: red}\n")
    status, out, err = run(capsys, "check-config", "--config", str(path))
    assert status == 2
    assert out == ""
    assert f"{path}:5:" in err and f"{path}:6:" in err and f"{path}:8:" in err
    assert "Traceback" not in err


def test_config_may_come_from_the_environment(write_config, capsys, monkeypatch):
    monkeypatch.setenv("TOKENGATE_CONFIG", str(write_config()))
    assert run(capsys, "check-config")[0] == 0


@pytest.mark.parametrize("argv", [["check-config"], ["check-config", "--config", "/nonexistent.yaml"]])
def test_missing_config_is_a_clear_error(capsys, monkeypatch, argv):
    monkeypatch.delenv("TOKENGATE_CONFIG", raising=False)
    status, _, err = run(capsys, *argv)
    assert status == 2
    assert err.startswith("tokengate: ")


def test_mint_signs_a_token_the_config_accepts(write_config, capsys):
    status, out, _ = run(capsys, "mint", "--config", str(write_config()), "--sub", "bob", "--role", "admin",
                         "--role", "user", "--ttl", "5m", "--claim", "email=bob@example.test", "--claim", "n=5")
    assert status == 0
    token = out.strip()
    assert jwt.get_unverified_header(token)["kid"] == "main"
    claims = jwt.decode(token, HS_SECRET, algorithms=["HS256"], audience=AUDIENCE, issuer=ISSUER)
    assert claims["sub"] == "bob" and claims["roles"] == ["admin", "user"]
    assert claims["email"] == "bob@example.test" and claims["n"] == 5
    assert claims["exp"] - claims["iat"] == 300


@pytest.mark.parametrize("extra", [["--ttl", "five"], ["--claim", "novalue"], ["--claim", "exp=1"]])
def test_mint_refuses_bad_arguments(write_config, capsys, extra):
    status, _, err = run(capsys, "mint", "--config", str(write_config()), "--sub", "bob", *extra)
    assert status == 2
    assert "Traceback" not in err


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA", "HS256", "PS256", "ES384", "HS512"])
def test_generated_keys_load_in_a_config(tmp_path, capsys, write_config, alg, monkeypatch):
    status, out, _ = run(capsys, "keys", "generate", "--alg", alg, "--out", str(tmp_path / "k"), "--kid", "new")
    assert status == 0
    entry = yaml.safe_load(out.split("add to tokens.keys:\n", 1)[1].splitlines()[0])[0]
    if alg.startswith("HS"):
        secret_file = tmp_path / "k" / "new.secret"
        assert secret_file.stat().st_mode & 0o077 == 0
        monkeypatch.setenv("TOKENGATE_SECRET", secret_file.read_text().strip())
    else:
        assert (tmp_path / "k" / "new.pem").stat().st_mode & 0o077 == 0
    cfg = load_config(write_config(tokens={"keys": [entry], "signing_key": "new"}))
    assert cfg.tokens.signer.kid == "new"


def test_keys_generate_never_overwrites(tmp_path, capsys):
    argv = ["keys", "generate", "--alg", "ES256", "--out", str(tmp_path), "--kid", "k1"]
    assert run(capsys, *argv)[0] == 0
    before = (tmp_path / "k1.pem").read_bytes()
    status, _, err = run(capsys, *argv)
    assert status == 2 and "already exists" in err
    assert (tmp_path / "k1.pem").read_bytes() == before


def test_bad_cli_arguments_exit_2_with_usage(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["keys", "generate", "--alg", "none", "--out", "/tmp/x"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--port", "http"])
    assert exc.value.code == 2


def test_jwks_prints_public_keys_only(write_config, capsys):
    status, out, _ = run(capsys, "jwks", "--config", str(write_config()))
    assert status == 0
    keys = json.loads(out)["keys"]
    assert sorted(k["kid"] for k in keys) == ["ec1", "ed1", "rsa1"]
    assert all("d" not in k and k["kty"] != "oct" for k in keys)


@pytest.mark.parametrize("method, path, status, expect", [
    ("GET", "/api/orders/7", 0, "routes[2]"),
    ("delete", "/api/orders", 0, "routes[3]"),
    ("PUT", "/api/orders", 1, "404"),
    ("GET", "/api/public/x", 0, "public"),
    ("GET", "/api/public/../admin", 0, "admin"),
    ("GET", "/api/public/..;/admin", 1, "400"),
    ("GET", "/nowhere", 1, "404"),
])
def test_explain_names_route_and_needs(write_config, capsys, method, path, status, expect):
    code, out, _ = run(capsys, "explain", "--config", str(write_config()), method, path)
    assert code == status
    assert expect in out


def method_rows(out: str) -> dict[str, str]:
    """explain's methods block: method -> what serves it."""
    block = out.split("\nmethods:  ", 1)[1].splitlines()[1:]
    return dict(line.split(None, 1) for line in block)


@pytest.mark.parametrize("method, path", [("GET", "/api/orders/7"), ("PUT", "/api/orders")])
def test_explain_shows_which_route_serves_each_method_of_a_shared_path(write_config, capsys, method, path):
    code, out, _ = run(capsys, "explain", "--config", str(write_config()), method, path)
    assert code == (0 if method == "GET" else 1)
    assert "\nmethods:  2 routes share /api/orders" in out
    rows = method_rows(out)
    assert list(rows) == ["GET", "POST", "DELETE", "other", "CONNECT", "TRACE"]
    assert rows["GET"].startswith("routes[2] ") and rows["POST"] == rows["DELETE"] == "routes[3] POST,DELETE /api/orders"
    assert rows["other"].startswith("404") and rows["TRACE"].startswith("405") and rows["CONNECT"].startswith("405")


def test_explain_keeps_its_first_lines_and_adds_the_block_after_them(write_config, capsys):
    _, out, _ = run(capsys, "explain", "--config", str(write_config()), "GET", "/api/orders/7")
    assert out.splitlines()[:5] == [
        "path:     /api/orders/7", "route:    routes[2] GET /api/orders",
        "upstream: orders -> http://127.0.0.1:9002/api/orders/7",
        "needs:    a valid token with one of the roles: admin, user",
        "methods:  2 routes share /api/orders; each method is served by one of them"]


@pytest.mark.parametrize("path", ["/api/admin/x", "/api/accounts/7/profile", "/nowhere"])
def test_explain_of_a_path_one_route_holds_has_no_methods_block(write_config, capsys, path):
    _, out, _ = run(capsys, "explain", "--config", str(write_config()), "GET", path)
    assert "methods:" not in out


@pytest.mark.parametrize("method", ["TRACE", "connect"])
def test_explain_says_trace_and_connect_are_refused_with_405(write_config, capsys, method):
    code, out, _ = run(capsys, "explain", "--config", str(write_config()), method, "/api/public")
    assert code == 1
    assert out.splitlines()[-1].startswith("refused:  405") and "route:" not in out


@pytest.mark.parametrize("method, path", [("GET", "/api/orders/7"), ("PUT", "/api/orders"), ("GET", "/api/admin"),
                                          ("GET", "/nowhere"), ("GET", "/a/..;/b"), ("TRACE", "/")])
def test_explain_output_ends_with_a_newline(write_config, capsys, method, path):
    _, out, _ = run(capsys, "explain", "--config", str(write_config()), method, path)
    assert out.endswith("\n") and not out.endswith("\n\n")


def readme_explain_examples() -> list[tuple[list[str], str]]:
    """Each `$ tokengate explain ...` of the README's command-line section, with the output shown under it."""
    text = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    examples = re.findall(r"^\$ tokengate (explain .*)\n((?:(?!\$ |```).*\n)*)", text, re.M)
    return [(shlex.split(command), shown) for command, shown in examples]


def test_readme_explain_examples_show_the_real_output(capsys, monkeypatch):
    monkeypatch.setenv("TOKENGATE_SECRET", HS_SECRET)
    monkeypatch.chdir(Path(__file__).resolve().parents[3])
    examples = readme_explain_examples()
    assert len(examples) >= 3
    for argv, shown in examples:
        assert run(capsys, *argv)[1] == shown, argv


def test_check_config_refuses_a_route_without_methods_beside_a_public_get_naming_both_lines(write_config, capsys):
    routes = [{"path": "/api/x", "upstream": "orders", "roles": ["admin"]},
              {"path": "/api/x/", "methods": ["GET"], "upstream": "orders", "public": True}]
    path = write_config(routes=routes)
    first, second = (read_source(path).line_of(("routes", i)) for i in (0, 1))
    status, out, err = run(capsys, "check-config", "--config", str(path))
    assert status == 2 and out == ""
    assert f"{path}:{first}" in err and f"{path}:{second}" in err and "Traceback" not in err


def test_broken_config_never_shows_a_traceback_from_the_real_command(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("tokens: [unclosed\n")
    proc = subprocess.run([sys.executable, "-m", "gateway", "check-config", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"{path}:" in proc.stderr and "Traceback" not in proc.stderr
