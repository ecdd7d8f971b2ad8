"""Pseudonymised user ids: keyed, stable, the same in Spark and in Python, and a
clear error when the salt is missing."""

from __future__ import annotations



from fusionrank.core.privacy import pseudonymise_id, pseudonymise_users, user_salt
from tests.unit.test_privacy import SALT_ENV, settings_with


def test_spark_column_matches_python(spark, tmp_path, monkeypatch):
    monkeypatch.setenv(SALT_ENV, "0123456789abcdef-salt")
    salt = user_salt(settings_with(tmp_path))
    df = spark.createDataFrame([("13", 1), ("é-ü", 2), (None, 3)], "user_id string, n int")
    out = {r["n"]: r["user_id"] for r in pseudonymise_users(df, salt).collect()}
    assert out == {1: pseudonymise_id("13", salt), 2: pseudonymise_id("é-ü", salt), 3: None}
    assert pseudonymise_users(df, None) is df
    # The salt is not a literal in the query plan (the Spark UI shows plans).
    plan = pseudonymise_users(df, salt)._jdf.queryExecution().toString()
    assert "0123456789abcdef-salt" not in plan
