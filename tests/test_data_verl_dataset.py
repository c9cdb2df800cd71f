"""Our parquet files load through verl 0.9.1's own RLHFDataset (the trainer's reader), text and multimodal."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from verl_agrae.data.arithmetic import write_arithmetic_dataset
from verl_agrae.data.converters import convert

pytest.importorskip("verl.utils.dataset.rl_dataset")


def _dataset(path, tokenizer, tmp_path, processor=None):
    from verl.utils.dataset.rl_dataset import RLHFDataset

    config = OmegaConf.create(
        {"cache_dir": str(tmp_path / "cache"), "max_prompt_length": 256, "filter_overlong_prompts": False}
    )
    return RLHFDataset(str(path), tokenizer, config, processor=processor)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_arithmetic_rows_through_rlhf_dataset(tmp_path, tokenizer):
    paths = write_arithmetic_dataset(tmp_path, n_train=6, n_val=2, seed=0)
    ds = _dataset(paths["train"], tokenizer, tmp_path)
    assert len(ds) == 6
    item = ds[3]
    assert item["data_source"] == "arithmetic"
    assert item["raw_prompt"][0]["role"] == "user" and item["raw_prompt"][0]["content"].endswith("\\boxed{}.")
    assert item["index"] == 3
    assert item["reward_model"]["ground_truth"] == item["extra_info"]["answer"]
    # The chat template renders the prompt into token ids without error.
    ids = tokenizer.apply_chat_template(item["raw_prompt"], add_generation_prompt=True, tokenize=True)
    assert len(ids) > 0


def test_geometry3k_rows_give_verl_image_messages(tmp_path, tokenizer):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (5, 4), (0, 128, 255)).save(buf, format="PNG")
    src = tmp_path / "geo.parquet"
    pq.write_table(
        pa.Table.from_pylist(
            [{"images": [{"bytes": buf.getvalue(), "path": "g.png"}], "problem": "Find x.", "answer": "3"}]
        ),
        src,
    )
    out = convert("geometry3k", src, tmp_path / "g.parquet").output
    # verl only checks that a processor exists before building multimodal messages.
    ds = _dataset(out, tokenizer, tmp_path, processor=object())
    content = ds[0]["raw_prompt"][0]["content"]
    assert [part["type"] for part in content] == ["image", "text"]
    assert content[0]["image"].size == (5, 4)
    assert content[1]["text"].startswith("Find x. Please reason step by step")
    assert json.dumps(ds[0]["reward_model"]) == json.dumps({"style": "rule", "ground_truth": "3"})
