"""The README stays true: its configuration reference loads as written."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from gateway.config.load import load_config

ROOT = Path(__file__).resolve().parents[2]


def test_readme_config_reference_loads_as_written(keys_dir: Path, tmp_path: Path) -> None:
    block = re.search(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block is not None
    (tmp_path / "keys").mkdir()   # the key files the reference names
    shutil.copy(keys_dir / "rsa.pem", tmp_path / "keys" / "rsa1.pem")
    shutil.copy(keys_dir / "ec256.pub.pem", tmp_path / "keys" / "partner.pub.pem")
    path = tmp_path / "readme.yaml"
    path.write_text(block.group(1))
    cfg = load_config(path, environ={"TOKENGATE_SECRET": "x" * 40, "TOKENGATE_ADMIN_TOKEN": "a" * 40,
                                     "CORP_CLIENT_ID": "gw", "CORP_CLIENT_SECRET": "s", "GH_ID": "g", "GH_SECRET": "s"})
    assert cfg.auth.mail.attempts == 3 and cfg.auth.password.min_length == 8
    assert cfg.admin.token is not None and cfg.tokens.cache_size == 10_000
    assert len(cfg.routes) == 6 and cfg.routes[-1].dpop == "required"
    assert (cfg.tokens.dpop.max_age, cfg.tokens.dpop.nonce, cfg.tokens.dpop.required) == (60, False, False)
