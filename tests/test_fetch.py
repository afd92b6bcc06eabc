"""``trainer fetch``: downloads through file:// URLs (no network in tests)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from trainer import fetch as fetch_module
from trainer.__main__ import main
from trainer.fetch import REGISTRY, FetchError, download

CSV = "prompt,completion\nおはよう,ごきげんよう\n"


def run_fetch(*args: object) -> int:
    return main(["fetch", *map(str, args)])


def make_zip(path: Path, members: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in members.items():
            zf.writestr(name, text)
    return path


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_the_registry_lists_the_four_datasets_with_licenses():
    assert set(REGISTRY) == {"ojousama", "zundamon", "open2ch-ranking", "nucc"}
    assert all(d.license and d.url.startswith(("http://", "https://")) for d in REGISTRY.values())
    assert REGISTRY["nucc"].requires_acceptance
    assert not any(d.requires_acceptance for name, d in REGISTRY.items() if name != "nucc")


def test_a_file_url_downloads_into_dest_and_prints_the_license(tmp_path, capsys):
    src = tmp_path / "mirror.csv"
    src.write_text(CSV, encoding="utf-8")
    dest = tmp_path / "raw"
    assert run_fetch("ojousama", "--dest", dest, "--url", src.as_uri()) == 0
    target = dest / "ojousama" / "ojousamatalkscript200.csv"
    assert target.read_text(encoding="utf-8") == CSV
    assert files_under(dest) == ["ojousama/ojousamatalkscript200.csv"]
    assert "license: MIT" in capsys.readouterr().out


def test_an_existing_download_is_reused_unless_forced(tmp_path, capsys):
    src = tmp_path / "mirror.csv"
    src.write_text(CSV, encoding="utf-8")
    dest = tmp_path / "raw"
    assert run_fetch("zundamon", "--dest", dest, "--url", src.as_uri()) == 0
    src.write_text(CSV + "こんばんは,ごきげんよう\n", encoding="utf-8")
    assert run_fetch("zundamon", "--dest", dest, "--url", src.as_uri()) == 0
    target = dest / "zundamon" / "zundamon_prof_homu_20230615.csv"
    assert target.read_text(encoding="utf-8") == CSV
    assert "already there" in capsys.readouterr().out
    assert run_fetch("zundamon", "--dest", dest, "--url", src.as_uri(), "--force") == 0
    assert "こんばんは" in target.read_text(encoding="utf-8")


def test_a_zip_is_extracted_beside_it(tmp_path):
    archive = make_zip(
        tmp_path / "ranking.zip", {"ranking/test.tsv": "1\tやあ\tどうも\n", "ranking/dev.tsv": "0\ta\tb\n"}
    )
    dest = tmp_path / "raw"
    assert run_fetch("open2ch-ranking", "--dest", dest, "--url", archive.as_uri()) == 0
    assert files_under(dest / "open2ch-ranking") == ["ranking.zip", "ranking/dev.tsv", "ranking/test.tsv"]
    assert (dest / "open2ch-ranking" / "ranking" / "test.tsv").read_text(
        encoding="utf-8"
    ) == "1\tやあ\tどうも\n"


def test_nucc_needs_the_license_accepted(tmp_path, capsys):
    archive = make_zip(tmp_path / "nucc.zip", {"nucc/data001.txt": "F001：こんにちは。\n"})
    dest = tmp_path / "raw"
    assert run_fetch("nucc", "--dest", dest, "--url", archive.as_uri()) == 2
    captured = capsys.readouterr()
    assert "education and research use only" in captured.out
    assert "--accept-license" in captured.err
    assert not dest.exists()
    assert run_fetch("nucc", "--dest", dest, "--url", archive.as_uri(), "--accept-license") == 0
    assert (dest / "nucc" / "nucc" / "data001.txt").read_text(encoding="utf-8") == "F001：こんにちは。\n"


def test_a_missing_file_is_one_line_exit_1_and_leaves_nothing(tmp_path, capsys):
    dest = tmp_path / "raw"
    assert run_fetch("ojousama", "--dest", dest, "--url", (tmp_path / "nope.csv").as_uri()) == 1
    err = capsys.readouterr().err
    assert err.startswith("fetch: could not download file://") and err.count("\n") == 1
    assert files_under(dest) == []


def test_an_unsupported_scheme_is_refused(tmp_path, capsys):
    assert run_fetch("ojousama", "--dest", tmp_path, "--url", "ftp://example.invalid/x.csv") == 1
    assert "unsupported URL" in capsys.readouterr().err


class _BrokenResponse(io.BytesIO):
    """A response that dies halfway, like a dropped connection."""

    def read(self, size: int = -1) -> bytes:
        if self.tell() >= 4:
            raise ConnectionResetError("connection reset by peer")
        return super().read(4)


def test_a_download_cut_halfway_leaves_no_partial_file(tmp_path, monkeypatch):
    monkeypatch.setattr(
        fetch_module.urllib.request, "urlopen", lambda url, timeout: _BrokenResponse(b"x" * 100)
    )
    target = tmp_path / "out" / "data.csv"
    with pytest.raises(FetchError, match="connection reset"):
        download("https://example.invalid/data.csv", target)
    assert files_under(tmp_path) == []


def test_a_git_lfs_pointer_is_not_taken_for_the_file(tmp_path):
    pointer = tmp_path / "pointer.zip"
    pointer.write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 1\n", encoding="utf-8"
    )
    with pytest.raises(FetchError, match="Git LFS pointer"):
        download(pointer.as_uri(), tmp_path / "out" / "ranking.zip")
    assert not (tmp_path / "out" / "ranking.zip").exists()


def test_a_corrupt_zip_is_an_error_and_is_removed(tmp_path, capsys):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    dest = tmp_path / "raw"
    assert run_fetch("open2ch-ranking", "--dest", dest, "--url", bad.as_uri()) == 1
    assert "not a readable zip" in capsys.readouterr().err
    assert files_under(dest) == []


def test_a_zip_pointing_outside_the_folder_is_refused(tmp_path, capsys):
    archive = make_zip(tmp_path / "evil.zip", {"ok.txt": "fine", "../../escaped.txt": "bad"})
    dest = tmp_path / "raw"
    assert run_fetch("open2ch-ranking", "--dest", dest, "--url", archive.as_uri()) == 1
    assert "outside the folder" in capsys.readouterr().err
    assert not (tmp_path / "escaped.txt").exists()
    assert files_under(dest) == []  # nothing half-extracted either


class _Cp932ZipInfo(zipfile.ZipInfo):
    """Writes the name in CP932 without the UTF-8 flag, as Japanese Windows zip tools do."""

    def _encodeFilenameFlags(self):
        return self.filename.encode("cp932"), self.flag_bits


def test_cp932_member_names_are_restored(tmp_path):
    archive = tmp_path / "jp.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(_Cp932ZipInfo("会話/データ.txt"), "中身")
    with zipfile.ZipFile(archive) as zf:
        assert zf.namelist() != ["会話/データ.txt"]  # Python alone reads mojibake
    dest = tmp_path / "raw"
    assert run_fetch("open2ch-ranking", "--dest", dest, "--url", archive.as_uri()) == 0
    assert (dest / "open2ch-ranking" / "会話" / "データ.txt").read_text(encoding="utf-8") == "中身"


def test_list_prints_every_dataset(capsys):
    assert run_fetch("--list") == 0
    out = capsys.readouterr().out
    assert all(name in out for name in REGISTRY) and "education and research use only" in out
