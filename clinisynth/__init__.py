"""clinisynth: free-text clinical descriptions to verified, labelled synthetic medical images.

``from clinisynth import plan, generate, curate`` is cheap: the heavy parts load on first call.
"""

__version__ = "0.1.0"
__all__ = ["curate", "generate", "plan"]


def __getattr__(name: str):
    if name == "curate":
        from clinisynth.campaigns import curate

        return curate
    if name in __all__:
        from clinisynth import api

        return getattr(api, name)
    raise AttributeError(f"module 'clinisynth' has no attribute {name!r}")
