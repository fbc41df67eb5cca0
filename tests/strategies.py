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


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    """A valid input with a few random edits: reaches deeper than random bytes do."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        op = draw(st.sampled_from(["flip", "delete", "insert", "truncate", "splice"]))
        pos = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "truncate":
            del data[pos:]
        else:
            data[pos:pos] = draw(
                st.sampled_from(
                    [
                        b'{"',
                        b'":',
                        b"[",
                        b"]",
                        b"}",
                        b'"\\u0000"',
                        b"1e999",
                        b"-1",
                        b'"../"',
                        b'"/"',
                        b"null",
                        b"true",
                        b"\xff",
                    ]
                )
            )
    return bytes(data)


toml_text = st.one_of(
    st.text(max_size=200),
    st.lists(
        st.tuples(
            st.sampled_from(
                [
                    "root",
                    "manifest",
                    "public_key",
                    "public-key",
                    "workers",
                    "exclude",
                    "cache_dir",
                    "state_dir",
                    "clock_skew",
                    "revoked_keys",
                    "release",
                    "bogus",
                ]
            ),
            st.one_of(
                st.integers(-5, 10**6).map(str),
                st.text(max_size=20).map(lambda t: '"' + t.replace('"', "").replace("\\", "") + '"'),
                st.just("[]"),
                st.just('["a", 1]'),
                st.just("true"),
                st.just("{}"),
            ),
        ),
        max_size=6,
    ).map(lambda kv: "".join(f"{k} = {v}\n" for k, v in kv)),
)
