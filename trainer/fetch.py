"""Download the public datasets the personas are trained on, at the user's request.

The project ships none of them (NUCC may not be redistributed at all), so ``fetch`` gets
them from upstream, prints each one's license, and refuses NUCC until the user accepts its
terms. Only the standard library is used: a download needs no extra dependency.
"""

from __future__ import annotations

import http.client
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from bot.ops.filemode import respect_umask

CHUNK_BYTES = 1 << 16
TIMEOUT_S = 60.0
ALLOWED_SCHEMES = ("http", "https", "file")  # file:// for mirrors and for the tests
_LFS_POINTER = b"version https://git-lfs"
ZIP_UTF8_FLAG = 0x800


@dataclass(frozen=True)
class Dataset:
    name: str
    url: str
    filename: str
    license: str
    note: str
    requires_acceptance: bool = False  # the user must pass --accept-license

    @property
    def is_zip(self) -> bool:
        return self.filename.lower().endswith(".zip")


REGISTRY: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset(
            "ojousama",
            "https://raw.githubusercontent.com/matsuvr/OjousamaTalkScriptDataset/main/ojousamatalkscript200.csv",
            "ojousamatalkscript200.csv",
            "MIT (matsuvr/OjousamaTalkScriptDataset)",
            "prompt/completion pairs; prepare with --format pairs",
        ),
        Dataset(
            "zundamon",
            "https://raw.githubusercontent.com/takaaki-inada/rinna-3.6b-hello-zundamon-ai/main/datasets/zundamon_prof_homu_20230615.csv",
            "zundamon_prof_homu_20230615.csv",
            "MIT (takaaki-inada/rinna-3.6b-hello-zundamon-ai)",
            "instruction/output pairs; the 暁美ほむら rows are off-persona: prepare with "
            "--format pairs --exclude-regex 暁美ほむら",
        ),
        Dataset(
            "open2ch-ranking",
            # github.com/…/raw/ rather than raw.githubusercontent.com: it follows Git LFS too.
            "https://github.com/1never/open2ch-dialogue-corpus/raw/main/ranking.zip",
            "ranking.zip",
            "Apache-2.0 (1never/open2ch-dialogue-corpus); cite 稲葉 2019 as its README asks",
            "the response-ranking dev/test TSVs; prepare with --format open2ch",
        ),
        Dataset(
            "nucc",
            "http://mmsrv.ninjal.ac.jp/nucc/nucc.zip",
            "nucc.zip",
            "名大会話コーパス (NUCC), NINJAL: education and research use only; no redistribution",
            "use it only for education or research and never redistribute it (this project "
            "never ships it); prepare with --format nucc",
            requires_acceptance=True,
        ),
    )
}


class FetchError(Exception):
    """A download or extraction that failed; the message is one line for the user."""


def _check_url(url: str) -> None:
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise FetchError(f"unsupported URL {url!r}: use http, https or file")


def download(url: str, target: Path, timeout: float = TIMEOUT_S) -> int:
    """Stream ``url`` into a temp file beside ``target`` and rename it into place, so an
    interrupted download never leaves a partial ``target``. Returns the size in bytes."""
    _check_url(url)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        size = 0
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(CHUNK_BYTES):
                out.write(chunk)
                size += len(chunk)
        if size < 1024 and tmp.read_bytes().startswith(_LFS_POINTER):
            raise FetchError(
                f"{url} is a Git LFS pointer, not the file itself; try the github.com/…/raw/ URL"
            )
        respect_umask(tmp)
        os.replace(tmp, target)
        return size
    except urllib.error.HTTPError as exc:
        raise FetchError(f"could not download {url}: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise FetchError(f"could not download {url}: {exc.reason}") from exc
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise FetchError(f"could not download {url}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)


def _member_name(info: zipfile.ZipInfo) -> str:
    """Zips made on Japanese Windows store CP932 names without the UTF-8 flag, which
    Python decodes as CP437; undo that so ``データ.txt`` is not extracted as mojibake."""
    if info.flag_bits & ZIP_UTF8_FLAG:
        return info.filename
    try:
        return info.filename.encode("cp437").decode("cp932")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return info.filename


def _safe_parts(name: str) -> tuple[str, ...]:
    """The path parts of a member, refusing any that would land outside the folder."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise FetchError(f"refusing to extract {name!r}: it points outside the folder")
    return tuple(p for p in path.parts if p not in ("", "."))


def extract_zip(archive: Path, dest: Path) -> list[Path]:
    """Extract into a temp folder inside ``dest`` and move the result into place only
    when every member was written, so a broken zip leaves ``dest`` as it was."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise FetchError(f"{archive} is not a readable zip: {exc}") from exc
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
    try:
        with zf:
            written = []
            for info in zf.infolist():
                parts = _safe_parts(_member_name(info))
                if not parts:
                    continue
                path = staging.joinpath(*parts)
                if info.is_dir():
                    path.mkdir(parents=True, exist_ok=True)
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(path, "wb") as out:
                    shutil.copyfileobj(src, out, CHUNK_BYTES)
                written.append(Path(*parts))
        for entry in staging.iterdir():
            final = dest / entry.name
            if final.is_dir() and not final.is_symlink():
                shutil.rmtree(final)
            elif final.exists() or final.is_symlink():
                final.unlink()
            os.replace(entry, final)
        return [dest / p for p in written]
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise FetchError(f"could not extract {archive}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@dataclass(frozen=True)
class FetchResult:
    path: Path  # the downloaded file
    size: int  # bytes downloaded; 0 when an earlier download was reused
    extracted: tuple[Path, ...] = ()


def fetch(dataset: Dataset, dest: Path, url: str | None = None, force: bool = False) -> FetchResult:
    """Download ``dataset`` into ``dest/<name>/`` (and extract it there if it is a zip).

    An earlier complete download is reused unless ``force``; downloads are atomic, so a
    file that exists is always complete.
    """
    folder = dest / dataset.name
    target = folder / dataset.filename
    size = 0
    if force or not target.exists():
        size = download(url or dataset.url, target)
    extracted: tuple[Path, ...] = ()
    if dataset.is_zip:
        try:
            extracted = tuple(extract_zip(target, folder))
        except FetchError:
            target.unlink(missing_ok=True)  # a corrupt archive would be reused next time
            raise
    return FetchResult(target, size, extracted)
