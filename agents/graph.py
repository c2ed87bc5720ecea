"""The LangGraph graph: localize -> pathology -> visual map -> prompt -> generate -> verify -> (refine ->
generate)* -> store."""

from __future__ import annotations

from langgraph.graph import END, START, StateGraph

from clinisynth.agents import nodes
from clinisynth.agents.context import Services
from clinisynth.agents.routing import after_verify
from clinisynth.agents.state import GraphState

NODE_ORDER = ("localize", "pathology", "visual_map", "prompt", "generate", "verify", "refine", "store")


def build_graph(*, checkpointer=None):
    """Compile the graph.

    Args:
        checkpointer: a LangGraph checkpointer (the runner passes a SQLite one) or ``None``.
    """
    graph = StateGraph(GraphState, context_schema=Services)
    for name in NODE_ORDER:
        graph.add_node(name, getattr(nodes, name))
    graph.add_edge(START, "localize")
    graph.add_edge("localize", "pathology")
    graph.add_edge("pathology", "visual_map")
    graph.add_edge("visual_map", "prompt")
    graph.add_edge("prompt", "generate")
    graph.add_edge("generate", "verify")
    graph.add_conditional_edges("verify", after_verify, {"store": "store", "refine": "refine"})
    graph.add_edge("refine", "generate")
    graph.add_edge("store", END)
    return graph.compile(checkpointer=checkpointer)


def recursion_limit(max_rounds: int) -> int:
    """Super-steps a run may take: 4 reasoning nodes, 3 per round (generate, verify, refine), store, margin."""
    return 4 + 3 * max_rounds + 1 + 2
