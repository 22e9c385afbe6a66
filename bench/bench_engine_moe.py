"""One MoE layer: our sparse dispatch (tokens sorted by expert, each chosen expert run once) against the
naive mixture that computes every expert for every token and weights the outputs by the router.

    python bench/bench_engine_moe.py [--quick] [--threads N] [--repeats N]

Goal: sparse at least E/(2k) times faster. Runs E=64 and E=128 with k=8 at 1 token (a decode step) and at
a 32-token and 256-token batch. Prints one JSON object (median seconds per layer call).
"""

from __future__ import annotations

import argparse
import statistics
import time

import machine
import torch
import torch.nn.functional as F

from moe_runtime.model.moe import SparseMoE, route, sparse_moe


def median_seconds(run, repeats: int) -> float:
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def all_experts(moe: SparseMoE, x: torch.Tensor) -> torch.Tensor:
    """Every expert on every token ([E, T, ...] batched matmuls), mixed by the dense routing weights."""
    weights, experts = route(F.linear(x, moe.router), moe.top_k, moe.norm_topk_prob)
    dense = torch.zeros(x.shape[0], moe.router.shape[0]).scatter_(1, experts, weights)
    gate, up = torch.matmul(x, moe.gate_up.transpose(1, 2)).chunk(2, dim=-1)
    outputs = torch.matmul(F.silu(gate) * up, moe.down.transpose(1, 2))  # [E, T, D]
    return torch.einsum("te,etd->td", dense, outputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller experts, fewer repeats")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)"
    )
    parser.add_argument("--repeats", type=int)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hidden, inner = (256, 128) if args.quick else (512, 256)
    repeats = args.repeats or (3 if args.quick else 5)
    g = torch.Generator().manual_seed(0)
    cases = []
    for num_experts in (64, 128):
        top_k = 8
        moe = SparseMoE(
            router=torch.randn(num_experts, hidden, generator=g) * 0.1,
            gate_up=torch.randn(num_experts, 2 * inner, hidden, generator=g) * 0.05,
            down=torch.randn(num_experts, hidden, inner, generator=g) * 0.05,
            top_k=top_k,
            norm_topk_prob=True,
        )
        for tokens in (1, 32, 256):
            x = torch.randn(tokens, hidden, generator=g)
            with torch.inference_mode():
                torch.testing.assert_close(sparse_moe(moe, x)[0], all_experts(moe, x), atol=1e-4, rtol=1e-4)
                sparse = median_seconds(lambda moe=moe, x=x: sparse_moe(moe, x), repeats)
                naive = median_seconds(lambda moe=moe, x=x: all_experts(moe, x), repeats)
            cases.append(
                {
                    "experts": num_experts,
                    "top_k": top_k,
                    "tokens": tokens,
                    "sparse_ms": round(sparse * 1e3, 3),
                    "all_experts_ms": round(naive * 1e3, 3),
                    "speedup": round(naive / sparse, 2),
                    "goal": num_experts / (2 * top_k),
                    "goal_met": naive / sparse >= num_experts / (2 * top_k),
                }
            )
    machine.print_result(
        {
            "bench": "engine_moe",
            "threads": args.threads,
            "hidden": hidden,
            "expert_inner": inner,
            "repeats": repeats,
            "cases": cases,
        }
    )


if __name__ == "__main__":
    main()
