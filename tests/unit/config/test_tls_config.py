"""``listen.tls`` and ``listen.client_cert_header``: the files are read and checked when the config
loads, every problem at its file:line; the header is refused without trusted proxies to believe it from."""

from __future__ import annotations

import pickle
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.config.load import load_config
from gateway.config.tls import server_context
from tests.tlsfiles import MtlsFiles, write_mtls_files
from tests.unit.config.config_checks import assert_single, problems_of, single

WriteConfig = Callable[..., Path]


@pytest.fixture
def tls_files(tmp_path: Path) -> MtlsFiles:
    return write_mtls_files(tmp_path)


def with_tls(write_config: WriteConfig, **listen: Any) -> Path:
    return write_config(listen={"host": "127.0.0.1", "port": 0, **listen})


def test_tls_paths_are_read_relative_to_the_config_file(write_config, tls_files, tmp_path):
    path = with_tls(write_config, tls={"cert_file": "server.pem", "key_file": "server.key",
                                       "client_ca_file": "client-ca.pem"})
    assert path.parent == tmp_path   # the files sit beside the config, named relative to it
    tls = load_config(path).listen.tls
    assert tls is not None
    assert (tls.cert_file, tls.key_file, tls.client_ca_file) == (tmp_path / "server.pem", tmp_path / "server.key",
                                                                 tmp_path / "client-ca.pem")
    ctx = server_context(tls)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_OPTIONAL   # requested and verified when given, not required


def test_without_a_client_ca_no_client_certificate_is_asked_for(write_config, tls_files):
    cfg = load_config(with_tls(write_config, tls={"cert_file": str(tls_files.server_cert),
                                                  "key_file": str(tls_files.server_key)}))
    assert cfg.listen.tls is not None and cfg.listen.tls.client_ca_file is None
    assert server_context(cfg.listen.tls).verify_mode == ssl.CERT_NONE


def test_no_tls_by_default(make_config):
    cfg = make_config()
    assert cfg.listen.tls is None and cfg.listen.client_cert_header is None


@pytest.mark.parametrize("key", ["cert_file", "key_file", "client_ca_file"])
def test_a_missing_file_is_a_problem_at_its_key(write_config, tls_files, key):
    tls = {"cert_file": "server.pem", "key_file": "server.key", "client_ca_file": "client-ca.pem", key: "nowhere.pem"}
    path = with_tls(write_config, tls=tls)
    assert_single(path, f"listen.tls.{key}", "nowhere.pem")


@pytest.mark.parametrize("key", ["cert_file", "key_file", "client_ca_file"])
def test_a_file_that_is_not_pem_is_a_problem_at_its_key(write_config, tls_files, tmp_path, key):
    (tmp_path / "junk.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    tls = {"cert_file": "server.pem", "key_file": "server.key", "client_ca_file": "client-ca.pem", key: "junk.pem"}
    assert_single(with_tls(write_config, tls=tls), f"listen.tls.{key}", "junk.pem")


def test_a_key_that_is_not_the_certificates_is_refused(write_config, tls_files):
    alice_key = tls_files.clients["alice"][1]
    path = with_tls(write_config, tls={"cert_file": "server.pem", "key_file": str(alice_key)})
    assert_single(path, "listen.tls.key_file", "alice.key")


def test_a_certificate_given_as_the_key_is_refused(write_config, tls_files):
    path = with_tls(write_config, tls={"cert_file": "server.pem", "key_file": "client-ca.pem"})
    assert single(problems_of(path)).key == "listen.tls.key_file"


def test_tls_needs_both_files(write_config, tls_files):
    assert single(problems_of(with_tls(write_config, tls={"cert_file": "server.pem"}))).key == "listen.tls.key_file"


def test_client_cert_header_without_trusted_proxies_is_refused(write_config):
    path = with_tls(write_config, client_cert_header="X-Client-Cert")
    assert_single(path, "listen.client_cert_header", "X-Client-Cert")


def test_client_cert_header_with_trusted_proxies_is_accepted(make_config):
    cfg = make_config(listen={"client_cert_header": "X-Client-Cert", "trusted_proxies": ["10.0.0.0/8"]})
    assert cfg.listen.client_cert_header == "X-Client-Cert"


@pytest.mark.parametrize("name", ["X-Forwarded-For", "Authorization", "bad header", "X-User-Id"])
def test_client_cert_header_may_not_be_a_header_the_gateway_owns(write_config, name):
    path = with_tls(write_config, client_cert_header=name, trusted_proxies=["10.0.0.0/8"])
    found = single(problems_of(path))
    assert found.key == "listen.client_cert_header"
    assert found.line == [n for n, line in enumerate(path.read_text().splitlines(), 1)
                          if line.strip().startswith("client_cert_header")][0]


def test_the_config_survives_a_pickle_for_workers_and_reloads(write_config, tls_files):
    cfg = load_config(with_tls(write_config, tls={"cert_file": "server.pem", "key_file": "server.key"}))
    again = pickle.loads(pickle.dumps(cfg))
    assert again.listen == cfg.listen   # equal: a reload does not report listen as changed

