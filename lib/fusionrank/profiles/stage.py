"""build_profiles: training events + item_embeddings -> user_profiles (in the ranking
space: decayed, weighted sums of the history's rec_vec)."""

from __future__ import annotations


from fusionrank.core.catalog import INDEX_VECTOR
from fusionrank.core.context import RunContext
from fusionrank.profiles.build import build_user_profiles, weighted_history


def build_profiles(ctx: RunContext) -> dict:
    cfg = ctx.settings
    history = weighted_history(ctx.training_events(), cfg.profiles, ctx.holdout_start)
    vectors = ctx.for_date("item_embeddings").select("item_id", INDEX_VECTOR)
    out = ctx.pseudonymised(build_user_profiles(history, vectors, cfg.profiles, ctx.run_date, ctx.spec.behaviour_dim))
    ctx.describe("build_profiles")
    ctx.write("user_profiles", out, "build_profiles")
    users = ctx.store.count_rows("user_profiles", where={"run_date": ctx.run_date})
    return {"users": users, "training_events_before": ctx.holdout_start.isoformat()}
