"""Hand-written scripts: speakers, scenes, continuation lines and the persona."""

from __future__ import annotations

from pathlib import Path

from trainer.convert import collect_files, convert_files
from trainer.convert.common import ConvertOptions, Dialogue, Report

SCENES = Path(__file__).parent / "fixtures" / "convert" / "script" / "scenes.txt"


def convert(path: Path, **options) -> tuple[list[Dialogue], Report]:
    report = Report()
    files = collect_files("script", [path])
    return list(convert_files("script", files, ConvertOptions(**options), report)), report


def test_each_scene_is_a_dialogue_with_both_colons_and_wrapped_lines():
    dialogues, report = convert(SCENES)
    assert [d.id for d in dialogues] == ["scenes:1", "scenes:6", "scenes:10"]
    assert [(t.speaker, t.text) for t in dialogues[0].turns] == [
        ("魔理沙", "よう、霊夢。今日も暇そうだな。"),
        ("霊夢", "暇じゃないわよ。掃除してるの。"),
        ("魔理沙", "時間は12:30だぜ、昼飯にしよう。"),  # only the first colon splits
    ]
    assert [(t.speaker, t.text) for t in dialogues[1].turns] == [("霊夢", "お茶でも飲む？一人で飲むけど。")]
    assert report.bad_rows == [f"{SCENES}:9: a scene must start with '話者: 台詞'"]


def test_persona_speaker_is_set_and_scenes_without_them_are_skipped():
    dialogues, report = convert(SCENES, persona_speaker="魔理沙")
    assert [d.id for d in dialogues] == ["scenes:1", "scenes:10"]
    assert {d.persona for d in dialogues} == {"魔理沙"}
    assert report.skipped["no persona text"] == 1


def test_a_sentence_with_punctuation_before_a_colon_is_not_a_speaker(tmp_path):
    path = tmp_path / "wrap.txt"
    path.write_text("霊夢: 言っておくけど、\n注意。理由: 危ないから\n", encoding="utf-8")
    [dialogue], _ = convert(path)
    assert [(t.speaker, t.text) for t in dialogue.turns] == [
        ("霊夢", "言っておくけど、注意。理由: 危ないから")
    ]
