"""Hostile files: code-carrying checkpoints, path-escaping archives, YAML that builds objects, file names full
of shell syntax, and special files (devices, FIFOs) posing as data.

The payloads only ever create a marker file (never anything else), so a test can prove they did not run.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

# --------------------------------------------------------------------------------------------- checkpoints


class _Payload:
    """Unpickling this calls `builtins.open(marker, "w")`: the marker appears if the payload ran."""

    def __init__(self, marker: Path, how: str = "open"):
        self.marker, self.how = str(marker), how

    def __reduce__(self):
        if self.how == "mkdir":
            return (os.mkdir, (self.marker,))
        if self.how == "eval":
            return (eval, (f"open({self.marker!r}, 'w')",))
        return (open, (self.marker, "w"))


def checkpoint_payloads(marker: Path) -> list[tuple[str, bytes]]:
    """(name, file bytes) of checkpoint.pt files whose loading with a full unpickler would create `marker`."""
    import numpy as np
    import torch

    from darktune.train.checkpoint import FORMAT

    def saved(obj, **kw) -> bytes:
        buf = io.BytesIO()
        torch.save(obj, buf, **kw)
        return buf.getvalue()

    looks_real = {"format": FORMAT, "model": {}, "optimizer": {}, "step": 3, "config": {}, "rng": {},
                  "loader": {}, "state": {}}
    return [
        ("torch_save_open", saved(_Payload(marker))),
        ("torch_save_mkdir", saved(_Payload(marker, "mkdir"))),
        ("torch_save_eval", saved(_Payload(marker, "eval"))),
        ("nested_in_real_checkpoint", saved({**looks_real, "config": {"out": _Payload(marker)}})),
        ("in_model_state", saved({**looks_real, "model": {"layers.0.conv.weight": _Payload(marker)}})),
        ("legacy_torch_format", saved(_Payload(marker), _use_new_zipfile_serialization=False)),
        ("plain_pickle", pickle.dumps(_Payload(marker))),
        ("numpy_object_array", saved({**looks_real, "rng": np.array([_Payload(marker)], dtype=object)})),
    ]


# ------------------------------------------------------------------------------------------------ archives


@dataclass(frozen=True)
class Member:
    name: str
    kind: str = "file"  # file | dir | symlink | hardlink | chardev | blockdev | fifo
    data: bytes = b""
    link: str = ""


def tar_gz(members: list[Member]) -> bytes:
    kinds = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
             "chardev": tarfile.CHRTYPE, "blockdev": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for m in members:
            info = tarfile.TarInfo(m.name)
            if m.kind == "file":
                info.size = len(m.data)
                tar.addfile(info, io.BytesIO(m.data))
                continue
            info.type = kinds[m.kind]
            info.linkname = m.link
            if m.kind in ("chardev", "blockdev"):
                info.devmajor, info.devminor = 1, 5  # /dev/zero
            tar.addfile(info)
    return buf.getvalue()


@dataclass(frozen=True)
class ArchiveCase:
    name: str
    members: list
    expect: str  # "ok": the wanted files are installed | "reject": DarktuneError, nothing installed


def archive_cases(prefix: str, wanted: dict[str, bytes], outside: Path) -> list[ArchiveCase]:
    """Archives holding `prefix/<name>` for each wanted file plus hostile members aimed at `outside` (an
    absolute folder the test watches), or with a wanted member that is not a regular file."""
    good = [Member(f"{prefix}/{n}", data=d) for n, d in wanted.items()]
    first = next(iter(wanted))
    rest = [m for m in good if not m.name.endswith("/" + first)]
    evil = [
        Member("../escape-dotdot.txt", data=b"x"),
        Member(f"{prefix}/../../../escape-deep.txt", data=b"x"),
        Member(str(outside / "escape-absolute.txt"), data=b"x"),
        Member(f"{prefix}/link-out", "symlink", link=str(outside)),
        Member(f"{prefix}/link-out/escape-through-link.txt", data=b"x"),
        Member(f"{prefix}/hard-passwd", "hardlink", link="/etc/passwd"),
        Member(f"{prefix}/zero", "chardev"),
        Member(f"{prefix}/disk", "blockdev"),
        Member(f"{prefix}/pipe", "fifo"),
    ]

    def with_first(kind: str, link: str = "") -> list:
        return [Member(f"{prefix}/{first}", kind, link=link)] + rest

    return [
        ArchiveCase("hostile_members_beside_good_files", evil + good, "ok"),
        ArchiveCase("wanted_is_symlink_out", with_first("symlink", str(outside / "target")), "reject"),
        ArchiveCase("wanted_is_symlink_passwd", with_first("symlink", "/etc/passwd"), "reject"),
        ArchiveCase("wanted_is_hardlink", with_first("hardlink", "/etc/passwd"), "reject"),
        ArchiveCase("wanted_is_char_device", with_first("chardev"), "reject"),
        ArchiveCase("wanted_is_block_device", with_first("blockdev"), "reject"),
        ArchiveCase("wanted_is_fifo", with_first("fifo"), "reject"),
        ArchiveCase("wanted_is_directory", with_first("dir"), "reject"),
        ArchiveCase("wanted_missing", rest + evil, "reject"),
        ArchiveCase("wanted_twice_last_is_symlink", good + [Member(f"{prefix}/{first}", "symlink",
                                                                   link="/etc/passwd")], "reject"),
        ArchiveCase("wanted_reached_by_dotdot", [Member(f"{prefix}/x/../{first}", data=wanted[first])] + rest,
                    "reject"),
    ]


# --------------------------------------------------------------------------------------------------- YAML


def _mapping_bomb(levels: int = 9, width: int = 9) -> str:
    """A YAML 'billion laughs' built from mappings: each level is `width` aliases of the one below."""
    lines = ["l0: &l0 {" + ", ".join(f"k{j}: lol" for j in range(width)) + "}"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} {{" + ", ".join(f"k{j}: *l{i - 1}" for j in range(width)) + "}")
    return "\n".join(lines) + "\ngrid: {data: x, starts: [scratch]}\n"


def _list_bomb(levels: int = 9, width: int = 9) -> str:
    lines = ["l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\ngrid: {data: x, starts: [scratch]}\n"


def _inline_bomb(key: str, levels: int) -> str:
    """A list bomb with its anchors inside one value (`cfg:` or `grid.starts:`): no top-level key to refuse
    first, so an error message quoting the value would expand every alias."""
    items = ["&l0 [" + ", ".join(["lol"] * 9) + "]"]
    items += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels)]
    value = "[" + ", ".join(items) + "]"
    if key == "cfg":
        return f"cfg: {value}\ngrid: {{data: x, starts: [scratch]}}\n"
    return f"grid:\n  data: x\n  starts: {value}\n"


def spec_cases(marker: Path) -> list[tuple[str, str]]:
    """(name, YAML text) of experiment specs that must be refused, none of them running anything."""
    m = str(marker)
    return [
        ("apply_os_system", f"grid: !!python/object/apply:os.system ['touch {m}']\n"),
        ("apply_open", f"!!python/object/apply:builtins.open ['{m}', 'w']\n"),
        ("new_open", f"grid: !!python/object/new:builtins.open ['{m}', 'w']\n"),
        ("apply_in_list", f"grid:\n  data: x\n  starts: [scratch, !!python/object/apply:builtins.open ['{m}', 'w']]\n"),
        ("name_tag", "grid:\n  data: !!python/name:os.system\n  starts: [scratch]\n"),
        ("module_tag", "grid: !!python/module:os\n"),
        ("tag_on_key",
         f"? !!python/object/apply:builtins.open ['{m}', 'w']\n: 1\ngrid: {{data: x, starts: [scratch]}}\n"),
        ("custom_include_tag", "grid: !include /etc/passwd\n"),
        ("binary_tag", "grid: !!binary aGVsbG8=\n"),
        ("mapping_alias_bomb", _mapping_bomb()),
        ("list_alias_bomb", _list_bomb()),
        ("not_utf8", "grid: caf\udce9\n"),
        ("cfg_alias_bomb", _inline_bomb("cfg", 9)),
        ("starts_alias_bomb", _inline_bomb("starts", 9)),
        ("cfg_aliases_under_budget", _inline_bomb("cfg", 4)),  # 8,289 nodes: loads, the message must stay short
        ("cfg_long_value", "cfg: [" + ", ".join(["x" * 60] * 8000) + "]\ngrid: {data: x, starts: [scratch]}\n"),
    ]


# ----------------------------------------------------------------------------------------------- names

MARKER_NAME = "PWNED"

HOSTILE_NAMES = [
    "with space.jpg",
    "  two  spaces .jpg",
    f"$(touch {MARKER_NAME}).jpg",
    f"`touch {MARKER_NAME}`.jpg",
    f"a;touch {MARKER_NAME};.jpg",
    f"a|touch {MARKER_NAME}.png",
    f"a&&touch {MARKER_NAME}.jpg",
    f"x > {MARKER_NAME}.jpg",
    "'single'.jpg",
    '"double".jpg',
    "back\\slash.jpg",
    "-rf.jpg",
    "--help.jpg",
    "*.jpg",
    "?.png",
    "[a-z].jpg",
    "~user.jpg",
    "%s%n%x.jpg",
    "{a,b}.jpg",
    "#hash.jpg",
    "\u00fcn\u00efc\u00f6d\u00e9.jpg",
    "\u7a93.jpg",
    "\U0001fa9f window.png",
    "e\u0301-combining.jpg",
    "\u202egpj.evil.jpg",
    "tab\there.jpg",
    "x" * 240 + ".jpg",
]
"""Image names that must be handled as plain data (none has a newline: darknet list files cannot hold one)."""


def names_with_newline() -> list[str]:
    return ["new\nline.jpg", "\r\ncarriage.jpg"]


# ------------------------------------------------------------------------------------------ special files

SPECIAL_TARGETS = {"dev_zero": "/dev/zero", "dev_urandom": "/dev/urandom"}
