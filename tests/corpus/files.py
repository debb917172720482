"""Damaged model files: mutated cfgs (on top of tests/darknet/test_cfg.py's 41) and damaged `.weights`.

Every cfg case must be refused with a DarktuneError naming the file and a line ("reject") or parse to a
network that builds ("ok"): never a crash, never an attempt to allocate gigabytes. Every weights case is
refused with a DarktuneError naming the file, saying how many floats were expected and found where the
body is whole floats.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TextCase:
    name: str
    text: str
    expect: str  # "ok" | "reject"
    note: str = ""


def cfg_mutations(base: str) -> list[TextCase]:
    """Mutations of a cfg text that holds `filters=16`, `size=3`, `width=64`, `stride=2` (maxpool), a
    `[route]` with `layers = -3`, `[upsample]`, `mask = 3,4,5`, `classes=1`, `num=6` (the tiny cfg)."""

    def sub(old: str, new: str, count: int = 1) -> str:
        assert old in base, old
        return base.replace(old, new, count)

    rows = [
        ("filters_absurd", sub("filters=16", "filters=99999999999"), "reject", "would allocate terabytes"),
        ("filters_huge", sub("filters=16", "filters=100000000"), "reject"),
        ("kernel_huge", sub("size=3", "size=100001"), "reject"),
        ("width_absurd", base.replace("width=64", "width=99999999999").replace("height=64", "height=99999999999"),
         "reject"),
        ("upsample_absurd", sub("[upsample]\nstride=2", "[upsample]\nstride=100000"), "reject"),
        ("route_10000_times", sub("layers = -3", "layers = " + ",".join(["-3"] * 10000)), "ok",
         "absurd but valid: 640,000 channels, 10M parameters"),
        ("num_absurd", base.replace("num=6", "num=100000000"), "reject", "must not build a 10^8 mask"),
        ("filters_5000_digits", sub("filters=16", "filters=" + "9" * 5000), "reject"),
        ("momentum_5000_digits", sub("momentum=0.9", "momentum=" + "9" * 5000), "reject"),
        ("classes_negative", base.replace("classes=1", "classes=-1"), "reject"),
        ("classes_huge", base.replace("classes=1", "classes=999999999"), "reject"),
        ("mask_empty", sub("mask = 3,4,5", "mask ="), "reject"),
        ("mask_negative", sub("mask = 3,4,5", "mask = -1,4,5"), "reject"),
        ("route_empty", sub("layers = -3", "layers ="), "reject"),
        ("nul_in_value", sub("filters=16", "filters=1\x006"), "reject"),
        ("anchors_zero", base.replace("6,8,", "0,0,", 2), "reject"),
        ("anchors_negative", base.replace("6,8,", "-6,8,", 2), "reject"),
        ("anchors_nan", base.replace("6,8,", "nan,8,", 2), "reject"),
        ("channels_zero", sub("channels=3", "channels=0"), "reject"),
        ("groups_zero", sub("filters=16", "filters=16\ngroups=0"), "reject"),
        ("pad_seven", sub("pad=1", "pad=7"), "reject"),
        ("maxpool_size_zero", sub("[maxpool]\nsize=2", "[maxpool]\nsize=0"), "reject"),
        ("upsample_zero", sub("[upsample]\nstride=2", "[upsample]\nstride=0"), "reject"),
        ("unknown_key_unicode", sub("filters=16", "f\u00eflters=16"), "reject"),
        ("utf16", "", "reject", "written as UTF-16 by the test"),
        ("only_comments", "# nothing\n; here\n", "reject"),
        ("section_only_brackets", "[]\n", "reject"),
        ("crlf_line_ends", base.replace("\n", "\r\n"), "ok"),
        ("cr_line_ends", base.replace("\n", "\r"), "ok"),
        ("long_trailing_spaces", sub("filters=16", "filters=16" + " " * 100_000), "ok"),
        ("comments_everywhere", base.replace("\n", "  # c\n"), "ok"),
        ("mask_repeated", sub("mask = 3,4,5", "mask = 3,3,3"), "ok", "darknet allows it"),
        ("channels_one", sub("channels=3", "channels=1"), "ok"),
    ]
    return [TextCase(r[0], r[1], r[2], r[3] if len(r) > 3 else "") for r in rows]


@dataclass(frozen=True)
class WeightsCase:
    name: str
    data: bytes
    floats_expected: int | None = None  # when set, the message must name expected and found float counts
    note: str = ""
    prefix_ok: bool = False  # a reader of the first N layers only (darknet's partial, upto=N) may accept it


def _header(major: int, minor: int, revision: int = 0, seen: int = 0, seen64: bool | None = None) -> bytes:
    head = np.array([major, minor, revision], "<i4").tobytes()
    wide = (major * 10 + minor >= 2) if seen64 is None else seen64
    return head + np.array([seen], "<u8" if wide else "<u4").tobytes()


def weights_cases(good: bytes) -> list[WeightsCase]:
    """Damaged versions of `good` (a complete 0.2 weights file: 20 header bytes + floats)."""
    n = len(good)
    body = good[20:]
    floats = len(body) // 4
    cuts = [0, 5, 12, 16, 19, 20, 21, 20 + 4 * (floats // 2), n - 4, n - 1]  # 10 cut points
    cases = []
    for cut in cuts:
        whole = cut >= 20 and (cut - 20) % 4 == 0
        cases.append(WeightsCase(f"cut_at_{cut}_of_{n}", good[:cut], (cut - 20) // 4 if whole else None))
    nan_body = np.frombuffer(body, "<f4").copy()
    nan_body[len(nan_body) // 3] = np.nan
    inf_body = nan_body.copy()
    inf_body[len(nan_body) // 3] = np.inf
    cases += [
        WeightsCase("one_byte_extra", good + b"\x00"),
        WeightsCase("one_float_extra", good + b"\x00" * 4, floats + 1, prefix_ok=True),
        WeightsCase("version_negative", _header(-1, 2) + body),
        WeightsCase("version_major_1000", _header(1000, 2) + body),
        WeightsCase("version_minor_5000", _header(0, 5000) + body),
        WeightsCase("seen_32bit_header_on_64bit_file", _header(0, 1) + body[4:], floats - 1,
                    note="an old 0.1 header: 4 bytes less header, so one float too few"),
        WeightsCase("header_says_64bit_seen_short", _header(0, 2)[:16]),
        WeightsCase("seen_2_64_minus_1", _header(0, 2, seen=2**64 - 1) + body, note="overflowed on the next write"),
        WeightsCase("seen_2_48_plus_1", _header(0, 2, seen=2**48 + 1) + body),
        WeightsCase("nan_value", good[:20] + nan_body.tobytes(), note="a NaN among the floats"),
        WeightsCase("inf_value", good[:20] + inf_body.tobytes()),
        WeightsCase("png_renamed", b"\x89PNG\r\n\x1a\n" + b"\x00" * 4096),
        WeightsCase("text_renamed", b"<html>404 Not Found</html>\n"),
    ]
    return cases
