"""Tensor and pipeline parallelism: multi-process runs (gloo, CPU) launched from pytest equal
the single-process engine; refusals come before any weights load; the sharding arithmetic.

Tolerance: a rank computes its slice of each row-parallel layer and an all-reduce sums the
partial products, so float32 sums run in another order than in one process (differences of a
few ulp per layer, growing through the layers); micro-batches change GEMM sizes, which may pick
other kernels. 1e-5 absolute/relative on the tiny models' logits and 1e-4 on SmolLM2's
(30 layers) is a hundred times that drift and far below any real bug (a wrong head or shard
moves logits by O(0.1)).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from parallel_launch import launch

from plugformer.core.engine import Engine
from plugformer.core.errors import ConfigError, RefusedError
from plugformer.core.parallel.pipeline import balanced_split, split_problems
from plugformer.core.parallel.tensor import cut_linear, even, match_plan
from plugformer.core.quant.grid import rtn
from plugformer.core.quant.linear import QuantLinear

WORKER = str(Path(__file__).with_name("parallel_worker.py"))
PROMPTS = [[1, 2, 3, 4, 5, 6], [7, 8], [9, 10, 11, 12]]  # three lengths: left padding
IDS = [[5, 6, 7, 8, 9, 10, 11, 12], [20, 21, 22, 23, 24, 25, 26, 27]]
TINY = {
    "llama": ["model=tiny"],
    "mqa": ["model=tiny", "model.spec.num_kv_heads=1"],  # 1 KV head < 2 ranks: replicated
    "alibi": ["model=alibi-parallel-tiny"],
    "moe": ["model=tiny", "model.spec.mlp=moe"],
}
QUANT = {
    "rtn": ["model=tiny", "quant=rtn", "quant.bits=4", "quant.group_size=32"],
    "gptq": [
        "model=tiny", "quant=gptq", "quant.bits=4", "quant.group_size=32", "quant.desc_act=true",
        "quant.nsamples=4", "quant.seqlen=64",
    ],
}  # fmt: skip
TP2 = ["parallel=tensor", "parallel.size=2", "parallel.timeout_s=60"]
PP2 = ["parallel=pipeline", "parallel.stages=2", "parallel.timeout_s=60"]


def scenario(name, overrides, max_new=12, ids=True, **extra):
    s = {"name": name, "overrides": overrides, "prompts": PROMPTS, "max_new": max_new}
    if ids:
        s["ids"] = IDS
    return {**s, **extra}


def reference(overrides, max_new=12, ids=True):
    engine = Engine.from_overrides(overrides)
    out = {"numel": sum(p.numel() for p in engine.model.parameters())}
    if ids:
        out["logits"] = engine.logits(IDS)
    gens = engine.generate(PROMPTS, max_new_tokens=max_new, ignore_eos=True)
    out["tokens"] = [g.token_ids for g in gens]
    return out


def run_world(tmp_path, world, scenarios, timeout=420):
    spec = tmp_path / "scenarios.json"
    spec.write_text(json.dumps(scenarios))
    results = launch(world, [WORKER, str(spec), str(tmp_path)], timeout=timeout)
    return results


def load(tmp_path, name, world):
    return [torch.load(tmp_path / f"{name}.rank{r}.pt") for r in range(world)]


@pytest.fixture(scope="module")
def world2(tmp_path_factory):
    """Every world-size-2 scenario in one launch (the process start-up is paid once)."""
    tmp = tmp_path_factory.mktemp("world2")
    scenarios = []
    for name, over in {**TINY, **QUANT}.items():
        scenarios.append(scenario(f"{name}-tp", over + TP2))
        if name in TINY:
            scenarios.append(scenario(f"{name}-pp", over + PP2))
    fused = ["fuse_projections=true"]  # q/k/v and gate/up joined after the cut
    scenarios.append(scenario("rtn-tp-fused", QUANT["rtn"] + TP2 + fused))
    scenarios.append(scenario("smol-pp", PP2, max_new=8, ids=False))
    scenarios.append(scenario("dead", ["model=tiny", *TP2[:2], "parallel.timeout_s=30"], die=1))
    results = run_world(tmp, 2, scenarios)
    return tmp, results


def _check(tmp, name, world, ref, tol):
    ranks = load(tmp, name, world)
    for r in ranks:
        assert "error" not in r, r.get("error")
        assert r["tokens"] == ranks[0]["tokens"]  # every rank samples the same tokens
        if "logits" in ref:
            torch.testing.assert_close(r["logits"], ref["logits"], atol=tol, rtol=tol)
    assert ranks[0]["tokens"] == ref["tokens"]
    return ranks


@pytest.mark.parametrize("name", list(TINY))
@pytest.mark.parametrize("strategy", ["tp", "pp"])
def test_tiny_models_equal_single_process(world2, name, strategy):
    tmp, _ = world2
    ref = reference(TINY[name])
    ranks = _check(tmp, f"{name}-{strategy}", 2, ref, 1e-5)
    for r in ranks:  # each rank really holds only part of the weights
        assert r["numel"] < 0.8 * ref["numel"], (r["numel"], ref["numel"])


@pytest.mark.parametrize("name", list(QUANT))
def test_quantized_models_under_tensor_parallel(world2, name):
    tmp, _ = world2
    ref = reference(QUANT[name])
    _check(tmp, f"{name}-tp", 2, ref, 1e-5)


def test_fused_projections_under_tensor_parallel(world2):
    tmp, _ = world2
    _check(tmp, "rtn-tp-fused", 2, reference(QUANT["rtn"]), 1e-5)


def test_smollm2_pipeline_two_stages(world2):
    tmp, _ = world2
    ref = reference([], max_new=8, ids=False)
    _check(tmp, "smol-pp", 2, ref, 1e-4)


def test_dead_rank_fails_within_the_timeout(world2):
    tmp, results = world2
    assert results[1][0] == 3  # rank 1 died on purpose after building its engine
    assert results[0][0] == 0, results[0][1][-2000:]
    (alive,) = [torch.load(tmp / "dead.rank0.pt")]
    assert alive["error"].startswith("DistributedError"), alive
    assert alive["seconds"] < 30


def test_smollm2_tensor_parallel_three(tmp_path):
    over = ["parallel=tensor", "parallel.size=3", "parallel.timeout_s=120"]
    results = run_world(tmp_path, 3, [scenario("smol-tp3", over, max_new=8)])
    assert all(code == 0 for code, _ in results), [e[-2000:] for _, e in results]
    ref = reference([], max_new=8)
    _check(tmp_path, "smol-tp3", 3, ref, 1e-4)


def test_torchrun_cli_prints_once(tmp_path):
    import subprocess
    import sys

    from parallel_launch import free_port

    args = ["-m", "plugformer", "generate", "model=tiny", "prompt=Hello", "max_new_tokens=6"]
    single = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120)
    assert single.returncode == 0, single.stderr
    torchrun = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-port", str(free_port()),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [*torchrun, *args, "parallel=tensor", "parallel.size=2"],
        capture_output=True, text=True, timeout=240, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout == single.stdout  # rank 0 prints, the other rank stays quiet


# -- refusals, before any weights load ---------------------------------------------------------
def test_smollm2_refuses_tensor_parallel_two_naming_the_heads():
    with pytest.raises(
        RefusedError, match=r"9 attention heads are not divisible by parallel.size=2"
    ):
        Engine.from_overrides(["parallel=tensor", "parallel.size=2"])


def test_refusals(monkeypatch):
    with pytest.raises(RefusedError, match=r"parallel.stages=3 is more than the model's 2 layers"):
        Engine.from_overrides(["model=tiny", "parallel=pipeline", "parallel.stages=3"])
    with pytest.raises(RefusedError, match=r"vocabulary of 259 is not divisible"):
        Engine.from_overrides(["model=tiny", "model.spec.vocab_size=259", *TP2])
    with pytest.raises(RefusedError, match=r"3 KV heads can be neither split"):
        Engine.from_overrides(
            ["model=tiny", "model.spec.num_heads=6", "model.spec.num_kv_heads=3",
             "model.spec.hidden_size=96", "parallel=tensor", "parallel.size=2"]
        )  # fmt: skip
    with pytest.raises(RefusedError, match=r"launch with torchrun --nproc-per-node 2"):
        Engine.from_overrides(["model=tiny", *TP2])
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(RefusedError, match=r"parallel.stages=2 but the job has WORLD_SIZE=3"):
        Engine.from_overrides(["model=tiny", *PP2])
    with pytest.raises(RefusedError, match=r"WORLD_SIZE=3 but parallel=single"):
        Engine.from_overrides(["model=tiny"])


def test_split_problems():
    assert split_problems(4, 2, None) == []
    assert split_problems(4, 2, [1, 3]) == []
    assert "sum to the model's 4 layers" in split_problems(4, 2, [1, 2])[0]
    assert "must list 2 integers" in split_problems(4, 2, [4])[0]
    assert "at least one layer" in split_problems(4, 2, [0, 4])[0]


def test_balanced_split():
    assert balanced_split([1.0] * 4, 2) == [2, 2]
    assert balanced_split([1.0] * 6, 3) == [2, 2, 2]
    assert balanced_split([1.0] * 30, 2, last_extra=8.0) == [19, 11]  # the head: 8 layers' worth
    assert balanced_split([5.0, 1.0, 1.0, 1.0], 2) == [1, 3]


# -- the cutting arithmetic, in one process -----------------------------------------------------
def test_match_plan_globs():
    model = Engine.from_overrides(["model=tiny"]).model
    styles = match_plan(model, {"layers.*.attn.wq": "colwise", "head": "vocab"})
    assert styles == {"layers.0.attn.wq": "colwise", "layers.1.attn.wq": "colwise", "head": "vocab"}
    with pytest.raises(ConfigError, match=r"not one of"):
        match_plan(model, {"head": "diagonal"})


def _shards(layer, n, dim):
    size = layer.out_features if dim == 0 else layer.in_features
    ranges = [even(size, r, n, "layer") for r in range(n)]
    if dim == 0:
        return [cut_linear(layer, rng, None) for rng in ranges], ranges
    return [cut_linear(layer, None, rng, bias=False) for rng in ranges], ranges


@pytest.mark.parametrize("quant", [None, "group", "channel", "act-order"])
def test_cut_layers_recombine_to_the_whole(quant):
    g = torch.Generator().manual_seed(0)
    dense = torch.nn.Linear(128, 64, bias=True)
    with torch.no_grad():
        dense.weight.normal_(generator=g)
        dense.bias.normal_(generator=g)
    layer: torch.nn.Module = dense
    if quant is not None:
        layer = rtn(dense, 4, -1 if quant == "channel" else 32, sym=False)
        if quant == "act-order":  # a permuted g_idx: each shard keeps every group's scales
            perm = torch.randperm(128, generator=g)
            q = layer.int_weight().t()[:, perm]
            layer = QuantLinear.from_ints(
                q, layer.scales, layer.zero_points(), layer.g_idx[perm], 4, 32, layer.bias,
                sym=False, desc_act=True,
            )  # fmt: skip
    x = torch.randn(3, 128, generator=g)
    whole = layer(x)
    cols, ranges = _shards(layer, 2, 0)
    torch.testing.assert_close(torch.cat([c(x) for c in cols], dim=-1), whole)
    rows, ranges = _shards(layer, 2, 1)
    partial = sum(r(x[:, a:b]) for r, (a, b) in zip(rows, ranges, strict=True))
    # rank sums in another order: fp32 rounding of a 128-term dot product
    torch.testing.assert_close(partial + layer.bias, whole, atol=1e-5, rtol=1e-5)
    if isinstance(layer, QuantLinear):  # a shard dequantizes to the slice of the whole
        full = layer.dequantize()
        torch.testing.assert_close(rows[1].dequantize(), full[:, 64:], atol=0, rtol=0)
        torch.testing.assert_close(cols[0].dequantize(), full[:32], atol=0, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
@pytest.mark.parametrize("strategy", [TP2, PP2], ids=["tp", "pp"])
def test_nccl_on_two_gpus_equals_one_process(tmp_path, strategy):
    over = ["model=tiny", "device=cuda", *strategy]
    results = run_world(tmp_path, 2, [scenario("gpu", over)])
    assert all(code == 0 for code, _ in results), [e[-2000:] for _, e in results]
    ref = reference(["model=tiny", "device=cuda"])
    ref["logits"] = ref["logits"].cpu()
    ranks = load(tmp_path, "gpu", 2)
    for r in ranks:  # TF32 or other GEMM kernels on GPU: a looser tolerance than on CPU
        torch.testing.assert_close(r["logits"].cpu(), ref["logits"], atol=1e-3, rtol=1e-3)
    assert ranks[0]["tokens"] == ref["tokens"]
