"""English sentences that ship with Python: the help topics and the standard library's docstrings.

The text behind ``help("topics")`` is prose about the language (some 465 k characters). Its
sentences are a real, offline corpus for distilling a sentence encoder: paragraphs that hold code
(an interpreter prompt, an assignment or a keyword at the start of a line, braces, grammar
rules) are dropped, the rest is split after ``.``, ``!`` or ``?`` before a capital letter, and a
sentence is kept when it starts with a capital letter, ends with one of those marks and has
40 to 300 characters; duplicates are dropped, first occurrence kept, topics in sorted order.

A second, larger source is :func:`docstring_sentences`: the prose of the docstrings in the
standard library's own source files (read with :mod:`ast`, never imported), the same filters
applied; it adds training text, while the help topics' held-out sentences stay the evaluation set.

The held-out rule is fixed and independent of order: a sentence is held out when the CRC-32 of
its UTF-8 bytes is divisible by ``heldout_every``, so a sentence is on the same side of the split
in every Python version that ships it.

Example:
    >>> from l0_sparsity.data.text import help_topic_sentences, split_sentences
    >>> split = split_sentences(help_topic_sentences())
    >>> len(split.train) > 10 * len(split.heldout) // 2
    True
"""

from __future__ import annotations

import ast
import re
import sysconfig
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SentenceSplit", "docstring_sentences", "help_topic_sentences", "split_sentences"]

_CODE_LINE = re.compile(
    r"^\s*(def|class|import|from|for|if|while|return|print|try|except|with|async|await|lambda)\b"
    r"|^\s*@|>>>|\.\.\.|^\s*[\w.\[\]]+\s*=|[{}]|::="
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")


def _prose_paragraphs(text: str) -> Iterable[str]:
    """The paragraphs of ``text`` without code, each joined into one line."""
    for paragraph in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in paragraph.split("\n") if line.strip()]
        if lines and not any(_CODE_LINE.search(line) for line in lines):
            yield " ".join(lines)


def _check_lengths(min_chars: int, max_chars: int) -> None:
    if not 0 < min_chars <= max_chars:
        raise ValueError(
            f"need 0 < min_chars <= max_chars, got min_chars={min_chars}, max_chars={max_chars}."
        )


def _sentences(texts: Iterable[str], min_chars: int, max_chars: int) -> list[str]:
    """The prose sentences of ``texts`` that pass the filters, duplicates removed, in order."""
    seen: set[str] = set()
    sentences: list[str] = []
    for text in texts:
        for paragraph in _prose_paragraphs(text):
            for sentence in _SENTENCE_END.split(paragraph):
                sentence = sentence.strip()
                if (
                    min_chars <= len(sentence) <= max_chars
                    and sentence[0].isupper()
                    and sentence[-1] in ".!?"
                    and sentence not in seen
                ):
                    seen.add(sentence)
                    sentences.append(sentence)
    return sentences


def help_topic_sentences(min_chars: int = 40, max_chars: int = 300) -> list[str]:
    """The prose sentences of Python's help topics, in a fixed order.

    Args:
        min_chars: Shortest sentence kept (characters).
        max_chars: Longest sentence kept (characters).

    Returns:
        The sentences, duplicates removed (about 1,700 with the defaults on Python 3.11).

    Raises:
        ValueError: If ``min_chars`` is not positive or exceeds ``max_chars``.
    """
    _check_lengths(min_chars, max_chars)
    from pydoc_data.topics import topics

    return _sentences((topics[key] for key in sorted(topics)), min_chars, max_chars)


_SKIPPED_STDLIB_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idlelib"})


def _stdlib_docstrings() -> Iterable[str]:
    """The docstrings of the standard library's modules, classes and functions, in path order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        if _SKIPPED_STDLIB_DIRS.intersection(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # a file written for another Python, or not UTF-8: not prose we need
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                docstring = ast.get_docstring(node)
                if docstring:
                    yield docstring


def docstring_sentences(
    min_chars: int = 40, max_chars: int = 300, exclude: Iterable[str] = ()
) -> list[str]:
    """The prose sentences of the standard library's docstrings, in a fixed order.

    The source files under ``sysconfig.get_paths()["stdlib"]`` are parsed with :mod:`ast` (no
    module is imported), test suites, IDLE and installed packages skipped, and their module,
    class and function docstrings go through the filters of :func:`help_topic_sentences`.

    Args:
        min_chars: Shortest sentence kept (characters).
        max_chars: Longest sentence kept (characters).
        exclude: Sentences to leave out, e.g. the held-out help-topic sentences, so that
            training text never contains an evaluation sentence.

    Returns:
        The sentences, duplicates removed (about 9,400 with the defaults on Python 3.11).

    Raises:
        ValueError: If ``min_chars`` is not positive or exceeds ``max_chars``.
    """
    _check_lengths(min_chars, max_chars)
    excluded = set(exclude)
    return [
        sentence
        for sentence in _sentences(_stdlib_docstrings(), min_chars, max_chars)
        if sentence not in excluded
    ]


@dataclass(frozen=True)
class SentenceSplit:
    """Training and held-out sentences.

    Attributes:
        train: The sentences to train on.
        heldout: The sentences to evaluate on (never trained on).
    """

    train: tuple[str, ...]
    heldout: tuple[str, ...]


def split_sentences(sentences: Sequence[str], heldout_every: int = 10) -> SentenceSplit:
    """Split sentences by a fixed rule: held out when ``crc32(sentence) % heldout_every == 0``.

    Args:
        sentences: The corpus, e.g. :func:`help_topic_sentences`.
        heldout_every: About one sentence in this many is held out (at least 2).

    Returns:
        The split, each side in the corpus' order.

    Raises:
        ValueError: If ``heldout_every`` is below 2.
    """
    if heldout_every < 2:
        raise ValueError(f"heldout_every must be at least 2, got {heldout_every}.")
    train: list[str] = []
    heldout: list[str] = []
    for sentence in sentences:
        side = heldout if zlib.crc32(sentence.encode("utf-8")) % heldout_every == 0 else train
        side.append(sentence)
    return SentenceSplit(train=tuple(train), heldout=tuple(heldout))
