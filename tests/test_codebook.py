"""The checked-in codebook header is what ggml_tq.codebook generates, and every consumer uses the same tables."""
import re
from pathlib import Path

import numpy as np

import ggml_tq
from ggml_tq import codebook, reference

HEADER = Path(__file__).resolve().parents[1] / "ggml-tq" / "src" / "tq-codebook.h"


def _header_array(text: str, name: str) -> np.ndarray:
    m = re.search(r"#define " + re.escape(name) + r" \{(.*?)\}", text.replace("\\\n", "\n"), re.S)
    assert m, f"{name} not found in {HEADER}"
    return np.array([float(v.strip().rstrip("f")) for v in m.group(1).split(",") if v.strip()], dtype=np.float32)


def test_header_regenerates_identically():
    assert codebook.render_header() == HEADER.read_text()


def test_reference_tables_equal_header():
    text = HEADER.read_text()
    for bits in codebook.CODEBOOK_BITS:
        np.testing.assert_array_equal(reference.centroids(bits).numpy(), _header_array(text, f"TQ_CENTROIDS_{bits}BIT_INIT"))
        np.testing.assert_array_equal(reference.boundaries(bits).numpy(), _header_array(text, f"TQ_BOUNDARIES_{bits}BIT_INIT"))
    np.testing.assert_array_equal(reference.signs().numpy(), _header_array(text, "TQ_SIGNS_INIT"))


def test_c_library_centroids_equal_reference():
    for bits in codebook.CODEBOOK_BITS:
        c = ggml_tq.centroids(bits)
        assert c.dtype == np.float32 and c.shape == (1 << bits,)
        np.testing.assert_array_equal(c, codebook.lloyd_max_centroids(bits).astype(np.float32))
        assert np.all(np.diff(c) > 0)
        np.testing.assert_array_equal(c, -c[::-1])  # symmetric


def test_signs_are_the_mask_bits():
    s = codebook.signs()
    m = codebook.sign_mask()
    assert set(np.unique(s)) == {-1.0, 1.0}
    assert all((s[i] < 0) == bool((m >> i) & 1) for i in range(64))


def test_expected_mse_within_published_figures():
    assert codebook.expected_mse(codebook.lloyd_max_centroids(4)) < 0.0095
    assert codebook.expected_mse(codebook.lloyd_max_centroids(3)) < 0.0345
    assert codebook.expected_mse(codebook.lloyd_max_centroids(6)) < 0.00065
