"""spec.models is unique per namespace: the pool created first keeps a model, a later one
reports the conflict naming the other pool and the fix (core/models.py)."""

from clusterpool.core.models import ModelClaim, claims_from, models_condition, ownership

FIRST = ModelClaim("first", "2026-01-01T00:00:00Z", ("llama-3-8b", "qwen"))


def test_a_pool_alone_serves_every_model_it_declares_in_order():
    owned = ownership(ModelClaim("p", "2026-01-01T00:00:00Z", ("b", "a", "b")), [])
    assert owned.served == ("b", "a") and owned.held_elsewhere == ()


def test_the_later_pool_loses_the_shared_model_and_keeps_the_rest():
    later = ModelClaim("later", "2026-01-02T00:00:00Z", ("qwen", "mistral"))
    claims = [FIRST, later]
    assert ownership(later, claims).served == ("mistral",)
    assert ownership(later, claims).held_elsewhere == (("qwen", "first"),)
    assert ownership(FIRST, claims).served == ("llama-3-8b", "qwen")  # the earlier pool keeps it


def test_the_name_breaks_a_tie_of_creation_times():
    a = ModelClaim("a", "2026-01-01T00:00:00Z", ("m",))
    b = ModelClaim("b", "2026-01-01T00:00:00Z", ("m",))
    assert ownership(a, [a, b]).served == ("m",)
    assert ownership(b, [a, b]).held_elsewhere == (("m", "a"),)


def test_the_oldest_claim_holds_a_model_however_many_pools_claim_it():
    pools = [ModelClaim(f"p{i}", f"2026-01-0{i}T00:00:00Z", ("m",)) for i in (3, 1, 2)]
    assert [ownership(p, pools).held_elsewhere for p in pools] == [(("m", "p1"),), (), (("m", "p1"),)]


def test_the_conflict_condition_names_the_model_the_other_pool_and_the_fix():
    later = ModelClaim("later", "2026-01-02T00:00:00Z", ("qwen", "llama-3-8b", "mistral"))
    condition = models_condition("later", True, ownership(later, [FIRST, later]))
    assert condition is not None
    assert (condition.type, condition.status, condition.reason) == ("ModelsConflict", "True", "ModelServedElsewhere")
    assert "spec.models of pool later: qwen, llama-3-8b already served by pool first" in condition.message
    assert "remove them from spec.models here, or from the other pool" in condition.message
    ok = models_condition("first", True, ownership(FIRST, [FIRST, later]))
    assert ok is not None and (ok.status, ok.message) == ("False", "serves llama-3-8b, qwen")
    assert models_condition("none", False, ownership(ModelClaim("none", "", ()), [FIRST])) is None


def test_claims_are_read_from_stored_pools_leaving_out_what_is_not_a_name():
    entries = [
        {"name": "a", "created": "2026-01-01T00:00:00Z", "models": ["m", 7, None]},
        {"name": None, "models": ["m"]},
        {"name": "b", "created": None, "models": "m"},
    ]
    assert claims_from(entries) == (ModelClaim("a", "2026-01-01T00:00:00Z", ("m",)),)
