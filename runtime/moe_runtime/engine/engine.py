"""The inference engine: a loaded model, per-sequence KV caches, batched forward steps and generation.

Contract (the serving layer codes against it):

- `Engine.load(model_dir, device=, dtype=, quantize=, window=, global_tokens=, max_kv_tokens=,
  max_model_len=)` reads a Hugging Face checkpoint directory. device defaults to CUDA when present, else CPU;
  dtype to bfloat16 on CUDA and float32 on CPU; quantize None or "int8" (weight-only). `window` (None: the
  model's own config) turns on sliding-window attention for every layer, with `global_tokens` sink tokens
  kept besides it. `max_kv_tokens` is the budget `kv_cache_usage()` divides by (default: 8 sequences of
  `max_context`; the server sizes it from memory, see `kv_budget`). `max_model_len` caps `max_context`
  below the checkpoint's `max_position_embeddings`.
- `kv_bytes_per_token()` = bytes one token takes in the KV cache of every layer.
- The KV cache is paged (`model.attention`, `engine.blocks`): `block_size` tokens per block (default 16),
  `max_kv_tokens` rounded down to whole blocks; setting `max_kv_tokens` re-sizes it (no sequence may be live).
  `prefix_caching` (default on; off for windowed models) lets a sequence start from cached full blocks of an
  earlier one (`blocks.match_prefix`).
- `new_sequence(adapter=None)` gives an empty `Sequence`; `release(seq)` gives its blocks back.
- `forward([(seq, new_token_ids), ...])` appends each item's new tokens (1 for a decode step, N for a
  prefill chunk; items may differ in length and in how much they already hold) to that sequence's cache,
  runs all of them as ONE batch, and returns fp32 logits [len(batch), vocab] for each item's LAST new
  token. Feeding a prompt in chunks over several calls gives the same logits as feeding it at once.
  `every_position` (one flag per item) asks for the logits of EVERY new token of the flagged items (prompt
  log-probabilities): the rows then follow the items' order, each flagged item contributing one row per new
  token, each other item one row. Without flags nothing extra is computed.
  A sequence may not grow past `max_context` tokens (ValueError). An item may carry a third element, the
  name of a loaded adapter (None: the base model): `(seq, new_token_ids, "sql-lora")`. Items of different
  adapters and base items share the one forward pass; each row gets exactly its own adapter's update, and a
  sequence must keep the adapter it was prefilled with (its cache holds that adapter's keys and values).
  An unknown adapter name raises AdapterNotFound (a ValueError) before anything runs.
- `load_adapter(name, path) -> Adapter` loads a PEFT LoRA adapter directory (adapter_config.json +
  adapter_model.safetensors); everything is read and checked first, so an AdapterError (naming the adapter
  and the reason: DoRA, modules_to_save, rank above `max_lora_rank`, a target the model lacks, a shape that
  does not match, unused tensors, a name already loaded) leaves the loaded adapters as they were.
  `unload_adapter(name)` drops one (AdapterNotFound if unknown); `adapters` maps names to loaded adapters.
  `add_adapter(adapter)` serves one that `lora.load_adapter` loaded elsewhere (the server loads off the engine
  thread and registers on it).
  `max_lora_rank` (default 16, vLLM's) bounds the rank of any adapter target; set it before loading.
- `kv_cache_usage()` = blocks held by sequences / blocks in the cache (a windowed sequence gives back the blocks
  behind its window, so it stops growing).
- `take_expert_token_counts()` = int64 [layers, experts] tokens routed since the last call (dense layers: 0).
- `generate(prompts, params, adapters=None)` = generated ids per prompt (without the prompt, without the stop
  token), stopping on eos (unless `ignore_eos`) / stop ids / max_tokens / max_context; `adapters`: one adapter
  name (or None) per prompt.

The engine is used from one thread.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch

from moe_runtime.engine.blocks import BlockManager, Window
from moe_runtime.engine.sampling import SamplingParams, make_generator, sample_next
from moe_runtime.engine.sequence import Sequence as Seq
from moe_runtime.model import decoder as model
from moe_runtime.model import native
from moe_runtime.model.attention import ItemKv, KvPool, StepPlan, plan_step
from moe_runtime.model.config import ModelConfig, load_config
from moe_runtime.model.loader import load_weights
from moe_runtime.model.lora import Adapter, AdapterError, AdapterNotFound, LoraBatch, load_adapter
from moe_runtime.model.quant import nbytes
from moe_runtime.model.tokenizer import Tokenizer

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
DEFAULT_MAX_LORA_RANK = 16  # vLLM's default --max-lora-rank
DEFAULT_BLOCK_SIZE = 16  # vLLM's default --block-size on GPUs
# (sequence, new token ids) or (sequence, new token ids, adapter name or None)
BatchItem = tuple[Seq, list[int]] | tuple[Seq, list[int], str | None]


class Engine:
    def __init__(
        self,
        config: ModelConfig,
        weights: model.Weights,
        tokenizer: Tokenizer,
        *,
        model_name: str,
        device: torch.device,
        layer_windows: tuple[int | None, ...],
        global_tokens: int = 0,
        max_kv_tokens: int | None = None,
        max_model_len: int | None = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
        prefix_caching: bool = True,
    ):
        if max_model_len is not None and not 1 < max_model_len <= config.max_position_embeddings:
            raise ValueError(
                f"max_model_len {max_model_len} must be in 2..{config.max_position_embeddings} "
                "(the checkpoint's max_position_embeddings)"
            )
        self.config = config
        self.weights = weights
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.device = device
        self.max_context = max_model_len or config.max_position_embeddings
        self.layer_windows = layer_windows
        self.global_tokens = global_tokens
        self.dtype = weights.final_norm.dtype
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        # every layer windowed: blocks behind the largest window go back; else every position stays
        self.window = (
            None if None in layer_windows else Window(max(layer_windows), global_tokens)  # type: ignore[type-var]
        )
        self.max_kv_tokens = max_kv_tokens or 8 * self.max_context
        self._expert_counts = torch.zeros(
            config.num_layers, config.num_experts, dtype=torch.int64, device=device
        )
        self.adapters: dict[str, Adapter] = {}
        self.max_lora_rank = DEFAULT_MAX_LORA_RANK
        # the kernels are built (or found built) here, at start-up, rather than in the first request
        self.native_kernels = native.applies(self.weights.final_norm)

    @classmethod
    def load(
        cls,
        model_dir: str,
        *,
        device: str | None = None,
        dtype: str | None = None,
        quantize: str | None = None,
        window: int | None = None,
        global_tokens: int = 0,
        max_kv_tokens: int | None = None,
        max_model_len: int | None = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
        prefix_caching: bool = True,
    ) -> Engine:
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype_name = dtype or ("bfloat16" if device.type == "cuda" else "float32")
        if dtype_name not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype_name!r}")
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1, not {window}")
        config = load_config(model_dir)
        tokenizer = Tokenizer.from_dir(model_dir, config.eos_token_ids)
        with torch.inference_mode():
            weights = load_weights(model_dir, config, DTYPES[dtype_name], device, quantize)
        return cls(
            config,
            weights,
            tokenizer,
            model_name=config.name or Path(model_dir).resolve().name,
            device=device,
            layer_windows=config.layer_windows if window is None else (window,) * config.num_layers,
            global_tokens=global_tokens,
            max_kv_tokens=max_kv_tokens,
            max_model_len=max_model_len,
            block_size=block_size,
            prefix_caching=prefix_caching,
        )

    @property
    def max_kv_tokens(self) -> int:
        return self.blocks.num_blocks * self.block_size

    @max_kv_tokens.setter
    def max_kv_tokens(self, tokens: int) -> None:
        """(Re)allocates the paged cache for `tokens` rounded down to whole blocks; drops what it held."""
        if getattr(self, "blocks", None) is not None and self.blocks.used:
            raise RuntimeError("the KV cache cannot be re-sized while sequences hold blocks")
        num_blocks = tokens // self.block_size
        self.blocks = BlockManager(
            num_blocks, self.block_size, prefix_caching=self.prefix_caching, window=self.window
        )
        c = self.config
        self.pool = KvPool(
            c.num_layers, c.num_kv_heads, c.head_dim, num_blocks * self.block_size, self.dtype, self.device
        )

    def new_sequence(self, adapter: str | None = None) -> Seq:
        return Seq(
            adapter=adapter, window=None if self.window is None else self.window.size + self.window.sinks
        )

    def release(self, seq: Seq) -> None:
        self.blocks.free(seq)

    def kv_bytes_per_token(self) -> int:
        c = self.config
        return c.num_layers * 2 * c.num_kv_heads * c.head_dim * self.dtype.itemsize

    def sequence_bytes(self, seq: Seq) -> int:
        """KV cache memory `seq` holds: its blocks."""
        held = sum(block >= 0 for block in seq.block_table)
        return held * self.block_size * self.kv_bytes_per_token()

    def kv_cache_usage(self) -> float:
        return self.blocks.usage()

    def take_expert_token_counts(self) -> torch.Tensor:
        counts = self._expert_counts.to("cpu", copy=True)
        self._expert_counts.zero_()
        return counts

    def weight_bytes(self) -> int:
        """Bytes of all weights as loaded (int8 weights count their scales)."""
        return sum(nbytes(t) for t in _tensors(self.weights))

    def load_adapter(self, name: str, path: str) -> Adapter:
        if name in self.adapters:
            raise AdapterError(name, "already loaded (unload it first)")
        adapter = load_adapter(
            name, path, self.config, dtype=self.dtype, device=self.device, max_rank=self.max_lora_rank
        )
        self.adapters[name] = adapter
        return adapter

    def add_adapter(self, adapter: Adapter) -> None:
        """Serves an adapter `lora.load_adapter` loaded (possibly on another thread) under its name."""
        if adapter.name in self.adapters:
            raise AdapterError(adapter.name, "already loaded (unload it first)")
        self.adapters[adapter.name] = adapter

    def unload_adapter(self, name: str) -> None:
        if self.adapters.pop(name, None) is None:
            raise AdapterNotFound(name)

    @torch.inference_mode()
    def forward(self, batch: list[BatchItem], every_position: Sequence[bool] = ()) -> torch.Tensor:
        if not batch:
            raise ValueError("forward needs at least one sequence")
        order, adapters = self._group_by_adapter(batch)
        run = batch if order is None else [batch[i] for i in order]
        ids, positions, plan, starts = self.prepare(run)
        hidden = model.forward(
            self.weights,
            self.config,
            ids,
            positions,
            self.pool,
            plan,
            expert_counts=self._expert_counts,
            lora=None if order is None else self._lora_batch(run, adapters, len(ids)),
        )
        for seq, tokens, *_ in run:
            seq.length += len(tokens)
            self.blocks.commit(seq, tokens)
        rows = _rows_wanted(batch, order, starts, every_position, len(ids))
        if rows is not None:  # some item brought several tokens, or the items were regrouped
            hidden = hidden[torch.tensor(rows, device=self.device)]
        return model.logits(self.weights, hidden)

    def prepare(self, run: list[BatchItem]) -> tuple[torch.Tensor, torch.Tensor, StepPlan, list[int]]:
        """Checks the items and takes cache blocks for their new tokens -> (token ids, positions, what attention
        reads and writes, where each item starts in the flat batch). The sequences' lengths move on only once
        the forward pass has run (`forward`)."""
        ids: list[int] = []
        positions: list[int] = []
        starts: list[int] = []
        for seq, tokens, *adapter in run:
            if not tokens:
                raise ValueError("each batch item needs at least one new token")
            if seq.length + len(tokens) > self.max_context:
                raise ValueError(
                    f"sequence would hold {seq.length + len(tokens)} tokens, over max_context {self.max_context}"
                )
            if seq.length == 0:
                seq.window = None if self.window is None else self.window.size + self.window.sinks
                if adapter:
                    seq.adapter = adapter[0]
            starts.append(len(ids))
            positions.extend(range(seq.length, seq.length + len(tokens)))
            ids.extend(tokens)
        if max(ids) >= self.config.vocab_size or min(ids) < 0:
            raise ValueError(f"token ids must be in 0..{self.config.vocab_size - 1}")
        items = []
        for seq, tokens, *_ in run:
            self.blocks.grow(seq, seq.length + len(tokens))
            items.append(ItemKv(seq.block_table, seq.length, len(tokens)))
        c = self.config
        plan = plan_step(
            items,
            self.block_size,
            self.layer_windows,
            self.global_tokens,
            c.num_heads // c.num_kv_heads,
            self.device,
        )
        return (
            torch.tensor(ids, device=self.device),
            torch.tensor(positions, device=self.device),
            plan,
            starts,
        )

    def _group_by_adapter(self, batch: list[BatchItem]):
        """(order of the items grouped by adapter, base first; the adapter of each item in that order), or
        (None, None) when no item has an adapter: then the base model runs exactly as without LoRA."""
        names = [item[2] if len(item) > 2 else None for item in batch]
        if all(name is None for name in names):
            return None, None
        unknown = [name for name in names if name is not None and name not in self.adapters]
        if unknown:
            raise AdapterNotFound(unknown[0])
        rank = {name: i for i, name in enumerate(dict.fromkeys(n for n in names if n is not None), start=1)}
        order = sorted(range(len(batch)), key=lambda i: rank.get(names[i], 0))
        return order, [self.adapters[names[i]] if names[i] is not None else None for i in order]

    def _lora_batch(self, batch: list[BatchItem], adapters: list[Adapter | None], rows: int) -> LoraBatch:
        """One segment of token rows per adapter (the items are grouped by adapter already)."""
        segments: list[tuple[Adapter, int, int]] = []
        row = 0
        for (_, tokens, *_), adapter in zip(batch, adapters, strict=True):
            if adapter is not None:
                if segments and segments[-1][0] is adapter:
                    segments[-1] = (adapter, segments[-1][1], row + len(tokens))
                else:
                    segments.append((adapter, row, row + len(tokens)))
            row += len(tokens)
        return LoraBatch(segments, rows, self.device)

    def generate(
        self,
        prompts: list[list[int]],
        params: SamplingParams | list[SamplingParams],
        adapters: list[str | None] | None = None,
    ) -> list[list[int]]:
        params = params if isinstance(params, list) else [params] * len(prompts)
        eos = tuple(sorted(self.tokenizer.eos_token_ids))
        params = [p if p.eos_token_ids else dataclasses.replace(p, eos_token_ids=eos) for p in params]
        adapters = adapters or [None] * len(prompts)
        seqs = [self.new_sequence() for _ in prompts]
        generators = [make_generator(p) for p in params]
        stops = [
            set(p.stop_token_ids) | (set() if p.ignore_eos else self.tokenizer.eos_token_ids) for p in params
        ]
        outputs: list[list[int]] = [[] for _ in prompts]
        try:
            active = list(range(len(prompts)))
            logits = self.forward([(seqs[i], prompts[i], adapters[i]) for i in active])
            while active:
                tokens = sample_next(
                    logits,
                    [params[i] for i in active],
                    [generators[i] for i in active],
                    [(prompts[i], outputs[i]) for i in active],
                )
                still = []
                for i, token in zip(active, tokens, strict=True):
                    if token in stops[i]:
                        continue
                    outputs[i].append(token)
                    if len(outputs[i]) < params[i].max_tokens and seqs[i].length < self.max_context:
                        still.append(i)
                active = still
                if active:
                    logits = self.forward([(seqs[i], [outputs[i][-1]], adapters[i]) for i in active])
        finally:
            for seq in seqs:
                self.release(seq)
        return outputs


def _rows_wanted(
    batch: list[BatchItem],
    order: list[int] | None,
    starts: list[int],
    every_position: Sequence[bool],
    total: int,
) -> list[int] | None:
    """Rows of the flat hidden states to keep, in the caller's item order: each item's last new token, or
    all its new tokens when flagged; None for all of them as they are. `order` is how the items ran (grouped
    by adapter), `starts` where each began in that run, `total` the number of rows."""
    if order is None and (len(batch) == total or all(every_position) and len(every_position) == len(batch)):
        return None  # one token per item, or every token of every item, in the caller's order
    place = list(range(len(batch)))
    if order is not None:
        for run_index, item in enumerate(order):
            place[item] = run_index
    rows: list[int] = []
    for item, (_, tokens, *_) in enumerate(batch):
        start = starts[place[item]]
        if item < len(every_position) and every_position[item]:
            rows.extend(range(start, start + len(tokens)))
        else:
            rows.append(start + len(tokens) - 1)
    return rows


def _tensors(obj):
    """Every tensor reachable from a weights dataclass (shared ones once)."""
    seen = set()
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            if id(item) not in seen:
                seen.add(id(item))
                yield item
        elif isinstance(item, list):
            stack.extend(item)
        elif hasattr(item, "__dataclass_fields__"):
            stack.extend(getattr(item, name) for name in item.__dataclass_fields__)
