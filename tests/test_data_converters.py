"""Converters on small hand-made files: documented schema, answers, and clear refusals of bad files."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from verl_agrae.data.cli import main as data_main
from verl_agrae.data.converters import CONVERTERS, convert, last_boxed_answer
from verl_agrae.data.rl_parquet import PROMPT_SUFFIX, RL_COLUMNS, DatasetFormatError, read_rl_parquet

SUFFIX = "Please reason step by step, and put your final answer within \\boxed{}."


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _parquet(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _png(color: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 3), color).save(buf, format="PNG")
    return buf.getvalue()


def _check_schema(rows: list[dict], data_source: str, split: str) -> None:
    for i, row in enumerate(rows):
        assert set(RL_COLUMNS) <= set(row)
        assert row["data_source"] == data_source and row["ability"] == "math"
        assert row["reward_model"]["style"] == "rule"
        assert row["reward_model"]["ground_truth"] == row["extra_info"]["answer"]
        assert row["extra_info"]["split"] == split and row["extra_info"]["index"] == i
        assert row["prompt"][-1] == {"role": "user", "content": f"{row['extra_info']['question']} {SUFFIX}"}


def test_paper_suffix_is_exact():
    assert PROMPT_SUFFIX == SUFFIX


def test_math_directory_takes_last_boxed_of_solution(tmp_path):
    # The original MATH release: one JSON object per file, nested by subject.
    src = tmp_path / "MATH" / "train"
    (src / "algebra").mkdir(parents=True)
    (src / "geometry").mkdir(parents=True)
    (src / "algebra" / "1.json").write_text(
        json.dumps(
            {
                "problem": "Compute $1/2$.",
                "solution": "First guess $\\boxed{3}$, wrong. So it is $\\boxed{\\frac{1}{2}}$.",
                "level": "Level 1",
                "type": "Algebra",
            }
        )
    )
    (src / "geometry" / "7.json").write_text(
        json.dumps({"problem": "Area?", "solution": "It is \\boxed{4\\pi}.", "level": "Level 5", "type": "Geometry"})
    )
    res = convert("math", src, tmp_path / "out" / "math_train.parquet")
    assert (res.n_read, res.n_written, res.n_duplicates, res.skipped) == (2, 2, 0, [])
    rows = read_rl_parquet(res.output)
    _check_schema(rows, "math", "train")
    assert [r["reward_model"]["ground_truth"] for r in rows] == ["\\frac{1}{2}", "4\\pi"]
    assert rows[0]["extra_info"]["level"] == "Level 1" and rows[1]["extra_info"]["type"] == "Geometry"
    assert rows[1]["extra_info"]["source_file"] == "7.json"


def test_last_boxed_answer_handles_nesting_and_absence():
    assert last_boxed_answer("a \\boxed{1} b \\boxed{\\sqrt{\\frac{2}{3}}}.") == "\\sqrt{\\frac{2}{3}}"
    assert last_boxed_answer("no box here: 5") is None
    assert last_boxed_answer(r"so $\boxed{2}, \boxed{3}$.") == "2, 3"  # one answer in two boxes


def test_math_refuses_solution_without_boxed(tmp_path):
    src = _jsonl(
        tmp_path / "math.jsonl",
        [{"problem": "p1", "solution": "\\boxed{1}"}, {"problem": "p2", "solution": "The answer is 2."}],
    )
    with pytest.raises(DatasetFormatError, match=r"math\.jsonl: row 1, column 'solution': no \\boxed\{\} answer"):
        convert("math", src, tmp_path / "o.parquet")
    assert not (tmp_path / "o.parquet").exists()
    res = convert("math", src, tmp_path / "o.parquet", skip_invalid=True)
    assert res.n_written == 1 and len(res.skipped) == 1 and "row 1" in res.skipped[0]


def test_math500_prefers_answer_column(tmp_path):
    src = _jsonl(
        tmp_path / "math500.jsonl",
        [{"problem": "p", "solution": "... \\boxed{0.5}", "answer": "\\frac12", "subject": "Algebra", "level": 2}],
    )
    rows = read_rl_parquet(convert("math500", src, tmp_path / "m.parquet", split="test").output)
    _check_schema(rows, "math500", "test")
    assert rows[0]["reward_model"]["ground_truth"] == "\\frac12"
    assert rows[0]["extra_info"]["level"] == "2"


def test_aime_capitalised_columns_and_integer_answers(tmp_path):
    src = _parquet(
        tmp_path / "aime.parquet",
        [
            {"ID": "2024-I-1", "Problem": "Find x.", "Solution": "...", "Answer": 204},
            {"ID": "2", "Problem": "Find y.", "Solution": "", "Answer": 25},
        ],
    )
    rows = read_rl_parquet(convert("aime2024", src, tmp_path / "a.parquet", split="test").output)
    _check_schema(rows, "aime2024", "test")
    assert [r["reward_model"]["ground_truth"] for r in rows] == ["204", "25"]
    assert rows[0]["extra_info"]["id"] == "2024-I-1"


def test_amc23_float_answers_become_integers(tmp_path):
    src = _jsonl(tmp_path / "amc.jsonl", [{"question": "q1", "answer": 27.0}, {"question": "q2", "answer": "3.5"}])
    rows = read_rl_parquet(convert("amc23", src, tmp_path / "a.parquet").output)
    assert [r["reward_model"]["ground_truth"] for r in rows] == ["27", "3.5"]


def test_gsm8k_answer_after_hashes(tmp_path):
    src = _jsonl(
        tmp_path / "gsm8k.jsonl",
        [{"question": "How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 1,007"}, {"question": "q", "answer": "#### -3"}],
    )
    rows = read_rl_parquet(convert("gsm8k", src, tmp_path / "g.parquet").output)
    _check_schema(rows, "gsm8k", "train")
    assert [r["reward_model"]["ground_truth"] for r in rows] == ["1007", "-3"]
    bad = _jsonl(tmp_path / "bad.jsonl", [{"question": "q", "answer": "no marker 5"}])
    with pytest.raises(DatasetFormatError, match=r"bad\.jsonl: row 0, column 'answer': no '####'"):
        convert("gsm8k", bad, tmp_path / "b.parquet")


def test_dapo_math_strips_template_and_dedupes(tmp_path):
    def dapo_prompt(problem: str) -> list[dict]:
        text = (
            "Solve the following math problem step by step. The last line of your response should be of the form "
            "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
            f'{problem}\n\nRemember to put your answer on its own line after "Answer:".'
        )
        return [{"role": "user", "content": text}]

    rows_in = [
        {"data_source": "math_dapo", "prompt": dapo_prompt("What is 2+2?"), "ability": "MATH",
         "reward_model": {"ground_truth": "4", "style": "rule-lighteval/MATH_v2"}, "extra_info": {"index": "a"}},
        {"data_source": "math_dapo", "prompt": dapo_prompt("What is 2+2?"), "ability": "MATH",
         "reward_model": {"ground_truth": "4", "style": "rule-lighteval/MATH_v2"}, "extra_info": {"index": "b"}},
        {"data_source": "math_dapo", "prompt": dapo_prompt("Let $x=3$.\n\nFind $x^2$."), "ability": "MATH",
         "reward_model": {"ground_truth": "9", "style": "rule-lighteval/MATH_v2"}, "extra_info": {"index": "c"}},
    ]  # fmt: skip
    res = convert("dapo_math", _parquet(tmp_path / "dapo.parquet", rows_in), tmp_path / "d.parquet")
    assert (res.n_read, res.n_written, res.n_duplicates) == (3, 2, 1)
    rows = read_rl_parquet(res.output)
    _check_schema(rows, "math_dapo", "train")
    assert [r["extra_info"]["question"] for r in rows] == ["What is 2+2?", "Let $x=3$.\n\nFind $x^2$."]
    assert [r["reward_model"]["ground_truth"] for r in rows] == ["4", "9"]


def test_geometry3k_images_in_verl_multimodal_format(tmp_path):
    red, blue = _png((255, 0, 0)), _png((0, 0, 255))
    src = _parquet(
        tmp_path / "geo3k.parquet",
        [
            {"images": [{"bytes": red, "path": "0.png"}], "problem": "<image>Find the angle.", "answer": "30"},
            {"images": [{"bytes": blue, "path": None}], "problem": "Find x.", "answer": "2\\sqrt{3}"},
        ],
    )
    rows = read_rl_parquet(convert("geometry3k", src, tmp_path / "g.parquet", split="test").output)
    _check_schema(rows, "geometry3k", "test")
    assert rows[0]["images"] == [{"bytes": red, "path": "0.png"}]
    assert rows[1]["images"][0]["bytes"] == blue
    # A set without <image> tags gets one per image in front, as verl's RLHFDataset expects.
    assert rows[0]["extra_info"]["question"] == "<image>Find the angle."
    assert rows[1]["extra_info"]["question"] == "<image>Find x."


def test_geometry3k_refuses_tag_count_mismatch(tmp_path):
    src = _parquet(
        tmp_path / "geo3k.parquet",
        [{"images": [{"bytes": _png((0, 0, 0)), "path": "a.png"}], "problem": "<image><image>x?", "answer": "1"}],
    )
    with pytest.raises(DatasetFormatError, match=r"geo3k\.parquet: row 0, column 'images': 1 image\(s\) but 2"):
        convert("geometry3k", src, tmp_path / "g.parquet")


def test_missing_column_names_file_and_columns(tmp_path):
    src = _jsonl(tmp_path / "aime.jsonl", [{"problem": "p", "solution": "s"}])
    with pytest.raises(DatasetFormatError, match=r"aime\.jsonl: missing answer column: expected one of .*'answer'"):
        convert("aime2025", src, tmp_path / "o.parquet")
    src = _jsonl(tmp_path / "noq.jsonl", [{"text": "p", "answer": "1"}])
    with pytest.raises(DatasetFormatError, match=r"noq\.jsonl: missing question column.*found \['text', 'answer'\]"):
        convert("amc23", src, tmp_path / "o.parquet")


def test_empty_answer_names_row_and_column(tmp_path):
    src = _jsonl(tmp_path / "amc.jsonl", [{"question": "q1", "answer": "1"}, {"question": "q2", "answer": "  "}])
    with pytest.raises(DatasetFormatError, match=r"amc\.jsonl: row 1, column 'answer': empty answer"):
        convert("amc23", src, tmp_path / "o.parquet")
    src = _jsonl(tmp_path / "amc2.jsonl", [{"question": "", "answer": "1"}])
    with pytest.raises(DatasetFormatError, match=r"amc2\.jsonl: row 0, column 'question': empty question"):
        convert("amc23", src, tmp_path / "o.parquet")


def test_bad_files_refused_clearly(tmp_path):
    bad_json = tmp_path / "broken.jsonl"
    bad_json.write_text('{"question": "q", "answer": "1"}\n{not json\n')
    with pytest.raises(DatasetFormatError, match=r"broken\.jsonl: line 2: invalid JSON"):
        convert("amc23", bad_json, tmp_path / "o.parquet")
    txt = tmp_path / "x.txt"
    txt.write_text("hello")
    with pytest.raises(DatasetFormatError, match="unsupported file type '.txt'"):
        convert("amc23", txt, tmp_path / "o.parquet")
    with pytest.raises(FileNotFoundError, match="input not found"):
        convert("amc23", tmp_path / "nope.jsonl", tmp_path / "o.parquet")
    with pytest.raises(KeyError, match="unknown converter"):
        convert("mmlu", txt, tmp_path / "o.parquet")


def test_forced_columns_and_csv(tmp_path):
    src = tmp_path / "custom.csv"
    src.write_text("id,statement,final\n1,What is 1+1?,2\n2,What is 2+3?,5\n")
    rows = read_rl_parquet(
        convert("aime2025", src, tmp_path / "c.parquet", question_column="statement", answer_column="final").output
    )
    assert [(r["extra_info"]["question"], r["reward_model"]["ground_truth"]) for r in rows] == [
        ("What is 1+1?", "2"),
        ("What is 2+3?", "5"),
    ]
    with pytest.raises(DatasetFormatError, match=r"custom\.csv: missing column 'nope'"):
        convert("aime2025", src, tmp_path / "c.parquet", question_column="nope")


def test_every_converter_is_reachable_from_the_cli(tmp_path, capsys):
    plain = _jsonl(tmp_path / "plain.jsonl", [{"question": "q", "answer": "1"}])
    sources = {
        "math": _jsonl(tmp_path / "math.jsonl", [{"problem": "q", "solution": "so \\boxed{1}"}]),
        "gsm8k": _jsonl(tmp_path / "gsm.jsonl", [{"question": "q", "answer": "#### 1"}]),
        "geometry3k": _parquet(
            tmp_path / "geo.parquet",
            [{"images": [{"bytes": _png((1, 2, 3)), "path": "a.png"}], "problem": "q", "answer": "1"}],
        ),
    }
    for name in CONVERTERS:
        out = tmp_path / f"{name}.parquet"
        assert data_main([name, str(sources.get(name, plain)), "-o", str(out), "--split", "test"]) == 0
        (row,) = read_rl_parquet(out)
        assert row["reward_model"]["ground_truth"] == "1" and row["extra_info"]["split"] == "test"
        assert row["data_source"] == CONVERTERS[name].data_source
    printed = capsys.readouterr().out
    assert "math: read 1 rows, wrote 1 to" in printed and "(0 duplicates dropped, 0 invalid rows skipped)" in printed


def test_cli_reports_bad_input_on_stderr(tmp_path, capsys):
    src = _jsonl(tmp_path / "amc.jsonl", [{"question": "q", "answer": ""}])
    assert data_main(["amc23", str(src), "-o", str(tmp_path / "o.parquet")]) == 1
    err = capsys.readouterr().err
    assert "verl-agrae data amc23: error:" in err and "row 0, column 'answer': empty answer" in err


def test_cli_no_suffix_and_arithmetic(tmp_path, capsys):
    src = _jsonl(tmp_path / "amc.jsonl", [{"question": "q", "answer": "7"}])
    assert data_main(["amc23", str(src), "-o", str(tmp_path / "o.parquet"), "--no-suffix"]) == 0
    assert read_rl_parquet(tmp_path / "o.parquet")[0]["prompt"] == [{"role": "user", "content": "q"}]
    assert data_main(["arithmetic", str(tmp_path / "ar"), "--n-train", "8", "--n-val", "4"]) == 0
    assert len(read_rl_parquet(tmp_path / "ar" / "val.parquet")) == 4
    assert "wrote 8 train rows" in capsys.readouterr().out
