"""Real values of the built-in samplers (``greedy``, ``temperature``, ``top_k``, ``top_p``) and
of their chain, against transformers' logits processors (the oracle named in DESIGN.md)."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

import plugformer
from plugformer import ValidationError
from plugformer.core.interfaces.sampler import SamplingContext
from plugformer.core.sampling import SamplerChain, with_overrides

B, V = 4, 1000
SEEDS = [0, 1, 2]


@pytest.fixture(scope="module")
def params():
    """Composed sampling params of every sampler option (composition is the slow part)."""
    return {
        name: plugformer.compose([f"sampler={name}"]).sampler
        for name in ("greedy", "temperature", "top_k", "top_p")
    }


def random_logits(seed: int, b: int = B, v: int = V) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # scale 3: peaked enough that top-p keeps tens of tokens, not hundreds
    return torch.randn(b, v, generator=g) * 3.0


def ctx(b: int = B, generator: torch.Generator | None = None) -> SamplingContext:
    return SamplingContext(torch.zeros(b, 1, dtype=torch.long), torch.ones(b), generator)


def input_ids(b: int = B) -> torch.Tensor:
    return torch.zeros(b, 1, dtype=torch.long)


def assert_same_logits(ours: torch.Tensor, hf: torch.Tensor) -> None:
    # the -inf masks must be identical, token for token
    assert torch.equal(torch.isneginf(ours), torch.isneginf(hf))
    finite = torch.isfinite(hf)
    # both divide the same fp32 logits by the same temperature: equal up to one rounding
    torch.testing.assert_close(ours[finite], hf[finite], rtol=1e-6, atol=1e-6)


def chain_for(registry, base, **knobs) -> SamplerChain:
    return SamplerChain(registry, with_overrides(base, knobs))


# -- one processor at a time ---------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("temperature", [0.25, 0.7, 1.3, 2.0])
def test_temperature_matches_hf(registry, params, seed, temperature):
    chain = chain_for(registry, params["temperature"], temperature=temperature)
    assert chain.names == ["Temperature"]
    logits = random_logits(seed)
    hf = TemperatureLogitsWarper(temperature)(input_ids(), logits.clone())
    assert_same_logits(chain.process(logits, ctx()), hf)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", [1, 5, 50, 999, 1000, 5000])
def test_top_k_matches_hf(registry, params, seed, k):
    chain = chain_for(registry, params["top_k"], top_k=k)
    assert chain.names == ["TopK"]
    logits = random_logits(seed)
    out = chain.process(logits, ctx())
    assert_same_logits(out, TopKLogitsWarper(k)(input_ids(), logits.clone()))
    assert (torch.isfinite(out).sum(-1) == min(k, V)).all()  # no ties in random logits


def test_top_k_keeps_ties_like_hf(registry, params):
    logits = torch.tensor([[1.0, 3.0, 2.0, 2.0, 0.5], [5.0, 5.0, 5.0, 1.0, 0.0]])
    out = chain_for(registry, params["top_k"], top_k=2).process(logits, ctx(2))
    assert_same_logits(out, TopKLogitsWarper(2)(input_ids(2), logits.clone()))
    assert torch.isfinite(out).sum(-1).tolist() == [3, 3]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.8, 0.95, 0.999])
def test_top_p_matches_hf(registry, params, seed, p):
    chain = chain_for(registry, params["top_p"], top_p=p)
    assert chain.names == ["TopP"]
    logits = random_logits(seed)
    out = chain.process(logits, ctx())
    assert_same_logits(out, TopPLogitsWarper(p)(input_ids(), logits.clone()))
    # the kept set is the smallest nucleus holding >= p of the probability mass
    probs = torch.softmax(logits, -1)
    kept = torch.where(torch.isfinite(out), probs, 0.0)
    assert (kept.sum(-1) >= p - 1e-6).all()  # fp32 sums of 1000 probabilities: ~1e-7 error
    smallest_kept = torch.where(torch.isfinite(out), probs, 2.0).amin(-1)
    assert (kept.sum(-1) - smallest_kept < p + 1e-6).all()  # dropping one more would be < p


def test_top_p_keeps_the_top_token_even_when_p_is_tiny(registry, params):
    logits = random_logits(3)
    out = chain_for(registry, params["top_p"], top_p=1e-6).process(logits, ctx())
    assert torch.equal(torch.isfinite(out), torch.nn.functional.one_hot(logits.argmax(-1), V) > 0)


# -- the composed chain --------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    "overrides,expected_names",
    [
        (
            ["sampler=top_p", "sampler.top_p=0.8", "sampler.temperature=0.7"],
            ["Temperature", "TopP"],
        ),
        (["sampler=top_k", "sampler.top_k=20", "sampler.temperature=1.5"], ["Temperature", "TopK"]),
        (
            ["sampler=top_p", "sampler.top_p=0.9", "sampler.top_k=40", "sampler.temperature=0.5"],
            ["Temperature", "TopK", "TopP"],
        ),
        (["sampler=top_k", "sampler.top_k=200", "sampler.top_p=0.7"], ["TopK", "TopP"]),
    ],
)
def test_composed_chain_equals_hf_processors_in_order(registry, seed, overrides, expected_names):
    sampling = plugformer.compose(overrides).sampler
    chain = SamplerChain(registry, sampling)
    # temperature -> top_k -> top_p, whatever the order of the overrides
    assert chain.names == expected_names
    logits = random_logits(seed)
    hf = logits.clone()
    if sampling.temperature not in (0, 1):
        hf = TemperatureLogitsWarper(sampling.temperature)(input_ids(), hf)
    if sampling.top_k:
        hf = TopKLogitsWarper(sampling.top_k)(input_ids(), hf)
    if sampling.top_p < 1:
        hf = TopPLogitsWarper(sampling.top_p)(input_ids(), hf)
    assert_same_logits(chain.process(logits, ctx()), hf)


def test_compose_sets_the_requested_knobs():
    sampling = plugformer.compose(
        ["sampler=top_p", "sampler.top_p=0.8", "sampler.temperature=0.7"]
    ).sampler
    assert (sampling.name, sampling.top_p, sampling.temperature, sampling.top_k) == (
        "top_p",
        0.8,
        0.7,
        0,  # top_k is not selected, so it takes its neutral value
    )


# -- greedy --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "base,knobs",
    [
        ("greedy", {}),
        ("top_p", {"temperature": 0.0}),
        ("top_k", {"temperature": 0}),
        ("temperature", {"temperature": 0.0, "top_k": 7, "top_p": 0.5}),
    ],
)
def test_greedy_picks_argmax_every_time(registry, params, base, knobs):
    chain = chain_for(registry, params[base], **knobs)
    assert "Greedy" in chain.names and "Temperature" not in chain.names
    for seed in range(10):
        logits = random_logits(100 + seed)
        processed = chain.process(logits, ctx())
        assert (torch.isfinite(processed).sum(-1) == 1).all()  # one finite logit per row
        g = torch.Generator().manual_seed(seed)
        assert torch.equal(chain.sample(logits, ctx(generator=g)), logits.argmax(-1))


def test_greedy_breaks_ties_towards_the_lowest_id(registry, params):
    logits = torch.tensor([[0.0, 2.0, 2.0, 1.0]])
    chain = SamplerChain(registry, params["greedy"])
    assert chain.sample(logits, ctx(1, torch.Generator().manual_seed(0))).tolist() == [1]


# -- seeded draws --------------------------------------------------------------------------


def test_same_seed_same_tokens_different_seed_different_tokens(registry, params):
    chain = chain_for(registry, params["top_p"], top_p=0.95, temperature=1.5)
    # 64 rows of a flat distribution over hundreds of tokens: two independent draws of all 64
    # rows coincide with probability far below 1e-100
    logits = random_logits(0, b=64) / 3.0

    def draw(seed: int) -> torch.Tensor:
        return chain.sample(logits, ctx(64, torch.Generator().manual_seed(seed)))

    assert torch.equal(draw(1234), draw(1234))
    assert not torch.equal(draw(1234), draw(4321))


SMALL_LOGITS = torch.tensor([[2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0]])


@pytest.mark.parametrize(
    "knobs",
    [
        {"top_k": 4},
        {"top_p": 0.8},
        {"top_k": 5, "top_p": 0.9, "temperature": 0.8},
        {"temperature": 2.0},
    ],
)
def test_empirical_frequencies_match_renormalised_probabilities(registry, params, knobs):
    chain = chain_for(registry, params["temperature"], **knobs)
    n = 20000
    logits = SMALL_LOGITS.expand(n, -1)
    # expected: the HF-processed distribution, renormalised over the kept tokens (float64)
    hf = SMALL_LOGITS.clone()
    if "temperature" in knobs:
        hf = TemperatureLogitsWarper(knobs["temperature"])(input_ids(1), hf)
    if "top_k" in knobs:
        hf = TopKLogitsWarper(knobs["top_k"])(input_ids(1), hf)
    if "top_p" in knobs:
        hf = TopPLogitsWarper(knobs["top_p"])(input_ids(1), hf)
    expected = torch.softmax(hf.double(), -1)[0]
    tokens = chain.sample(logits, ctx(n, torch.Generator().manual_seed(2024)))
    counts = torch.bincount(tokens, minlength=SMALL_LOGITS.shape[-1]).double()
    kept = expected > 0
    assert counts[~kept].sum() == 0  # a masked token is never drawn
    # Pearson's chi-square over the kept tokens has k-1 degrees of freedom when the sampler is
    # right; its p-value is the regularised upper incomplete gamma Q((k-1)/2, chi2/2). We demand
    # p > 1e-4: a correct sampler fails once in 10^4 seeds (and the seed is fixed), while a
    # temperature off by 10% already gives chi2 of 40-80 on these 20000 draws (p < 1e-7).
    exp_counts = expected[kept] * n
    chi2 = ((counts[kept] - exp_counts) ** 2 / exp_counts).sum()
    dof = int(kept.sum()) - 1
    p_value = float(torch.special.gammaincc(torch.tensor(dof / 2), chi2 / 2))
    assert p_value > 1e-4, (counts[kept] / n, expected[kept], chi2)


# -- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "knobs,message",
    [
        ({"temperature": -1.0}, "temperature must be a finite number >= 0"),
        ({"temperature": float("nan")}, "temperature must be a finite number >= 0"),
        ({"temperature": float("inf")}, "temperature must be a finite number >= 0"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
        ({"top_p": -0.5}, r"top_p must be in \(0, 1\]"),
        ({"top_p": float("nan")}, r"top_p must be in \(0, 1\]"),
        ({"top_k": -1}, "top_k must be an integer >= 0"),
        ({"top_k": 2.5}, "top_k must be an integer >= 0"),
    ],
)
def test_invalid_knobs_raise_validation_error(registry, params, knobs, message):
    with pytest.raises(ValidationError, match=message):
        chain_for(registry, params["top_p"], **knobs)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_logits_raise_validation_error(registry, params, bad):
    chain = chain_for(registry, params["top_p"], top_p=0.9)
    logits = random_logits(0)
    logits[1, 17] = bad
    with pytest.raises(ValidationError, match="NaN" if math.isnan(bad) else "infinite"):
        chain.sample(logits, ctx(generator=torch.Generator().manual_seed(0)))


def test_minus_infinity_is_a_masked_token(registry, params):
    # the engine masks tokens with -inf (min_new_tokens bans EOS that way): never drawn
    chain = chain_for(registry, params["top_p"], top_p=0.99)
    logits = torch.zeros(400, 8)
    logits[:, 3] = float("-inf")
    tokens = chain.sample(logits, ctx(400, torch.Generator().manual_seed(0)))
    assert (tokens != 3).all() and len(set(tokens.tolist())) == 7
    logits = torch.full((B, 8), float("-inf"))  # every token masked: refused, not drawn
    with pytest.raises(ValidationError, match="all tokens masked"):
        chain.sample(logits, ctx(generator=torch.Generator().manual_seed(0)))


def test_per_request_overrides(registry, params):
    base = params["top_p"]
    override = with_overrides(base, {"top_k": 5, "temperature": 0.5})
    # the configured params are not modified; the override is a new object
    assert (base.top_k, base.temperature, base.top_p) == (0, 1.0, 0.9)
    assert (override.top_k, override.temperature, override.top_p) == (5, 0.5, 0.9)
    assert with_overrides(base, {}) is base
    chain = SamplerChain(registry, override)
    assert chain.names == ["Temperature", "TopK", "TopP"]
    logits = random_logits(9)
    hf = TemperatureLogitsWarper(0.5)(input_ids(), logits.clone())
    hf = TopPLogitsWarper(0.9)(input_ids(), TopKLogitsWarper(5)(input_ids(), hf))
    assert_same_logits(chain.process(logits, ctx()), hf)


@pytest.mark.parametrize("unknown", ["top_q", "temprature", "name"])
def test_unknown_override_names_raise_validation_error(params, unknown):
    with pytest.raises(ValidationError, match=f"unknown sampling parameter.*{unknown}"):
        with_overrides(params["top_p"], {unknown: 0.5})
