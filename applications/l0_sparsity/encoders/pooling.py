"""Mean pooling of token embeddings into sentence embeddings, as the MiniLM model card does."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["SentenceEncoder", "mean_pool"]


def mean_pool(token_embeddings: Tensor, attention_mask: Tensor) -> Tensor:
    """The mean of the token embeddings over the real (unpadded) tokens of each sentence.

    Args:
        token_embeddings: ``(batch, tokens, hidden)``.
        attention_mask: ``(batch, tokens)``, 1 for real tokens and 0 for padding.

    Returns:
        ``(batch, hidden)`` sentence embeddings.

    Raises:
        ValueError: If the shapes do not match.
    """
    if attention_mask.shape != token_embeddings.shape[:2]:
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)}; expected "
            f"{tuple(token_embeddings.shape[:2])} (batch, tokens) of the token embeddings."
        )
    weights = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
    return (token_embeddings * weights).sum(1) / weights.sum(1).clamp_min(1e-9)


class SentenceEncoder(nn.Module):
    """A transformer encoder followed by mean pooling: token ids to sentence embeddings.

    The encoder is any module called as ``encoder(input_ids=..., attention_mask=...)`` that
    returns the token embeddings, either as a tensor or as an object (or mapping) with a
    ``last_hidden_state`` (a Hugging Face ``BertModel``, for example). Embeddings are not
    normalized (compare them with cosine similarity).

    Args:
        encoder: The transformer encoder.

    Example:
        >>> import torch
        >>> from l0_sparsity.encoders import SentenceEncoder
        >>> class Toy(torch.nn.Module):
        ...     def forward(self, input_ids, attention_mask):
        ...         return torch.nn.functional.one_hot(input_ids, 4).float()
        >>> ids = torch.tensor([[1, 2, 0]])
        >>> SentenceEncoder(Toy())(ids, torch.tensor([[1, 1, 0]]))
        tensor([[0.0000, 0.5000, 0.5000, 0.0000]])
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def token_embeddings(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """The encoder's last hidden states ``(batch, tokens, hidden)``, before pooling.

        Args:
            input_ids: ``(batch, tokens)`` token ids.
            attention_mask: ``(batch, tokens)``, 1 for real tokens and 0 for padding.

        Returns:
            The token embeddings.
        """
        output = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        if isinstance(output, dict):
            return output["last_hidden_state"]
        if not isinstance(output, torch.Tensor):
            return output.last_hidden_state
        return output

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Sentence embeddings ``(batch, hidden)`` of a tokenized batch.

        Args:
            input_ids: ``(batch, tokens)`` token ids.
            attention_mask: ``(batch, tokens)``, 1 for real tokens and 0 for padding; ``None``
                when no sentence is padded.

        Returns:
            The mean-pooled embeddings.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return mean_pool(self.token_embeddings(input_ids, attention_mask), attention_mask)
