"""Start-up of the :class:`~clinisynth.agents.reasoning.engine.Reasoner`: spaCy and medspaCy imported
without the heavy libraries they pull in but the Reasoner never uses.

Measured here (2 busy cores), of a cold ``clinisynth plan`` at about 14 s:

- ``import spacy`` costs 1.8-2.9 s, 1.3 s of it torch: ``thinc.compat`` probes ``import torch`` to offer
  its PyTorch layers. A blank English tokenizer and phrase matchers use none of them.
- ``import medspacy.context`` costs 1.0-1.9 s, nearly all of it ``medspacy.util``'s
  ``from quickumls import spacy_component`` (QuickUMLS imports nltk, which imports scipy.stats), only
  to register the ``medspacy_quickumls`` pipe factory that ``medspacy.load`` can add. ConText does not use it.
- Building ``ConText`` and adding its ~240 rules is cheap (20-35 ms): nothing to cache there. The phrase
  matchers are cached by :func:`~clinisynth.agents.reasoning.lexicon.load_or_build_lexicon`.

:func:`blank_nlp` and :func:`context_classes` do the two imports with the probe answered "not installed"
(``torch``) and a placeholder standing in for ``quickumls`` during the import only. Both are no-ops when
the library is already imported, fall back to the plain import if the trick fails, and have one
documented effect on the rest of the process:

- thinc records ``has_torch = False`` when spaCy is first imported this way, so thinc's PyTorch
  wrappers (``spacy-transformers``, ``PyTorchWrapper``) are unavailable in that process. torch itself
  imports and works as usual (sentence-transformers, diffusers).
- ``medspacy.load(enable=[..., "medspacy_quickumls"])`` needs ``import quickumls.spacy_component``
  first in that process (the import that registers the factory); the real ``quickumls`` package
  imports as usual.

Not thread-safe against a *first* ``import torch`` or ``import quickumls`` in another thread during
the same half second: call them from the thread that builds the Reasoner (the API's planner lock).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import types
from typing import Iterator

_lock = threading.Lock()


@contextlib.contextmanager
def _stand_in(name: str, module) -> Iterator[None]:
    """Put ``module`` (``None``: "not installed") in ``sys.modules[name]`` for the body, unless it is imported."""
    if name in sys.modules:
        yield
        return
    sys.modules[name] = module
    try:
        yield
    finally:
        if sys.modules.get(name) is module:
            del sys.modules[name]


def _import_with(target: str, name: str, stand_in) -> None:
    """Import ``target`` with ``stand_in`` as ``name``; on any failure forget the partial import and
    import ``target`` plainly, so the trick can only cost time, never break the import."""
    if target in sys.modules:
        return
    with _lock:
        if target in sys.modules:
            return
        before = set(sys.modules)
        try:
            with _stand_in(name, stand_in):
                __import__(target)
            return
        except Exception:  # noqa: BLE001 - retried plainly just below
            root = target.split(".")[0]
            for added in set(sys.modules) - before:
                if added == root or added.startswith(root + "."):
                    del sys.modules[added]
    __import__(target)


def import_spacy():
    """``import spacy`` without thinc importing torch (see the module docstring)."""
    _import_with("spacy", "torch", None)
    import spacy

    return spacy


def blank_nlp(lang: str = "en"):
    """``spacy.blank(lang)``, spaCy imported by :func:`import_spacy`."""
    return import_spacy().blank(lang)


def _quickumls_placeholder() -> types.ModuleType:
    placeholder = types.ModuleType("quickumls")
    placeholder.__doc__ = "Placeholder used while clinisynth imports medspaCy; the real package is not loaded."
    component = types.ModuleType("quickumls.spacy_component")
    component.__doc__ = ("Not loaded: clinisynth imported medspaCy without QuickUMLS. "
                         "`import quickumls.spacy_component` registers the medspacy_quickumls factory.")
    placeholder.spacy_component = component
    return placeholder


def context_classes():
    """``(ConText, ConTextRule)`` from ``medspacy.context`` without QuickUMLS / nltk / scipy (see above)."""
    import_spacy()
    _import_with("medspacy.context", "quickumls", _quickumls_placeholder())
    from medspacy.context import ConText, ConTextRule

    return ConText, ConTextRule


def import_nlp_libraries() -> None:
    """Import spaCy and medspaCy's ConText the light way, ahead of building a Reasoner."""
    context_classes()
