"""The benchmark's answer files: each run that appends says where its rows come from.

Rows of one file may come from several machines and runs (the committed files do); a
meta line before each run's rows records which, and reading the file skips every one.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.consensus import AnswerSet, _append_meta, as_record, load_answers


def answer_set(prompt_id: str) -> AnswerSet:
    return AnswerSet(
        prompt_id=prompt_id,
        model="SmolLM2-135M-Instruct-Q4_1",
        temperature_milli=200,
        max_tokens=32,
        seeds=(1, 2),
        texts=("Paris.", "metadata is a word"),
    )


def test_meta_lines_between_runs_are_kept_and_skipped(tmp_path: Path) -> None:
    path = tmp_path / "answers.jsonl"
    for run, prompt_id in enumerate(("factual-01", "factual-02")):
        _append_meta(path, {"runner": f"run {run}", "threads": run + 1})
        with path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(as_record(answer_set(prompt_id))) + "\n")

    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    metas = [row["meta"] for row in rows if "meta" in row]
    assert [meta["runner"] for meta in metas] == ["run 0", "run 1"]
    assert all({"machine", "generated_with", "date", "completion_suffix"} <= set(m) for m in metas)
    answers = load_answers(path)
    assert sorted(key[0] for key in answers) == ["factual-01", "factual-02"]
    assert answers[("factual-02", "SmolLM2-135M-Instruct-Q4_1", 200)] == answer_set("factual-02")
