"""The one way stored vectors are scored exactly (crossscale._vectors)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from crossscale._vectors import cosines, pair_cosines, row_norms


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 70), dim=st.integers(1, 300), queries=st.integers(1, 5), seed=st.integers(0, 2**32 - 1))
def test_a_pair_scores_the_same_bits_alone_and_among_other_queries_pairs(
    rows: int, dim: int, queries: int, seed: int
) -> None:
    """Re-scoring scores a batch's (query, chunk) pairs all together (pair_cosines); a candidate parent's chunks are
    scored against one query (cosines). A pair must get the same float32 bits both ways, whatever else is scored
    beside it: a BLAS product (``rows @ query``) does not promise that."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, dim)).astype(np.float16).astype(np.float32)  # as a float16 store reads them
    q = rng.standard_normal((queries, dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    norms = row_norms(x)
    owners = rng.integers(0, queries, rows)
    together = pair_cosines(x, norms, q[owners])
    for j in range(queries):
        mine = np.flatnonzero(owners == j)
        np.testing.assert_array_equal(together[mine], cosines(x[mine], norms[mine], q[j]))
        np.testing.assert_array_equal(together[mine], pair_cosines(x[mine], norms[mine], q[owners[mine]]))
    np.testing.assert_allclose(together, np.einsum("ij,ij->i", x / norms[:, None], q[owners]), rtol=1e-5, atol=1e-6)
    assert together.dtype == np.float32
