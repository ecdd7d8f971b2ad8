"""evaluate at scale: the popularity baseline without a users x (k + longest history)
cross join gives what the definition says on a random log (checked against a plain
Python reference: the global popularity order, each user's first k unseen items)."""

from __future__ import annotations

import random
from collections import Counter

from fusionrank.metrics import measures as ev


def reference_popularity(rows: list[tuple[str, str]], users: list[str], k: int) -> dict[str, list[str]]:
    seen: dict[str, set[str]] = {}
    for user, item in rows:
        seen.setdefault(user, set()).add(item)
    counts = Counter(item for items in seen.values() for item in items)
    order = sorted(counts, key=lambda item: (-counts[item], item))
    return {u: [i for i in order if i not in seen.get(u, set())][:k] for u in users}


def test_popularity_recs_match_the_reference_on_a_random_log(spark):
    rng = random.Random(7)
    items = [f"i{n:03d}" for n in range(60)]
    weights = [1.0 / (n + 1) for n in range(len(items))]  # skewed: heavy users see most of the head
    rows = []
    for u in range(80):
        length = rng.choice([1, 2, 5, 20, 55])
        rows += [(f"u{u:02d}", item) for item in rng.choices(items, weights, k=length)]
    train = spark.createDataFrame(rows, "user_id string, item_id string")
    users = [f"u{u:02d}" for u in range(0, 80, 3)] + ["nobody"]
    for k in (1, 5, 10):
        got: dict[str, list[str]] = {}
        recs = ev.popularity_recs(train, spark.createDataFrame([(u,) for u in users], "user_id string"), k)
        for row in recs.orderBy("user_id", "rank").collect():
            got.setdefault(row.user_id, []).append(row.item_id)
            assert row.rank == len(got[row.user_id])
        expected = reference_popularity(rows, users, k)
        assert got == {u: v for u, v in expected.items() if v}, k


def test_popularity_recs_plan_has_no_cross_join(spark):
    train = spark.createDataFrame([("u1", "a"), ("u2", "b"), ("u2", "a")], "user_id string, item_id string")
    recs = ev.popularity_recs(train, train.select("user_id").distinct(), 2)
    plan = recs._jdf.queryExecution().optimizedPlan().toString()
    assert "CartesianProduct" not in plan and "Cross" not in plan, plan
