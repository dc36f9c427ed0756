"""Real values of the sampler plugins beyond the basic four (``min_p``, ``typical_p``,
``repetition_penalty``, ``presence_penalty``, ``frequency_penalty``, ``logit_bias``,
``no_repeat_ngram_size``): each against transformers' logits processor (the oracle named in
DESIGN.md) or, for the two OpenAI-style penalties transformers lacks, against vLLM's formula;
composed chains against the HF processors applied in HF's order; validation; neutral values."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    SequenceBiasLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

import plugformer
from plugformer import ValidationError
from plugformer.core.interfaces.sampler import SamplingContext
from plugformer.core.sampling import SamplerChain, draw, with_overrides

B, V, T = 4, 1000, 40
SEEDS = [0, 1, 2]
NEW = (
    "min_p",
    "typical_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "no_repeat_ngram_size",
)


@pytest.fixture(scope="module")
def neutral():
    """The ``sampler=temperature`` option at temperature 1: every knob neutral."""
    return plugformer.compose(["sampler=temperature"]).sampler


def random_logits(seed: int, b: int = B, v: int = V) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # scale 3: peaked enough that the cut-offs keep tens of tokens, not hundreds
    return torch.randn(b, v, generator=g) * 3.0


def history(seed: int, b: int = B, t: int = T, alphabet: int = 60) -> torch.Tensor:
    """Token ids [b, t] drawn from the first ``alphabet`` ids, so that tokens (and, with a small
    alphabet, n-grams) repeat; logits of those ids are both positive and negative."""
    g = torch.Generator().manual_seed(1000 + seed)
    return torch.randint(0, alphabet, (b, t), generator=g)


def ctx(ids: torch.Tensor, prompt_lengths: torch.Tensor | None = None) -> SamplingContext:
    if prompt_lengths is None:
        prompt_lengths = torch.full((ids.shape[0],), ids.shape[1] // 2)
    return SamplingContext(ids, prompt_lengths)


def chain_for(registry, base, **knobs) -> SamplerChain:
    return SamplerChain(registry, with_overrides(base, knobs))


def assert_same_logits(ours: torch.Tensor, ref: torch.Tensor, tol: float = 0.0) -> None:
    # the -inf masks must be identical, token for token
    assert torch.equal(torch.isneginf(ours), torch.isneginf(ref))
    finite = torch.isfinite(ref)
    torch.testing.assert_close(ours[finite], ref[finite], rtol=tol, atol=tol)


def vllm_penalties(
    logits: torch.Tensor, ids: torch.Tensor, prompt_lengths: torch.Tensor, presence, frequency
) -> torch.Tensor:
    """vLLM's ``apply_penalties`` for presence and frequency, written out per row in float64:
    ``logits -= frequency * count + presence * (count > 0)`` over the generated tokens only."""
    out = logits.double().clone()
    for b in range(ids.shape[0]):
        counts = torch.bincount(ids[b, int(prompt_lengths[b]) :], minlength=logits.shape[-1])
        out[b] -= frequency * counts.double()
        out[b] -= presence * (counts > 0).double()
    return out


# -- one processor at a time, against transformers -----------------------------------------
# min_p, typical_p, repetition_penalty, logit_bias and no_repeat_ngram_size run the same fp32
# operations as transformers on the same values (a softmax, a product, a comparison; x / p or
# x * p; x + b), so the kept values are bit-identical: tolerance 0.


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("min_p", [0.01, 0.05, 0.2, 0.5, 1.0])
def test_min_p_matches_hf(registry, neutral, seed, min_p):
    chain = chain_for(registry, neutral, min_p=min_p)
    assert chain.names == ["MinP"]
    logits = random_logits(seed)
    hf = MinPLogitsWarper(min_p)(history(seed), logits.clone())
    out = chain.process(logits, ctx(history(seed)))
    assert_same_logits(out, hf)
    assert (torch.isfinite(out).sum(-1) >= 1).all()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mass", [0.05, 0.2, 0.5, 0.9, 0.99])
def test_typical_p_matches_hf(registry, neutral, seed, mass):
    chain = chain_for(registry, neutral, typical_p=mass)
    assert chain.names == ["TypicalP"]
    logits = random_logits(seed)
    hf = TypicalLogitsWarper(mass)(history(seed), logits.clone())
    assert_same_logits(chain.process(logits, ctx(history(seed))), hf)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mass", [0.2, 0.9])
def test_typical_p_after_a_top_k_cut_matches_hf(registry, neutral, seed, mass):
    # the cheap path: only the 50 finite logits are sorted; the result is the full-sort one
    chain = chain_for(registry, neutral, top_k=50, typical_p=mass)
    assert chain.names == ["TopK", "TypicalP"]
    logits = random_logits(seed)
    hf = TopKLogitsWarper(50)(history(seed), logits.clone())
    hf = TypicalLogitsWarper(mass)(history(seed), hf)
    # the log-softmax sums 50 terms instead of 1000 (949 of them exp(-inf) = 0): the values
    # kept are untouched, only the cut could move, and it does not on these logits
    assert_same_logits(chain.process(logits, ctx(history(seed))), hf)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("penalty", [0.5, 0.9, 1.2, 2.0])
def test_repetition_penalty_matches_hf(registry, neutral, seed, penalty):
    chain = chain_for(registry, neutral, repetition_penalty=penalty)
    assert chain.names == ["RepetitionPenalty"]
    logits, ids = random_logits(seed), history(seed)
    hf = RepetitionPenaltyLogitsProcessor(penalty)(ids, logits.clone())
    out = chain.process(logits, ctx(ids))
    assert_same_logits(out, hf)
    # prompt and generated tokens alike are penalised (HF's decoder-only behaviour)
    seen = torch.zeros(B, V, dtype=torch.bool).scatter_(1, ids, True)
    assert not torch.equal(out[seen], logits[seen]) and torch.equal(out[~seen], logits[~seen])


def test_repetition_penalty_ignores_ids_past_the_vocabulary_like_hf(registry, neutral):
    # an embedding table larger than the head: ids >= V cannot be generated, nothing to penalise
    ids = torch.tensor([[3, 7, V + 5, 7, V]])
    logits = random_logits(4, b=1)
    out = chain_for(registry, neutral, repetition_penalty=1.5).process(logits, ctx(ids))
    assert_same_logits(out, RepetitionPenaltyLogitsProcessor(1.5)(ids, logits.clone()))


@pytest.mark.parametrize("seed", SEEDS)
def test_logit_bias_matches_hf_sequence_bias(registry, neutral, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randperm(V, generator=g)[:20].tolist()
    values = (torch.randn(20, generator=g) * 10).tolist()
    bias = dict(zip(ids, values, strict=True))
    bias[ids[0]] = -100.0  # the OpenAI way to ban a token
    chain = chain_for(registry, neutral, logit_bias=bias)
    assert chain.names == ["LogitBias"]
    logits = random_logits(seed)
    hf = SequenceBiasLogitsProcessor([[[i], float(v)] for i, v in bias.items()])
    expected = hf(history(seed), logits.clone())
    out = chain.process(logits, ctx(history(seed)))
    assert_same_logits(out, expected)
    assert torch.equal(out, chain.process(logits, ctx(history(seed))))  # cached tensors reused


def test_logit_bias_accepts_json_style_string_keys(registry, neutral):
    logits = random_logits(5)
    a = chain_for(registry, neutral, logit_bias={"42": -100, "7": 2.5}).process(
        logits, ctx(history(0))
    )
    b = chain_for(registry, neutral, logit_bias={42: -100.0, 7: 2.5}).process(
        logits, ctx(history(0))
    )
    assert torch.equal(a, b)


def test_logit_bias_token_outside_the_vocabulary_is_refused(registry, neutral):
    chain = chain_for(registry, neutral, logit_bias={3: 1.0, V: -5.0})
    with pytest.raises(ValidationError, match=rf"logit_bias token ids must be in \[0, {V - 1}\]"):
        chain.process(random_logits(0), ctx(history(0)))
    # the same chain keeps working on a vocabulary that holds the id
    out = chain.process(random_logits(0, v=V + 1), ctx(history(0)))
    assert out.shape == (B, V + 1)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_no_repeat_ngram_matches_hf(registry, neutral, seed, n):
    chain = chain_for(registry, neutral, no_repeat_ngram_size=n)
    assert chain.names == ["NoRepeatNGram"]
    # a 6-token alphabet: 2- and 3-grams repeat, so rows ban several tokens
    ids, logits = history(seed, alphabet=6), random_logits(seed)
    expected = NoRepeatNGramLogitsProcessor(n)(ids, logits.clone())
    out = chain.process(logits, ctx(ids))
    assert_same_logits(out, expected)
    if n <= 3:
        assert torch.isneginf(out).any()


@pytest.mark.parametrize("t", [1, 2, 3])
def test_no_repeat_ngram_needs_a_complete_ngram_like_hf(registry, neutral, t):
    ids, logits = torch.zeros(B, t, dtype=torch.long), random_logits(6)
    out = chain_for(registry, neutral, no_repeat_ngram_size=3).process(logits, ctx(ids))
    assert_same_logits(out, NoRepeatNGramLogitsProcessor(3)(ids, logits.clone()))
    assert torch.isneginf(out[:, 0]).all() == (t == 3)  # 0 0 0 bans 0 once three are written


# -- top_p on a real-size vocabulary: the cut among the likely tokens, without a full sort ---

BIG_V = 49152  # SmolLM2's vocabulary; above 4096 top_p first cuts among the likely tokens


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("scale", [6.0, 10.0])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 0.95, 0.99])
def test_top_p_on_a_large_vocabulary_matches_hf(registry, neutral, seed, scale, p):
    logits = random_logits(seed, v=BIG_V) * (scale / 3.0)
    out = chain_for(registry, neutral, top_p=p).process(logits, ctx(history(seed)))
    assert_same_logits(out, TopPLogitsWarper(p)(history(seed), logits.clone()))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("p", [0.9, 0.95, 0.99])
def test_top_p_with_thousands_of_tokens_in_the_nucleus(registry, neutral, seed, p):
    # flat rows (nuclei of 1,000-12,000 tokens): transformers sums up to 49,152 fp32 terms, so
    # its tail masses err by ~1e-8 and it may keep or drop a token whose tail is that close to
    # 1 - top_p; ours is summed in float64. Every other token must get the same decision.
    logits = random_logits(seed, v=BIG_V)
    out = chain_for(registry, neutral, top_p=p).process(logits, ctx(history(seed)))
    hf = TopPLogitsWarper(p)(history(seed), logits.clone())
    limit = float(torch.tensor(1 - p, dtype=torch.float32))
    for r, i in (torch.isneginf(out) != torch.isneginf(hf)).nonzero().tolist():
        probs = torch.softmax(logits[r], -1).double()
        tail = probs[probs <= probs[i]].sum()  # the token's tail mass, exactly
        assert abs(float(tail) - limit) < 1e-7
        assert bool(torch.isfinite(out[r, i])) == (float(tail) > limit)  # and ours is right
    assert torch.equal(out[torch.isfinite(out)], logits[torch.isfinite(out)])


def test_top_p_falls_back_to_the_full_sort_when_the_tail_is_heavy(registry, neutral):
    # one dominant token and 49,151 tokens 1e-9 as likely, together ~5e-5 of the mass: past
    # the likely tokens, and top_p = 0.99999 keeps some of them, so the full sort decides
    logits = torch.zeros(2, BIG_V)
    logits[:, 7] = 20.0
    logits[1, 100:200] = 1.0
    out = chain_for(registry, neutral, top_p=0.99999).process(logits, ctx(history(0, b=2)))
    assert_same_logits(out, TopPLogitsWarper(0.99999)(history(0, b=2), logits.clone()))
    assert (torch.isfinite(out).sum(-1) > 1).all()


def test_typical_p_on_a_large_vocabulary_matches_hf(registry, neutral):
    logits = random_logits(0, b=2, v=BIG_V) * 2.0
    out = chain_for(registry, neutral, typical_p=0.9).process(logits, ctx(history(0, b=2)))
    assert_same_logits(out, TypicalLogitsWarper(0.9)(history(0, b=2), logits.clone()))


def test_the_draw_never_picks_a_masked_token():
    # inverse transform sampling: one uniform per row against the cumulative distribution
    probs = torch.zeros(BIG_V)
    probs[[0, 5, 9]] = torch.tensor([0.2, 0.5, 0.3])
    g = torch.Generator().manual_seed(0)
    drawn = torch.cat([draw(probs, g) for _ in range(2000)])
    assert set(drawn.tolist()) == {0, 5, 9}
    counts = torch.bincount(drawn, minlength=10)[[0, 5, 9]].double() / 2000
    # binomial standard deviation at n = 2000 is <= 0.0112: 4 of them
    assert torch.allclose(counts, torch.tensor([0.2, 0.5, 0.3]).double(), atol=0.045)
    top = torch.zeros(BIG_V)
    top[-2] = 1.0  # the last entries: a u that rounds up to the total still lands on it
    assert draw(top, g).tolist() == [BIG_V - 2]


# -- presence and frequency: vLLM's formula over the generated tokens -----------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("presence,frequency", [(0.5, 0.0), (0.0, 0.7), (1.5, -0.4), (-2.0, 2.0)])
def test_presence_and_frequency_penalties_match_vllm(registry, neutral, seed, presence, frequency):
    chain = chain_for(registry, neutral, presence_penalty=presence, frequency_penalty=frequency)
    expected_names = ["FrequencyPenalty"] * (frequency != 0) + ["PresencePenalty"] * (presence != 0)
    assert chain.names == expected_names
    ids, logits = history(seed, alphabet=30), random_logits(seed)
    prompt_lengths = torch.tensor([0, 5, 20, T])[:B]  # all generated ... nothing generated
    out = chain.process(logits, ctx(ids, prompt_lengths))
    expected = vllm_penalties(logits, ids, prompt_lengths, presence, frequency)
    # fp32 against float64: one rounding of a logit (|x| < 20) minus a count (< 40) times a
    # penalty, i.e. a few ulps of 100: 1e-5 absolute
    torch.testing.assert_close(out, expected.float(), rtol=0, atol=1e-5)
    # the prompt does not count: the last row generated nothing and is untouched
    assert torch.equal(out[-1], logits[-1])


# -- padded batches: a row gives the same logits alone or left-padded inside a batch ---------


@pytest.mark.parametrize(
    "knobs",
    [
        {"repetition_penalty": 1.3},
        {"no_repeat_ngram_size": 2},
        {"no_repeat_ngram_size": 3},
        {"presence_penalty": 0.8, "frequency_penalty": 0.3},
    ],
)
def test_padding_is_ignored(registry, neutral, knobs):
    chain = chain_for(registry, neutral, **knobs)
    g = torch.Generator().manual_seed(7)
    prompts = [torch.randint(0, 6, (n,), generator=g) for n in (3, 9, 1)]
    generated = torch.randint(0, 6, (3, 5), generator=g)  # 5 tokens generated by each row
    longest = max(len(p) for p in prompts)
    ids = torch.full((3, longest + 5), 2)  # pad id 2 is a real token id too: it must not count
    valid = torch.zeros_like(ids, dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, longest - len(p) : longest] = p
        valid[i, longest - len(p) :] = True
    ids[:, longest:] = generated
    logits = random_logits(8, b=3)
    batch_ctx = SamplingContext(ids, torch.full((3,), longest), valid=valid)
    batched = chain.process(logits, batch_ctx)
    for i, p in enumerate(prompts):
        alone_ids = torch.cat([p, generated[i]])[None]
        alone = chain.process(logits[i : i + 1], ctx(alone_ids, torch.tensor([len(p)])))
        assert torch.equal(batched[i : i + 1], alone)


# -- composed chains, against transformers' processors in transformers' order ---------------


def hf_chain(s, ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``s``'s knobs through transformers' processors, in ``_get_logits_processor`` order."""
    out = logits.clone()
    if s.logit_bias:
        bias = [[[int(i)], float(v)] for i, v in s.logit_bias.items()]
        out = SequenceBiasLogitsProcessor(bias)(ids, out)
    if s.repetition_penalty != 1:
        out = RepetitionPenaltyLogitsProcessor(float(s.repetition_penalty))(ids, out)
    if s.no_repeat_ngram_size:
        out = NoRepeatNGramLogitsProcessor(s.no_repeat_ngram_size)(ids, out)
    if s.temperature not in (0, 1):
        out = TemperatureLogitsWarper(s.temperature)(ids, out)
    if s.top_k:
        out = TopKLogitsWarper(s.top_k)(ids, out)
    if s.top_p < 1:
        out = TopPLogitsWarper(s.top_p)(ids, out)
    if s.min_p:
        out = MinPLogitsWarper(s.min_p)(ids, out)
    if s.typical_p < 1:
        out = TypicalLogitsWarper(s.typical_p)(ids, out)
    return out


CHAINS = [
    (
        [
            "sampler=top_p",
            "sampler.temperature=0.7",
            "sampler.top_k=50",
            "sampler.top_p=0.9",
            "sampler.min_p=0.05",
            "sampler.repetition_penalty=1.3",
        ],
        ["RepetitionPenalty", "Temperature", "TopK", "TopP", "MinP"],
    ),
    (
        ["sampler=typical_p", "sampler.no_repeat_ngram_size=2", "sampler.temperature=1.4"],
        ["NoRepeatNGram", "Temperature", "TypicalP"],
    ),
    (
        [
            "sampler=min_p",
            "sampler.min_p=0.1",
            "sampler.repetition_penalty=0.8",
            "sampler.top_k=300",
        ],
        ["RepetitionPenalty", "TopK", "MinP"],
    ),
    (
        [
            "sampler=repetition_penalty",
            "sampler.typical_p=0.7",
            "sampler.top_p=0.95",
            "sampler.no_repeat_ngram_size=3",
            "sampler.temperature=0.5",
        ],
        ["RepetitionPenalty", "NoRepeatNGram", "Temperature", "TopP", "TypicalP"],
    ),
]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("overrides,expected_names", CHAINS)
def test_composed_chain_equals_hf_processors_in_order(registry, seed, overrides, expected_names):
    s = plugformer.compose(overrides).sampler
    chain = SamplerChain(registry, s)
    assert chain.names == expected_names
    ids, logits = history(seed, alphabet=8), random_logits(seed)
    # the same fp32 operations in the same order; temperature divides once: tolerance 1e-6
    assert_same_logits(chain.process(logits, ctx(ids)), hf_chain(s, ids, logits), tol=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
def test_every_knob_at_once_runs_in_hf_then_vllm_order(registry, neutral, seed):
    knobs = {
        "logit_bias": {5: 3.0, 11: -100.0, 600: 7.5},
        "repetition_penalty": 1.2,
        "frequency_penalty": 0.4,
        "presence_penalty": 0.6,
        "no_repeat_ngram_size": 2,
        "temperature": 0.8,
        "top_k": 100,
        "top_p": 0.95,
        "min_p": 0.02,
        "typical_p": 0.9,
    }
    s = with_overrides(neutral, knobs)
    chain = SamplerChain(registry, s)
    assert [x.priority for x in chain.samplers] == sorted(x.priority for x in chain.samplers)
    assert chain.names == [
        "LogitBias",
        "RepetitionPenalty",
        "FrequencyPenalty",
        "PresencePenalty",
        "NoRepeatNGram",
        "Temperature",
        "TopK",
        "TopP",
        "MinP",
        "TypicalP",
    ]
    ids, logits = history(seed, alphabet=8), random_logits(seed)
    prompt_lengths = torch.full((B,), T // 2)
    # transformers has no presence/frequency penalty: vLLM applies them right after the
    # repetition penalty, so the reference splits transformers' chain there
    ref = SequenceBiasLogitsProcessor([[[i], v] for i, v in knobs["logit_bias"].items()])(
        ids, logits.clone()
    )
    ref = RepetitionPenaltyLogitsProcessor(1.2)(ids, ref)
    ref = vllm_penalties(ref, ids, prompt_lengths, 0.6, 0.4).float()
    ref = hf_chain(with_overrides(s, {"logit_bias": None, "repetition_penalty": 1.0}), ids, ref)
    out = chain.process(logits, ctx(ids, prompt_lengths))
    # the penalties subtract in another order of fp32 roundings (1e-6 of a logit of ~10, then
    # divided by 0.8); the cuts coincide on these logits
    assert_same_logits(out, ref, tol=1e-5)


def test_cli_style_compose_sets_the_new_knobs():
    s = plugformer.compose(
        [
            "sampler=min_p",
            "sampler.typical_p=0.8",
            "sampler.repetition_penalty=1.1",
            "sampler.presence_penalty=-0.5",
            "sampler.frequency_penalty=1",
            "sampler.no_repeat_ngram_size=4",
        ]
    ).sampler
    assert (
        s.min_p,
        s.typical_p,
        s.repetition_penalty,
        s.presence_penalty,
        s.frequency_penalty,
        s.no_repeat_ngram_size,
        s.logit_bias,
    ) == (0.05, 0.8, 1.1, -0.5, 1.0, 4, None)


def test_logit_bias_from_a_hydra_override(registry):
    s = plugformer.compose(["sampler=top_k", "sampler.logit_bias={42:-100,7:2.5}"]).sampler
    assert s.logit_bias == {42: -100.0, 7: 2.5}
    assert SamplerChain(registry, s).names == ["LogitBias", "TopK"]


# -- neutral values build nothing; the options' own defaults ---------------------------------


def test_neutral_values_build_nothing(registry, neutral):
    assert SamplerChain(registry, neutral).samplers == []
    offs = {
        "min_p": 0.0,
        "typical_p": 1.0,
        "repetition_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "logit_bias": None,
        "no_repeat_ngram_size": 0,
    }
    assert {k: getattr(neutral, k) for k in offs} == offs
    for knob, off in [*offs.items(), ("logit_bias", {}), ("min_p", 0), ("typical_p", 1)]:
        assert chain_for(registry, neutral, **{knob: off}).samplers == []


@pytest.mark.parametrize(
    "option,expected",
    [
        ("min_p", ["MinP"]),
        ("typical_p", ["TypicalP"]),
        ("repetition_penalty", ["RepetitionPenalty"]),
        ("presence_penalty", ["PresencePenalty"]),
        ("frequency_penalty", ["FrequencyPenalty"]),
        ("logit_bias", []),  # no bias unless one is given
        ("no_repeat_ngram_size", ["NoRepeatNGram"]),
    ],
)
def test_each_option_builds_its_own_sampler(registry, option, expected):
    assert (
        SamplerChain(registry, plugformer.compose([f"sampler={option}"]).sampler).names == expected
    )


# -- greedy ----------------------------------------------------------------------------------


def test_greedy_takes_the_argmax_of_the_penalised_logits(registry, neutral):
    knobs = {"temperature": 0.0, "repetition_penalty": 1.5, "logit_bias": {9: 4.0}}
    chain = chain_for(registry, neutral, **knobs)
    assert chain.names == ["LogitBias", "RepetitionPenalty", "Greedy"]
    ids, logits = history(3), random_logits(3)
    ref = SequenceBiasLogitsProcessor([[[9], 4.0]])(ids, logits.clone())
    ref = RepetitionPenaltyLogitsProcessor(1.5)(ids, ref)
    assert torch.equal(chain.sample(logits, ctx(ids)), ref.argmax(-1))


def test_greedy_ignores_typical_p_like_hf_without_do_sample(registry, neutral):
    # typical_p may drop the most likely token; temperature 0 means the arg-max (vLLM)
    chain = chain_for(registry, neutral, temperature=0.0, typical_p=0.2, min_p=0.3)
    assert chain.names == ["MinP", "Greedy"]
    logits = random_logits(11)
    assert torch.equal(chain.sample(logits, ctx(history(0))), logits.argmax(-1))
    with pytest.raises(ValidationError, match="typical_p"):
        chain_for(registry, neutral, temperature=0.0, typical_p=1.5)  # still validated


# -- per-request overrides -------------------------------------------------------------------


def test_per_request_overrides(registry, neutral):
    knobs = {"min_p": 0.1, "repetition_penalty": 1.2, "logit_bias": {42: -100.0}, "top_k": 20}
    override = with_overrides(neutral, knobs)
    assert (neutral.min_p, neutral.repetition_penalty, neutral.logit_bias) == (0.0, 1.0, None)
    chain = SamplerChain(registry, override)
    assert chain.names == ["LogitBias", "RepetitionPenalty", "TopK", "MinP"]
    ids, logits = history(2), random_logits(2)
    assert_same_logits(chain.process(logits, ctx(ids)), hf_chain(override, ids, logits))


# -- validation: one ValidationError naming the knob and its range ---------------------------


@pytest.mark.parametrize(
    "knobs,message",
    [
        ({"min_p": -0.1}, r"min_p must be in \[0, 1\]"),
        ({"min_p": 1.5}, r"min_p must be in \[0, 1\]"),
        ({"min_p": float("nan")}, r"min_p must be a number in \[0, 1\]"),
        ({"min_p": "0.1"}, r"min_p must be a number in \[0, 1\]"),
        ({"typical_p": 0.0}, r"typical_p must be in \(0, 1\]"),
        ({"typical_p": 1.01}, r"typical_p must be in \(0, 1\]"),
        ({"typical_p": float("nan")}, r"typical_p must be in \(0, 1\]"),
        ({"repetition_penalty": 0.0}, "repetition_penalty must be a finite number > 0"),
        ({"repetition_penalty": -1.2}, "repetition_penalty must be a finite number > 0"),
        ({"repetition_penalty": float("nan")}, "repetition_penalty must be a finite number > 0"),
        ({"repetition_penalty": float("inf")}, "repetition_penalty must be a finite number > 0"),
        ({"presence_penalty": 2.5}, r"presence_penalty must be in \[-2, 2\]"),
        ({"presence_penalty": -2.01}, r"presence_penalty must be in \[-2, 2\]"),
        (
            {"presence_penalty": float("nan")},
            r"presence_penalty must be a finite number in \[-2, 2\]",
        ),
        (
            {"presence_penalty": float("inf")},
            r"presence_penalty must be a finite number in \[-2, 2\]",
        ),
        ({"frequency_penalty": 3.0}, r"frequency_penalty must be in \[-2, 2\]"),
        (
            {"frequency_penalty": float("nan")},
            r"frequency_penalty must be a finite number in \[-2, 2\]",
        ),
        ({"frequency_penalty": True}, r"frequency_penalty must be a finite number in \[-2, 2\]"),
        ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size must be an integer >= 0"),
        ({"no_repeat_ngram_size": 2.5}, "no_repeat_ngram_size must be an integer >= 0"),
        ({"logit_bias": {1: float("nan")}}, "logit_bias values must be finite numbers"),
        ({"logit_bias": {1: float("-inf")}}, "logit_bias values must be finite numbers"),
        ({"logit_bias": {1: "a"}}, "logit_bias values must be finite numbers"),
        ({"logit_bias": {-1: 1.0}}, r"logit_bias keys must be token ids \(integers >= 0\)"),
        ({"logit_bias": {"x": 1.0}}, r"logit_bias keys must be token ids \(integers >= 0\)"),
        ({"logit_bias": {4: 1.0, "4": 2.0}}, "logit_bias lists token id 4 twice"),
        ({"logit_bias": [[4, 1.0]]}, "logit_bias must be a dict of token id -> bias"),
    ],
)
def test_invalid_knobs_raise_validation_error(registry, neutral, knobs, message):
    with pytest.raises(ValidationError, match=message):
        chain_for(registry, neutral, **knobs)


@pytest.mark.parametrize("option", NEW)
def test_every_new_option_is_registered(registry, option):
    assert option in registry.names("sampler")
