"""RadLex-style reference records (anatomy, findings, signs, modalities, techniques) as data files."""

from clinisynth.knowledge.loader import DEFAULT_DATA_DIR, KnowledgeBase, KnowledgeError, content_hash, load_knowledge
from clinisynth.knowledge.schema import Record

__all__ = ["DEFAULT_DATA_DIR", "KnowledgeBase", "KnowledgeError", "Record", "content_hash", "load_knowledge"]
