from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossscale.index import ParentMap


def test_maps_runs_and_padding() -> None:
    parents = ParentMap.from_parents([("a", [0, 1, 2]), ("b", [3, 4]), ("c", [7, 9])])
    codes = parents.parent_codes(np.array([[0, 2, 3, 4], [5, 7, 8, 9], [-1, 10, 1, 100]]))
    names = [[parents.parent_id(c) if c >= 0 else None for c in row] for row in codes.tolist()]
    assert names == [["a", "a", "b", "b"], [None, "c", None, "c"], [None, None, "a", None]]
    assert len(parents) == 3 and "c" in parents and "d" not in parents


def test_remove_and_readd() -> None:
    parents = ParentMap.from_parents([("a", [0, 1]), ("b", [2, 3])])
    assert parents.remove("a") and not parents.remove("a")
    assert parents.parent_codes(np.array([0, 1, 2])).tolist()[:2] == [-1, -1]
    parents.add("a", [10, 11])  # re-added with new ids
    parents.add("b", [20])  # replaces what b had
    codes = parents.parent_codes(np.array([2, 3, 10, 11, 20]))
    assert [parents.parent_id(c) if c >= 0 else None for c in codes.tolist()] == [None, None, "a", "a", "b"]
    with pytest.raises(KeyError):
        parents.parent_id(0)  # a's old code
    with pytest.raises(KeyError):
        parents.parent_id(99)


def test_empty_map() -> None:
    parents = ParentMap()
    assert parents.parent_codes(np.array([0, 5])).tolist() == [-1, -1]
    assert len(parents) == 0 and parents.nbytes == 0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 5), max_size=30), st.data())
def test_agrees_with_a_dict(sizes: list[int], data: st.DataObject) -> None:
    """Chunk ids assigned as a store does (one run per parent), some parents deleted: every lookup agrees."""
    owner: dict[int, str] = {}
    pairs = []
    next_id = 0
    for p, size in enumerate(sizes):
        ids = list(range(next_id, next_id + size))
        next_id += size + data.draw(st.integers(0, 2))  # gaps: ids of parents deleted before
        pairs.append((f"p{p}", ids))
        owner.update(dict.fromkeys(ids, f"p{p}"))
    parents = ParentMap.from_parents(pairs)
    for name, ids in data.draw(st.lists(st.sampled_from(pairs), max_size=5)) if pairs else []:
        parents.remove(name)
        for cid in ids:
            owner.pop(cid, None)
    probe = np.arange(-1, next_id + 2)
    got = [parents.parent_id(c) if c >= 0 else None for c in parents.parent_codes(probe).tolist()]
    assert got == [owner.get(int(i)) for i in probe]
