"""Property tests on random graphs: plans always verify, are deterministic and survive JSON."""

from hypothesis import HealthCheck, given, settings, strategies as st

from numamem.planner import Graph, GraphBuilder, Plan, plan


def _divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def graphs(draw):
    b = GraphBuilder("random", dtype=draw(st.sampled_from(["float32", "float64", "float16"])))
    n = draw(st.integers(1, 5))
    acts = []
    if draw(st.booleans()):
        acts.append(b.input("x", (n, draw(st.integers(1, 6)), draw(st.integers(1, 9)), draw(st.integers(1, 9)))))
    else:
        acts.append(b.input("x", (n, draw(st.integers(1, 40)))))
    counter = iter(range(10**6))

    def w(shape):
        return b.weight(f"w{next(counter)}", shape)

    for _ in range(draw(st.integers(1, 12))):
        t = draw(st.sampled_from(acts))
        s = t.shape
        same = [a for a in acts if a.shape == s]
        choices = ["relu", "gelu", "sigmoid", "add_self", "softmax", "transpose", "reshape"]
        if len(s) == 4:
            choices += ["conv", "conv", "pool", "gap", "bn", "flatten", "concat", "mulb"]
        if len(s) >= 2:
            choices += ["dense", "dense", "layernorm"]
        if len(s) == 3:
            choices += ["matmul"]
        if len(s) == 2 and s[0] <= 4:
            choices += ["embedding"]
        op = draw(st.sampled_from(choices))
        if op in ("relu", "gelu", "sigmoid"):
            out = b.layer(op, [t])
        elif op == "add_self":
            out = b.add(t, draw(st.sampled_from(same)), activation=draw(st.sampled_from([None, "relu"])))
        elif op == "softmax":
            out = b.softmax(t, axis=draw(st.integers(-len(s), len(s) - 1)))
        elif op == "transpose":
            out = b.transpose(t, draw(st.permutations(range(len(s)))))
        elif op == "reshape":
            out = b.reshape(t, (s[0], -1) if len(s) > 2 else (s[0], *s[1:], 1))
        elif op == "conv":
            c = s[1]
            groups = draw(st.sampled_from(_divisors(c)))
            o = groups * draw(st.integers(1, 3))
            pad = draw(st.integers(0, 1))
            kh = draw(st.integers(1, s[2] + 2 * pad))
            kw = draw(st.integers(1, s[3] + 2 * pad))
            out = b.conv2d(t, w((o, c // groups, kh, kw)), w((o,)) if draw(st.booleans()) else None,
                           stride=draw(st.integers(1, 2)), padding=pad, groups=groups,
                           activation=draw(st.sampled_from([None, "relu", "relu6"])))
        elif op == "pool":
            k = draw(st.integers(1, min(s[2], s[3])))
            out = b.layer(draw(st.sampled_from(["maxpool2d", "avgpool2d"])), [t], kernel=k,
                          stride=draw(st.integers(1, 2)), padding=draw(st.integers(0, k // 2)))
        elif op == "gap":
            out = b.global_avgpool(t)
        elif op == "bn":
            out = b.batchnorm(t, w((s[1],)), w((s[1],)))
        elif op == "flatten":
            out = b.flatten(t)
        elif op == "concat":
            out = b.concat([t, draw(st.sampled_from(same))], axis=draw(st.integers(0, 3)))
        elif op == "mulb":
            out = b.mul(t, w((s[1], 1, 1)))
        elif op == "dense":
            out = b.dense(t, w((s[-1], draw(st.integers(1, 48)))), activation=draw(st.sampled_from([None, "gelu"])))
        elif op == "layernorm":
            out = b.layernorm(t, w((s[-1],)), w((s[-1],)))
        elif op == "matmul":
            out = b.matmul(t, draw(st.sampled_from(same)), transpose_b=True)
        else:  # embedding
            ids = b.input(f"ids{next(counter)}", (s[0], draw(st.integers(1, 5))), dtype="int64")
            out = b.embedding(ids, w((draw(st.integers(1, 20)), draw(st.integers(1, 16)))))
        acts.append(out)
    for a in acts[1:]:
        if draw(st.integers(0, 3)) == 0:
            b.output(a)
    if acts[-1].role is None:
        b.output(acts[-1])
    return b.build()


options = st.fixed_dictionaries({
    "nodes": st.lists(st.integers(0, 7), min_size=1, max_size=4, unique=True),
    "page_size": st.sampled_from([64, 256, 4096]),
    "batch_axis_only": st.booleans(),
    "replicate_bytes": st.sampled_from([0, 256, 1 << 20]),
})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs(), options)
def test_random_plans_verify_and_are_deterministic(g, opts):
    p = plan(g, **opts, alignment=min(64, opts["page_size"]))
    p.verify(g)
    # a plan is a function of its input
    assert plan(g, **opts, alignment=min(64, opts["page_size"])).to_json() == p.to_json()
    # the JSON form carries everything the checker needs
    q = Plan.from_json(p.to_json())
    assert q == p
    q.verify()
    q.verify(g)
    for a in p.arenas:
        assert a.lower_bound <= a.peak <= a.size and a.size % p.page_size == 0
    # every tensor's blocks hold exactly its bytes (once, or once per replica)
    for name in g.tensors:
        blocks = p.blocks_of(name)
        total = sum(bl.size for bl in blocks)
        assert total == g.nbytes(name) * (len(blocks) if blocks[0].replica else 1)


@settings(max_examples=60, deadline=None)
@given(graphs())
def test_random_graphs_round_trip(g):
    again = Graph.from_json(g.to_json())
    assert again == g
    assert again.activation_peak() == g.activation_peak()
    live = g.lifetimes()
    for step, layer in enumerate(g.layers):
        for name in layer.inputs + layer.outputs:
            assert live[name][0] <= step <= live[name][1]
    # the peak is reached at some step as the sum of the activations live there
    sums = [sum(g.nbytes(n) for n in g.activations if live[n][0] <= s <= live[n][1])
            for s in range(max(1, len(g.layers)))]
    assert max(sums) == g.activation_peak()
