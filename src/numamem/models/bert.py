"""BERT-base encoder in inference form.

Embeddings: word lookup plus a position table into which the (constant, segment 0) token-type
embedding is folded, then layer normalisation. Each encoder layer: Q, K, V projections (the
``1/sqrt(head_dim)`` attention scale folded into the Q weights), heads split by reshape and
transpose, ``softmax(Q Kᵀ) V``, output projection, residual add, layer norm, a GELU feed-forward
block, residual add, layer norm. No attention mask (every position is a real token) and no pooler:
the output is the last layer's hidden states ``[N, L, hidden]``.
"""
from __future__ import annotations

from numamem.planner.builder import GraphBuilder
from numamem.planner.graph import Graph


def bert_base(batch: int = 1, seq_len: int = 128, dtype: str = "float32", layers: int = 12,
              hidden: int = 768, heads: int = 12, intermediate: int = 3072, vocab: int = 30522) -> Graph:
    """BERT-base (12 layers, hidden 768, 12 heads) over ``batch`` sequences of ``seq_len`` tokens.

    Examples
    --------
    >>> g = bert_base(batch=2, seq_len=16, layers=1)
    >>> g.tensor(g.outputs[0]).shape
    (2, 16, 768)
    """
    if seq_len < 1 or layers < 1 or hidden % heads:
        raise ValueError("seq_len and layers must be >= 1 and hidden a multiple of heads")
    hd = hidden // heads
    g = GraphBuilder("bert_base", dtype=dtype)
    ids = g.input("ids", (batch, seq_len), dtype="int64")
    x = g.embedding(ids, g.weight("embeddings.word", (vocab, hidden)), name="embeddings.lookup")
    x = g.add(x, g.weight("embeddings.position", (seq_len, hidden)), name="embeddings.add")
    x = g.layernorm(x, g.weight("embeddings.ln.gamma", (hidden,)), g.weight("embeddings.ln.beta", (hidden,)),
                    eps=1e-12, name="embeddings.ln")

    def dense(x, name, width, activation=None):
        w = g.weight(f"{name}.w", (x.shape[-1], width))
        b = g.weight(f"{name}.b", (width,))
        return g.dense(x, w, b, activation=activation, name=name)

    def heads_of(t, name):
        t = g.reshape(t, (batch, seq_len, heads, hd), name=f"{name}.split")
        return g.transpose(t, (0, 2, 1, 3), name=f"{name}.heads")

    for i in range(layers):
        p = f"layer{i}"
        q = heads_of(dense(x, f"{p}.query", hidden), f"{p}.query")
        k = heads_of(dense(x, f"{p}.key", hidden), f"{p}.key")
        v = heads_of(dense(x, f"{p}.value", hidden), f"{p}.value")
        scores = g.matmul(q, k, transpose_b=True, name=f"{p}.scores")
        probs = g.softmax(scores, name=f"{p}.softmax")
        ctx = g.matmul(probs, v, name=f"{p}.context")
        ctx = g.transpose(ctx, (0, 2, 1, 3), name=f"{p}.merge")
        ctx = g.reshape(ctx, (batch, seq_len, hidden), name=f"{p}.merge_heads")
        a = dense(ctx, f"{p}.attn_out", hidden)
        x = g.add(a, x, name=f"{p}.attn_residual")
        x = g.layernorm(x, g.weight(f"{p}.ln1.gamma", (hidden,)), g.weight(f"{p}.ln1.beta", (hidden,)),
                        eps=1e-12, name=f"{p}.ln1")
        f = dense(x, f"{p}.ffn_in", intermediate, activation="gelu")
        f = dense(f, f"{p}.ffn_out", hidden)
        x = g.add(f, x, name=f"{p}.ffn_residual")
        x = g.layernorm(x, g.weight(f"{p}.ln2.gamma", (hidden,)), g.weight(f"{p}.ln2.beta", (hidden,)),
                        eps=1e-12, name=f"{p}.ln2")
    g.output(x)
    return g.build()
