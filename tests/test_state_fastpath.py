"""The state file's fast path (state._parse_canonical) against the reference, protobuf text_format.

parse_state takes a C-level fast path for the canonical form TF writes and falls back to
text_format for anything else. Whatever the input, the outcome must be exactly text_format's: the
same StateFile (floats compared bit for bit), or the same StateFileError (message and line).
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from airflow_tf_ckpt.core.errors import StateFileError
from airflow_tf_ckpt.core.formats.state import (
    StateFile,
    _parse_canonical,
    _parse_text_format,
    format_state,
    parse_state,
    require_latest,
)

FIELDS = (
    "model_checkpoint_path",
    "all_model_checkpoint_paths",
    "all_model_checkpoint_timestamps",
    "last_preserved_timestamp",
)
STRING_FIELDS, NUMBER_FIELDS = FIELDS[:2], FIELDS[2:]


def _bits(x: float) -> bytes:
    return struct.pack("<d", x)


def _key(s: StateFile) -> tuple:
    return (
        s.model_checkpoint_path,
        s.all_model_checkpoint_paths,
        [_bits(t) for t in s.all_model_checkpoint_timestamps],
        _bits(s.last_preserved_timestamp),
    )


def _outcome(fn, *args) -> tuple:
    try:
        return ("ok", _key(fn(*args)))
    except StateFileError as exc:
        return ("error", str(exc), exc.line)


# ----------------------------------------------------------------------------------------------
# generated input: canonical lines, near misses, and junk

_ascii = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12)
_odd_chars = st.lists(
    st.sampled_from(
        list("\"\\'#\t\r:;, {}[]<>/.\x7f\x01éü€\u2028\x85\xa0")
        + ["\\n", '\\"', "\\101", "\\x41", "\\u00e9", "\\'", "\\"]
    ),
    max_size=4,
).map("".join)
_string_body = st.one_of(
    _ascii, st.builds(str.__add__, _ascii, _odd_chars), st.builds(str.__add__, _odd_chars, _ascii)
)
_floats = st.floats(allow_nan=True, allow_infinity=True)
_number = st.one_of(
    _floats.map(repr),
    _floats.map(str),
    st.integers(-(10**30), 10**30).map(str),
    st.sampled_from(
        [
            "0",
            "-0",
            "0.0",
            "-0.0",
            "1.",
            ".5",
            "1E5",
            "1e5",
            "+1",
            "01",
            "00.5",
            "-01.5",
            "1.0f",
            "1f",
            "inf",
            "-inf",
            "infinity",
            "nan",
            "NaN",
            "1e400",
            "-1e-400",
            "0x10",
            "1_000",
            "1.5e+07",
            "5e-324",
            "1,0",
            "true",
            '"1"',
            "1 2",
            "--1",
            "1e",
            "",
        ]
    ),
)
_space = st.sampled_from(["", " ", "  ", "\t", " \t"])


@st.composite
def _line(draw) -> str:
    kind = draw(
        st.sampled_from(
            ["string", "string", "number", "number", "raw", "comment", "unknown", "empty", "list", "junk"]
        )
    )
    if kind == "string":
        name = draw(st.sampled_from(STRING_FIELDS + NUMBER_FIELDS[:1]))
        q = draw(st.sampled_from(['"', '"', '"', "'"]))
        value = f"{q}{draw(_string_body)}{q}"
        if draw(st.booleans()):  # adjacent literals are concatenated
            value = value if draw(st.integers(0, 3)) else f'{value} "{draw(_ascii)}"'
    elif kind == "number":
        name = draw(st.sampled_from(NUMBER_FIELDS + STRING_FIELDS[:1]))
        value = draw(_number)
    elif kind == "raw":  # a canonical line, the common case
        return draw(
            st.one_of(
                st.builds(lambda f, v: f'{f}: "{v}"', st.sampled_from(STRING_FIELDS), _ascii),
                st.builds(lambda f, v: f"{f}: {v!r}", st.sampled_from(NUMBER_FIELDS), _floats),
            )
        )
    elif kind == "comment":
        return draw(_space) + "#" + draw(_ascii)
    elif kind == "unknown":
        name = draw(
            st.sampled_from(
                [
                    "bogus_field",
                    "model_checkpoint_paths",
                    "Model_checkpoint_path",
                    "all_model_checkpoint_path",
                    "[ext]",
                    "1",
                ]
            )
        )
        value = draw(st.one_of(_number, _ascii.map(lambda s: f'"{s}"')))
    elif kind == "empty":
        return draw(_space)
    elif kind == "list":
        name = draw(st.sampled_from(FIELDS))
        return f"{name}: [{', '.join(draw(st.lists(_number, max_size=3)))}]"
    else:
        return draw(st.text(max_size=20))
    sep = draw(st.sampled_from([": ", ": ", ":", " : ", ":  ", " ", ":\t"]))
    tail = draw(st.sampled_from(["", "", "", ";", ",", " ", "  # c", "\t"]))
    return f"{draw(_space) if not draw(st.integers(0, 4)) else ''}{name}{sep}{value}{tail}"


@st.composite
def _state_text(draw) -> str:
    lines = draw(st.lists(_line(), max_size=8))
    nl = draw(st.sampled_from(["\n", "\n", "\n", "\r\n", "\r"]))
    end = draw(st.sampled_from(["", nl, nl + nl]))
    return nl.join(lines) + (end if lines else draw(st.sampled_from(["", "\n", " "])))


_canonical_line = st.one_of(
    st.builds(lambda f, v: f'{f}: "{v}"', st.sampled_from(STRING_FIELDS), _ascii),
    st.builds(lambda f, v: f"{f}: {v!r}", st.sampled_from(NUMBER_FIELDS), _floats),
)


@st.composite
def _near_canonical(draw) -> str:
    """Canonical lines (what the fast path takes) with at most one line from _line() among them."""
    lines = draw(st.lists(_canonical_line, min_size=1, max_size=8))
    if draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))), draw(_line()))
    return "\n".join(lines) + draw(st.sampled_from(["\n", "\n", ""]))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # text_format on bad escapes
@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_state_text(), _near_canonical()))
@example('model_checkpoint_path: "a"\nmodel_checkpoint_path: "b"\n')  # singular field twice: the last wins
@example('model_checkpoint_path: "b"\nmodel_checkpoint_path: ""\n')  # ...even an empty one: refused
@example('model_checkpoint_path: "a"\nlast_preserved_timestamp: 0\nlast_preserved_timestamp: 5\n')
@example('model_checkpoint_path: "a"\nlast_preserved_timestamp: 5\nlast_preserved_timestamp: -0.0\n')
@example('all_model_checkpoint_paths: "a\\"b"\n')
@example('all_model_checkpoint_paths: "a" # c\n')
@example("all_model_checkpoint_timestamps: 01.5\n")
@example("all_model_checkpoint_timestamps: -0\nlast_preserved_timestamp: -0.0\n")
@example('model_checkpoint_path: "a"')
@example("")
def test_parse_state_is_text_format(text: str) -> None:
    want = _outcome(lambda t, p: require_latest(_parse_text_format(t, p), p), text, "/d/checkpoint")
    assert _outcome(parse_state, text, "/d/checkpoint") == want
    if "\x00" not in text:  # bytes with a NUL are refused before any parsing
        assert _outcome(parse_state, text.encode("utf-8"), "/d/checkpoint") == want
    fast = _parse_canonical(text)
    if fast is not None:  # the fast path never accepts what text_format refuses
        assert _outcome(_parse_text_format, text, "/d/checkpoint") == ("ok", _key(fast))


# text_format's CEscape escapes '"', "'" and "\\": TF writes those as escapes (text_format's part)
_plain = _ascii.map(lambda s: s.replace('"', "").replace("'", "").replace("\\", ""))
_paths = st.lists(_plain, max_size=20)


@settings(max_examples=500, deadline=None)
@given(
    _paths,
    st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=20),
    _plain,
    st.floats(allow_nan=False, allow_infinity=False),
)
def test_what_tf_writes_takes_the_fast_path(paths, stamps, latest, preserved) -> None:
    text = format_state(StateFile(latest, paths, stamps, preserved))
    fast = _parse_canonical(text)
    assert fast is not None, text
    assert _key(fast) == _key(_parse_text_format(text, "checkpoint"))


def test_anything_else_is_text_formats() -> None:
    # an escape, a comment, other spacing, inf: not canonical, still parsed (by text_format)
    for text in (
        'model_checkpoint_path: "a\\101"\n',
        '# c\nmodel_checkpoint_path: "a"\n',
        'model_checkpoint_path:"a"\n',
        'model_checkpoint_path: "a"\nlast_preserved_timestamp: inf\n',
    ):
        assert _parse_canonical(text) is None
        parse_state(text)
    with pytest.raises(StateFileError, match=r"/d/checkpoint:2.*bogus_field"):
        parse_state(b'model_checkpoint_path: "a"\nbogus_field: 1\n', "/d/checkpoint")


def test_large_canonical_file_is_fast() -> None:
    import time

    n = 100_000
    text = format_state(
        StateFile(
            f"ckpt-{n}",
            [f"ckpt-{i}" for i in range(1, n + 1)],
            [1.7e9 + i + 0.123456 for i in range(n)],
            1.7e9 - 1,
        )
    )
    t = time.process_time()
    s = parse_state(text.encode())
    took = time.process_time() - t
    assert (
        len(s.all_model_checkpoint_paths) == n
        and s.all_model_checkpoint_timestamps[-1] == 1.7e9 + n - 1 + 0.123456
    )
    assert took < 1.0, took  # text_format takes seconds; the fast path ~0.05 s
