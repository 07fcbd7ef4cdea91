"""wandb picks online only when it would find an API key without asking; otherwise it runs offline."""

from __future__ import annotations

from pathlib import Path

import pytest

from genlab.loggers import resolve_wandb_mode


@pytest.fixture
def no_wandb_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    return monkeypatch


def test_no_key_means_offline(no_wandb_env: pytest.MonkeyPatch) -> None:
    assert resolve_wandb_mode("auto") == "offline"


def test_api_key_in_the_environment_means_online(no_wandb_env: pytest.MonkeyPatch) -> None:
    no_wandb_env.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_wandb_mode("auto") == "online"


def test_netrc_entry_means_online(no_wandb_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    netrc.chmod(0o600)
    assert resolve_wandb_mode("auto") == "online"
    no_wandb_env.setenv("WANDB_BASE_URL", "https://wandb.example.org")  # a key for another host does not count
    assert resolve_wandb_mode("auto") == "offline"


def test_explicit_and_environment_modes_win(no_wandb_env: pytest.MonkeyPatch) -> None:
    no_wandb_env.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_wandb_mode("offline") == "offline"
    no_wandb_env.setenv("WANDB_MODE", "disabled")
    assert resolve_wandb_mode("auto") == "disabled"


def test_bad_mode_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"one of \['auto', 'online', 'offline', 'disabled'\], got 'cloud'"):
        resolve_wandb_mode("cloud")
