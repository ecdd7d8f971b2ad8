"""The search side's pure parts: BM25 lexical index, reciprocal rank fusion and the
hybrid re-rank, query intent, and the search metrics on held-out sessions."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from fusionrank.index.lexical import LexicalIndex, item_document, tokenize
from fusionrank.metrics.search_eval import case_grades, evaluate_rankings, mrr, ndcg, recall, search_cases
from fusionrank.ranks.hybrid import HybridParams, engagement_intent, hybrid_rerank, pool_engagement, rrf
from fusionrank.ranks.intent import QueryIntent

CATALOG = pd.DataFrame({
    "item_id": ["P1", "P2", "P3", "P4"],
    "title": ["Velora Flowy Red Maxi Dress", "Velora Chic Blue Maxi Dress", "Hearthly Cozy Red Mug", "Voltix Pro Speaker"],
    "brand": ["Velora", "Velora", "Hearthly", "Voltix"],
    "category": ["Women > Dresses > Maxi", "Women > Dresses > Maxi", "Home > Kitchen > Mugs",
                 "Electronics > Audio > Speakers"],
    "description": ["A flowy red maxi dress, made of silk.", "A chic blue maxi dress.", "A red mug of ceramic.",
                    "A speaker."],
})


def test_tokenize_and_documents():
    assert tokenize("Bloom & Co, Maxi-Dress!") == ["bloom", "co", "maxi", "dress"]
    assert item_document("Red Mug", "Pebble", "Home > Mugs", None).count("red") == 2  # the title weighs twice


def test_bm25_ranks_matching_items_and_round_trips(tmp_path):
    index = LexicalIndex.from_frame(CATALOG)
    (ids, scores), (none, _), (unknown, _) = index.search(["red maxi dress", "", "zzz qqq"], 10)
    assert ids[0] == "P1" and set(ids) == {"P1", "P2", "P3"} and list(scores) == sorted(scores, reverse=True)
    assert none == [] and unknown == []  # no matching token: nothing, not arbitrary items
    index.save(tmp_path / "lex")
    again = LexicalIndex.load(tmp_path / "lex")
    assert again.search(["red maxi dress"], 10)[0][0] == ids
    with pytest.raises(Exception, match="no lexical index"):
        LexicalIndex.load(tmp_path / "missing")


def test_rrf_is_normalised_and_weighted():
    fused = rrf([["a", "b"], ["b", "c"]], [1.0, 1.0], 60.0)
    assert fused["b"] > fused["a"] > fused["c"] > 0
    assert rrf([["a"], ["a"]], [1.0, 1.0], 60.0)["a"] == pytest.approx(1.0)
    lexical_heavy = rrf([["a", "b"], ["b", "c"]], [1.0, 5.0], 60.0)
    assert lexical_heavy["c"] > lexical_heavy["a"]
    with pytest.raises(ValueError):
        rrf([["a"]], [0.0], 60.0)


def test_hybrid_rerank_blends_ctr_and_intent():
    dense, lexical = ["a", "b", "c"], ["b", "a", "d"]
    plain = hybrid_rerank(dense, lexical, {}, 0, 3, HybridParams(ctr_weight=0.0))
    assert [r[0] for r in plain][:2] in (["a", "b"], ["b", "a"]) and len(plain) == 3
    clicked = hybrid_rerank(dense, lexical, {"e": (30.0, 10)}, 20, 2, HybridParams(ctr_weight=0.6))
    assert clicked[0][0] == "e" and clicked[0][3] == pytest.approx(1.0)  # engaged items join the candidates
    boosted = hybrid_rerank(dense, lexical, {}, 0, 1, HybridParams(ctr_weight=0.0, intent_weight=1.0),
                            {"Home": 0.9}, {"d": "Home"})
    assert boosted[0][0] == "d"


def test_intent_known_and_unseen_queries():
    engaged = pd.DataFrame({"query": ["red dress", "red dress", "mug", "mug"],
                            "category": ["Women", "Home", "Home", "Home"], "weight": [3.0, 1.0, 2.0, 1.0]})
    vectors = {"red dress": [1.0, 0.0], "mug": [0.0, 1.0]}
    intent = QueryIntent.fit(engaged, lambda qs: np.array([vectors[q] for q in qs]))
    known, unseen, far = intent.predict(["red dress", "crimson gown", "zzz"],
                                        np.array([[1, 0], [0.9, 0.1], [-1, 0]], dtype=np.float32))
    assert QueryIntent.top(known)[0] == "Women" and sum(known.values()) == pytest.approx(1.0)
    assert QueryIntent.top(unseen)[0] == "Women"
    assert far == {} and QueryIntent.top(far) == (None, 0.0)
    assert QueryIntent.top(engagement_intent({"x": (2.0, 1), "y": (1.0, 0)}, {"x": "Home", "y": "Men"}))[0] == "Home"


def test_an_unseen_query_borrows_its_neighbours_clicks():
    engaged = pd.DataFrame({"query": ["red dress", "mug"], "category": ["Women", "Home"], "weight": [1.0, 1.0]})
    vectors = {"red dress": [1.0, 0.0], "mug": [0.0, 1.0]}
    intent = QueryIntent.fit(engaged, lambda qs: np.array([vectors[q] for q in qs]))
    near = intent.nearest(["red dres", "red dress", "zzz"], np.array([[0.8, 0.6], [1, 0], [-1, 0]], dtype=np.float32))
    assert near[0] == [("red dress", pytest.approx(0.8)), ("mug", pytest.approx(0.6))]
    assert near[1] == [] and near[2] == []  # never itself; none above min_similarity
    pooled, searches = pool_engagement({}, 0, [({"P1": (4.0, 2)}, 10, 0.8)], weight=0.5)
    assert pooled == {"P1": (pytest.approx(1.6), 2)} and searches == pytest.approx(4.0)
    assert pool_engagement({"P2": (1.0, 1)}, 3, [({"P1": (4.0, 2)}, 10, 0.8)], weight=0.0) == ({"P2": (1.0, 1)}, 3.0)
    ranked = hybrid_rerank(["P2", "P3"], [], pooled, searches, 1, HybridParams(ctr_weight=0.95, neighbour_weight=0.5))
    assert ranked[0][0] == "P1" and ranked[0][3] == pytest.approx(1.6 / 14.0)
    from fusionrank.ranks.query_topk import query_neighbours  # query_topk's rule: among its own queries

    assert query_neighbours(["red dress", "red dres", "mug"], np.array([[2, 0], [0.8, 0.6], [0, 1]])) == [
        [("red dres", pytest.approx(0.8))], [("red dress", pytest.approx(0.8)), ("mug", pytest.approx(0.6))],
        [("red dres", pytest.approx(0.6))]]


def test_metric_definitions():
    grades = {"a": 4, "b": 1}
    assert ndcg(["a", "b"], grades, 10) == pytest.approx(1.0)
    assert ndcg(["b", "a"], grades, 10) == pytest.approx((1 + 15 / math.log2(3)) / (15 + 1 / math.log2(3)))
    assert recall(["x", "a"], grades, 10) == 0.5 and recall(["x", "a"], grades, 1) == 0.0
    assert mrr(["x", "b"], grades, 10) == 0.5 and mrr(["x"], grades, 10) == 0.0


def test_search_cases_attribute_events_to_the_latest_search_of_the_session():
    rows = [("u", "s1", "search", 10, None, "Red  Dress"), ("u", "s1", "view", 11, "P1", None),
            ("u", "s1", "click", 12, "P1", None), ("u", "s1", "search", 20, None, "mug"),
            ("u", "s1", "purchase", 21, "P3", None), ("u", "s2", "view", 5, "P9", None),
            ("v", "s1", "search", 30, None, "speaker")]  # no engagement: no case
    events = pd.DataFrame(rows, columns=["user_id", "session_id", "event_type", "event_ts", "item_id", "query"])
    grades = case_grades(search_cases(events))
    assert grades == [("red dress", {"P1": 2}), ("mug", {"P3": 4})]
    result = evaluate_rankings(grades, {"red dress": ["P1"], "mug": ["P2", "P3"]}, 10, {"mug": "typo"})
    assert result["all"]["cases"] == 2 and result["clean"]["mrr"] == 1.0 and result["noisy"]["mrr"] == 0.5


def test_query_memory_gives_an_unseen_query_what_query_topk_gives_a_frequent_one():
    from fusionrank.ranks.query_memory import QueryMemory
    from fusionrank.ranks.query_topk import hybrid_answers, query_intents, query_neighbours

    queries, searches = ["red dress", "mug", "lamp"], [10, 4, 2]
    text = np.array([[2.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)
    engaged = {"red dress": {"P1": (4.0, 2), "P2": (1.0, 1)}, "mug": {"P3": (3.0, 3)}}
    category_of = {"P1": "Women", "P2": "Women", "P3": "Home"}
    memory = QueryMemory.from_frame(QueryMemory.build(queries, searches, text, engaged).to_frame())
    assert memory.queries == sorted(queries) and memory.engaged[memory.queries.index("red dress")] == engaged["red dress"]
    unseen = np.array([[0.8, 0.6]], dtype=np.float32)
    [(intent, pooled, total)] = memory.context(["red dres"], unseen, category_of, neighbour_weight=0.5)
    # The same query among the night's own (searched once, no engagement) gets the same.
    night = queries + ["red dres"]
    night_text = np.vstack([text, unseen])
    assert intent == pytest.approx(query_intents(night, night_text, engaged, category_of)[3])
    near = query_neighbours(night, night_text)[3]
    expected, expected_total = pool_engagement({}, 0, [(engaged.get(n, {}), searches[night.index(n)], s)
                                                       for n, s in near], 0.5)
    assert set(pooled) == set(expected) == {"P1", "P2", "P3"} and total == pytest.approx(expected_total)
    assert all(pooled[i][0] == pytest.approx(expected[i][0]) and pooled[i][1] == expected[i][1] for i in pooled)
    assert QueryIntent.top(intent)[0] == "Women"
    # Through the hybrid re-rank: P1 (clicked after "red dress") leads, from no candidate list of its own.
    cfg = type("Q", (), {"rrf_k": 60.0, "lexical_weight": 1.0, "ctr_weight": 0.9, "ctr_prior": 1.0,
                         "intent_weight": 0.1, "neighbour_weight": 0.0,
                         "unseen_neighbour_weight": 0.5})()
    [ranked] = hybrid_answers(["red dres"], unseen, [["P3", "P4"]], [["P4"]], 2, cfg, memory, category_of)
    assert ranked[0][0] == "P1" and ranked[0][3] > 0
    [plain] = hybrid_answers(["red dres"], unseen, [["P3", "P4"]], [["P4"]], 2, cfg, None, category_of)
    assert [r[0] for r in plain] == ["P4", "P3"] and all(r[3] == 0 for r in plain)
    # A memory in another space (other text model) gives nothing rather than nonsense.
    assert memory.context(["x"], np.ones((1, 3), np.float32), category_of, 0.5) == [({}, {}, 0.0)]
    assert len(QueryMemory.from_frame(QueryMemory.build([], [], np.zeros((0, 2)), {}).to_frame())) == 0
