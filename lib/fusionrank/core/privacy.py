"""Pseudonymised user ids (`privacy.pseudonymise_user_ids`).

Where user ids leave fusionrank (`user_profiles`, `recs_user_topk`) they can be
replaced by HMAC-SHA256(salt, user_id) in hex: stable from night to night, so
consumers still join on them, and not reversible without the salt. The salt is a
secret supplied at run time in the environment variable named by
`privacy.salt_env`; it is never read from conf/. It reaches the executors inside
the pickled UDF, not as a literal in the query plan, so the Spark UI does not show
it. Evaluation hashes the held-out users the same way, so its joins still match.
"""

from __future__ import annotations

import hashlib
import hmac
import os

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from fusionrank.core.config import Settings
from fusionrank.core.errors import PrivacyError

MIN_SALT_CHARS = 16



def user_salt(settings: Settings) -> bytes | None:
    """The salt when pseudonymisation is on, else None; fails if it is missing."""
    cfg = settings.privacy
    if not cfg.pseudonymise_user_ids:
        return None
    value = os.environ.get(cfg.salt_env, "")
    if not value:
        raise PrivacyError(
            f"privacy.pseudonymise_user_ids is on but the environment variable {cfg.salt_env} "
            f"(privacy.salt_env) is not set: supply the salt at run time (a scheduler secret), never in conf/"
        )
    if len(value) < MIN_SALT_CHARS:
        raise PrivacyError(
            f"the salt in {cfg.salt_env} (privacy.salt_env) has {len(value)} characters; "
            f"use at least {MIN_SALT_CHARS} random characters"
        )
    return value.encode("utf-8")


def pseudonymise_id(user_id: str | None, salt: bytes) -> str | None:
    if user_id is None:
        return None
    return hmac.new(salt, str(user_id).encode("utf-8"), hashlib.sha256).hexdigest()


def pseudonymise_users(df: DataFrame, salt: bytes | None, column: str = "user_id") -> DataFrame:
    """`df` with `column` pseudonymised; unchanged when `salt` is None."""
    if salt is None:
        return df

    @F.pandas_udf("string")
    def pseudonymise(ids: pd.Series) -> pd.Series:
        return ids.map(lambda v: None if pd.isna(v) else pseudonymise_id(v, salt))

    return df.withColumn(column, pseudonymise(F.col(column)))
