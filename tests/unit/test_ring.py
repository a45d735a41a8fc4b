"""The consistent-hash ring that assigns pools to shard members."""

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from clusterpool.core.ring import HashRing

KEYS = [f"ns-{i % 7}/pool-{i}" for i in range(1000)]
identities = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)


def owners(ring: HashRing) -> dict[str, str | None]:
    return {k: ring.owner(k) for k in KEYS}


def test_an_empty_ring_owns_nothing():
    assert HashRing([]).owner("default/p") is None


def test_the_same_members_give_the_same_owners_in_any_order():
    assert owners(HashRing(["a", "b", "c"])) == owners(HashRing(["c", "a", "b", "a"]))


def test_owners_do_not_depend_on_the_process():
    # xxh3 is seeded with a constant, unlike hash(): these values hold in every process.
    ring = HashRing(["replica-0", "replica-1", "replica-2"])
    assert [ring.owner(f"default/pool-{i}") for i in range(6)] == [
        "replica-1",
        "replica-0",
        "replica-1",
        "replica-2",
        "replica-2",
        "replica-2",
    ]


def test_three_members_share_1000_keys_within_15_percent_of_a_third():
    counts = Counter(owners(HashRing(["replica-0", "replica-1", "replica-2"])).values())
    assert set(counts) == {"replica-0", "replica-1", "replica-2"}
    for member, n in counts.items():
        assert 1000 / 3 * 0.85 <= n <= 1000 / 3 * 1.15, (member, counts)


@settings(derandomize=True, max_examples=60, deadline=None)
@given(st.sets(identities, min_size=3, max_size=3))
def test_any_three_members_share_1000_keys_within_40_percent_of_a_third(members):
    # 100 virtual nodes per member: the share's spread is about 1/sqrt(100) of a third.
    counts = Counter(owners(HashRing(members)).values())
    for member in members:
        assert 1000 / 3 * 0.6 <= counts[member] <= 1000 / 3 * 1.4, (member, counts)


@settings(derandomize=True, max_examples=60, deadline=None)
@given(st.sets(identities, min_size=1, max_size=6), identities)
def test_a_new_member_takes_about_a_share_and_moves_no_other_key(members, new):
    if new in members:
        return
    before, after = owners(HashRing(members)), owners(HashRing([*members, new]))
    moved = [k for k in KEYS if before[k] != after[k]]
    assert all(after[k] == new for k in moved)
    fair = len(KEYS) / (len(members) + 1)
    assert 0.5 * fair <= len(moved) <= 1.6 * fair, (len(moved), fair)


@settings(derandomize=True, max_examples=60, deadline=None)
@given(st.sets(identities, min_size=2, max_size=6), st.data())
def test_removing_a_member_moves_only_its_keys(members, data):
    gone = data.draw(st.sampled_from(sorted(members)))
    before = owners(HashRing(members))
    after = owners(HashRing(members - {gone}))
    for k in KEYS:
        if before[k] != gone:
            assert after[k] == before[k]
        else:
            assert after[k] != gone and after[k] is not None


@settings(derandomize=True, max_examples=60, deadline=None)
@given(st.sets(identities, min_size=2, max_size=6), st.data())
def test_an_owner_kept_in_a_subset_stays_the_owner(members, data):
    subset = data.draw(st.sets(st.sampled_from(sorted(members)), min_size=1))
    full, part = HashRing(members), HashRing(subset)
    for k in KEYS[:200]:
        if full.owner(k) in subset:
            assert part.owner(k) == full.owner(k)
