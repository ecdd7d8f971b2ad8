"""Pseudonymised user ids: keyed, stable, the same in Spark and in Python, and a
clear error when the salt is missing."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from fusionrank.core.privacy import PrivacyError, pseudonymise_id, user_salt
from tests.conftest import make_settings

SALT_ENV = "FUSIONRANK_TEST_USER_SALT"


def settings_with(tmp_path, enabled=True):
    return make_settings(tmp_path, privacy={"pseudonymise_user_ids": enabled, "salt_env": SALT_ENV})


def test_off_by_default_needs_no_salt(tmp_path, monkeypatch):
    monkeypatch.delenv("FUSIONRANK_USER_SALT", raising=False)
    settings = make_settings(tmp_path)
    assert settings.privacy.pseudonymise_user_ids is False
    assert settings.privacy.salt_env == "FUSIONRANK_USER_SALT"
    assert user_salt(settings) is None


def test_missing_or_short_salt_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv(SALT_ENV, raising=False)
    with pytest.raises(PrivacyError, match=rf"environment variable {SALT_ENV} \(privacy.salt_env\) is not set"):
        user_salt(settings_with(tmp_path))
    monkeypatch.setenv(SALT_ENV, "short")
    with pytest.raises(PrivacyError, match=r"has 5 characters; use at least 16"):
        user_salt(settings_with(tmp_path))


def test_the_salt_cannot_live_in_conf(tmp_path):
    from fusionrank.core.config import ConfigError

    with pytest.raises(ConfigError, match=r"privacy.salt: unknown key"):
        make_settings(tmp_path, privacy={"salt": "s3cret-s3cret-s3cret"})


def test_pseudonymise_id_is_hmac_sha256(monkeypatch):
    salt = b"0123456789abcdef-salt"
    expected = hmac.new(salt, b"user-13", hashlib.sha256).hexdigest()
    assert pseudonymise_id("user-13", salt) == expected
    assert pseudonymise_id("user-13", b"another salt 0123456") != expected
    assert pseudonymise_id(None, salt) is None


