"""Misspelt record words read as the word meant ("pleural efusion" -> "pleural effusion"), before matching.

Only a word the lexicon does not know, of at least :data:`MIN_LENGTH` letters, one edit away from exactly
one lexicon word (a letter dropped, added, changed or two swapped) is corrected; its ``norm_`` becomes the
lexicon word, so the phrase matchers see the phrase meant while the text and offsets stay as written.
Embedding the misspelt word instead does not work: "efusion" alone is far from "effusion" for MiniLM.
"""

from __future__ import annotations

from clinisynth.agents.reasoning import vocab
from clinisynth.agents.reasoning.lexicon import Lexicon

#: Shorter words are too often other words one edit away ("mass" / "mast", "ribs" / "rubs").
MIN_LENGTH = 7


def _deletions(word: str) -> set[str]:
    return {word[:i] + word[i + 1 :] for i in range(len(word))}


def _swaps(word: str) -> set[str]:
    return {word[:i] + word[i + 1] + word[i] + word[i + 2 :] for i in range(len(word) - 1)}


class SpellingCorrector:
    """Corrects a doc's unknown words to the lexicon's words one edit away.

    Args:
        lexicon: the built lexicon; every word of its normalised phrases is a known word.
    """

    def __init__(self, *, lexicon: Lexicon) -> None:
        from spacy.lang.en.stop_words import STOP_WORDS

        self.known = {word for phrase in lexicon.phrase_ids for word in phrase.split()}
        # Ordinary words of reports that are one edit from a record word ("patient" / "patent").
        self._ordinary = set(STOP_WORDS) | vocab.NON_IMAGING_WORDS
        self._by_deletion: dict[str, set[str]] = {}
        for word in self.known:
            if len(word) >= MIN_LENGTH - 1 and word.isalpha():
                for key in {word, *_deletions(word)}:
                    self._by_deletion.setdefault(key, set()).add(word)

    def candidates(self, word: str) -> set[str]:
        """Known words one edit from ``word`` (which must be normalised, lower case)."""
        found: set[str] = set()
        for key in {word, *_deletions(word)}:
            found |= self._by_deletion.get(key, set())
        found |= {w for w in _swaps(word) if w in self.known}
        # A shared deletion can hide two edits ("abcd" / "abxe"): keep true one-edit neighbours only.
        return {w for w in found if _one_edit(word, w)}

    def correct(self, doc, *, matcher) -> list[str]:
        """Rewrite the ``norm_`` of misspelt tokens in place, keeping only corrections that complete a
        record phrase of ``matcher`` (so "thoracotomy" is not made "thoracostomy", a word of no phrase).

        Returns:
            One note per correction, for the plan's notes.
        """
        corrected = {}
        for token in doc:
            word = token.norm_
            if len(word) < MIN_LENGTH or not word.isalpha() or word in self.known or word in self._ordinary:
                continue
            # Misspellings rarely change the first letter, nor only an ending ("include" / "included").
            options = {w for w in self.candidates(word) if w[0] == word[0] and not (w.startswith(word) or word.startswith(w))}
            if len(options) == 1:
                corrected[token.i] = (word, options.pop())
                token.norm_ = corrected[token.i][1]
        if not corrected:
            return []
        covered = {i for match_id, start, end in matcher(doc) if doc.vocab.strings[match_id].startswith("REC|") for i in range(start, end)}
        notes = []
        for i, (word, meant) in corrected.items():
            if i in covered:
                notes.append(f"{doc[i].text!r} read as the misspelt {meant!r}")
            else:
                doc[i].norm_ = word
        return notes


def _one_edit(a: str, b: str) -> bool:
    if a == b:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    if abs(len(a) - len(b)) != 1:
        return False
    short, long = (a, b) if len(a) < len(b) else (b, a)
    return any(long[:i] + long[i + 1 :] == short for i in range(len(long)))
