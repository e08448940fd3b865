"""A head-pruned BERT saved as a Hugging Face directory ``AutoModel`` loads (tiny BERT, MiniLM).

transformers 5 no longer reads ``config.pruned_heads``: the directory carries the ``BertModel``
subclass that does, loaded with ``trust_remote_code=True``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import transformers
from tiny_bert import tiny_bert
from torch import nn

import l0_sparsity as l0
from l0_sparsity.encoders import SentenceEncoder, load_minilm
from l0_sparsity.purging import count_params, save_pretrained_pruned
from l0_sparsity.purging.hf_directory import REMOTE_CODE_FILE

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ON, OFF = 20.0, -20.0  # log α whose test-time gates are exactly 1 / 0
EMBEDDINGS = "embeddings.*"
HEADS, UNITS = 4, 37


def _tiny_bert() -> transformers.BertModel:
    return tiny_bert(num_attention_heads=HEADS, intermediate_size=UNITS, max_position_embeddings=32)


@torch.no_grad()
def _gated(dead_heads: dict[int, list[int]], dead_units: dict[int, int] | None = None) -> nn.Module:
    """Tiny gated BERT: the listed heads off, the first ``n`` units of layer ``i`` off.

    The other gates get test-time values in (0, 1], so that folding them in is tested too.
    """
    model = l0.sparsify(_tiny_bert(), skip=EMBEDDINGS).eval()
    gen = torch.Generator().manual_seed(1)
    for i, layer in enumerate(model.encoder.layer):
        heads = layer.attention.output.dense.log_alpha
        heads.copy_(torch.empty(HEADS).uniform_(-1.0, 3.0, generator=gen))
        heads[dead_heads.get(i, [])] = OFF
        units = layer.output.dense.log_alpha
        units.fill_(ON)
        units[: (dead_units or {}).get(i, 0)] = OFF
    return model


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, 100, (2, 9), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    return ids, mask


def _hidden(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state


def _assert_same(output: torch.Tensor, reference: torch.Tensor) -> None:
    assert (output - reference).abs().max() <= 1e-5 * reference.abs().max()


def _load(directory: Path, trust: bool = True) -> nn.Module:
    return transformers.AutoModel.from_pretrained(str(directory), trust_remote_code=trust).eval()


def test_dead_heads_are_saved_as_pruned_heads_and_loaded_by_automodel(tmp_path: Path) -> None:
    model = _gated({0: [1, 2], 1: [3]})
    ids, mask = _batch()
    expected = _hidden(model, ids, mask)
    save_pretrained_pruned(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["pruned_heads"] == {"0": [1, 2], "1": [3]}
    assert config["intermediate_size"] == UNITS
    assert (tmp_path / REMOTE_CODE_FILE).is_file()
    loaded = _load(tmp_path)
    assert type(loaded).__name__ == "PrunedBertModel"
    assert loaded.encoder.layer[0].attention.self.query.out_features == 2 * 8
    assert loaded.encoder.layer[1].attention.output.dense.in_features == 3 * 8
    assert not any("l0_sparsity" in type(m).__module__ for m in loaded.modules())
    _assert_same(_hidden(loaded, ids, mask), expected)
    assert count_params(loaded) < count_params(_tiny_bert())
    torch.testing.assert_close(_hidden(model, ids, mask), expected)  # the model is not modified


def test_stock_transformers_5_refuses_the_smaller_heads_without_the_bundled_code(
    tmp_path: Path,
) -> None:
    save_pretrained_pruned(_gated({0: [0]}), tmp_path)
    with pytest.raises(RuntimeError, match="mismatch"):
        _load(tmp_path, trust=False)


def test_uniformly_pruned_ffn_units_give_a_stock_directory(tmp_path: Path) -> None:
    model = _gated({}, {0: 10, 1: 10})
    ids, mask = _batch()
    save_pretrained_pruned(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["intermediate_size"] == UNITS - 10
    assert "pruned_heads" not in config and "auto_map" not in config
    assert not (tmp_path / REMOTE_CODE_FILE).exists()
    loaded = _load(tmp_path, trust=False)
    assert type(loaded) is transformers.BertModel
    _assert_same(_hidden(loaded, ids, mask), _hidden(model, ids, mask))
    assert count_params(loaded) < count_params(_tiny_bert())


def test_heads_and_uniform_units_pruned_together(tmp_path: Path) -> None:
    model = _gated({0: [0, 3], 1: [1]}, {0: 5, 1: 5})
    ids, mask = _batch()
    save_pretrained_pruned(model, tmp_path)
    loaded = _load(tmp_path)
    assert loaded.encoder.layer[1].intermediate.dense.out_features == UNITS - 5
    _assert_same(_hidden(loaded, ids, mask), _hidden(model, ids, mask))


def test_non_uniform_ffn_widths_are_refused_naming_the_layers(tmp_path: Path) -> None:
    directory = tmp_path / "out"
    with pytest.raises(ValueError, match=r"non-uniformly.*encoder\.layer\.1\.intermediate\.dense"):
        save_pretrained_pruned(_gated({0: [1]}, {0: 3, 1: 7}), directory)
    assert not directory.exists()


def test_a_layer_losing_all_heads_keeps_a_zeroed_head_with_a_warning(tmp_path: Path) -> None:
    model = _gated({0: [2], 1: [0, 1, 2, 3]})
    ids, mask = _batch()
    with pytest.warns(UserWarning, match=r"encoder\.layer\.1\.attention\.output\.dense"):
        save_pretrained_pruned(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["pruned_heads"] == {"0": [2], "1": [1, 2, 3]}
    loaded = _load(tmp_path)
    assert loaded.encoder.layer[1].attention.self.num_attention_heads == 1
    _assert_same(_hidden(loaded, ids, mask), _hidden(model, ids, mask))


def test_a_purged_model_and_a_sentence_encoder_are_saved_alike(tmp_path: Path) -> None:
    model = _gated({0: [1, 2], 1: [3]}, {0: 4, 1: 4})
    ids, mask = _batch()
    with torch.no_grad():
        expected = SentenceEncoder(model)(ids, mask)
    save_pretrained_pruned(l0.purge(model), tmp_path / "purged")
    config = json.loads((tmp_path / "purged" / "config.json").read_text())
    assert config["pruned_heads"] == {"0": [2, 3], "1": [3]}  # counts kept, indices nominal
    save_pretrained_pruned(SentenceEncoder(model), tmp_path / "wrapped")
    for name in ("purged", "wrapped"):
        with torch.no_grad():
            _assert_same(SentenceEncoder(_load(tmp_path / name))(ids, mask), expected)


def test_a_model_that_is_not_a_bert_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"Linear.*BertModel"):
        save_pretrained_pruned(nn.Linear(2, 2), tmp_path)


def test_minilm_with_a_fixed_head_pattern_reloads_with_its_tokenizer(tmp_path: Path) -> None:
    minilm, tokenizer = load_minilm()
    dense_params = count_params(minilm)
    model = l0.sparsify(minilm, droprate_init=0.01, skip=EMBEDDINGS).eval()
    dead = {i: [i, i + 6] for i in range(6)}
    with torch.no_grad():
        for i, layer in enumerate(model.encoder.layer):
            layer.attention.output.dense.log_alpha[dead[i]] = OFF
    batch = tokenizer(
        ["Purged heads are gone for good.", "A sentence encoder."],
        padding=True,
        return_tensors="pt",
    )
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        expected = SentenceEncoder(model)(ids, mask)
    save_pretrained_pruned(SentenceEncoder(model), tmp_path, tokenizer=tokenizer)
    loaded = _load(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["pruned_heads"]["5"] == [5, 11]
    assert loaded.encoder.layer[0].attention.self.num_attention_heads == 10
    reloaded = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert reloaded(["A sentence encoder."])["input_ids"][0] == ids[1][mask[1] > 0].tolist()
    with torch.no_grad():
        _assert_same(SentenceEncoder(loaded)(ids, mask), expected)
    loaded.pooler = None  # load_minilm drops it; the directory loads a new one
    assert count_params(loaded) < dense_params
