"""Hypothesis strategies, kept in one place."""

from __future__ import annotations

from hypothesis import strategies as st

# Path components: any bytes but NUL and '/', excluding '.' and '..'.
component_bytes = st.binary(min_size=1, max_size=12).filter(
    lambda b: b"\x00" not in b and b"/" not in b and b not in (b".", b"..")
)
file_contents = st.binary(min_size=1, max_size=4096)


@st.composite
def byte_flip(draw: st.DrawFn, sizes: list[int]) -> tuple[int, int, int]:
    """(file index, byte offset, XOR mask) for one of the files whose sizes are given."""
    index = draw(st.integers(0, len(sizes) - 1))
    offset = draw(st.integers(0, sizes[index] - 1))
    mask = draw(st.integers(1, 255))
    return index, offset, mask
