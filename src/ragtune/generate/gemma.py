"""Gemma 3 text forward in plain torch, with a slot-indexed KV cache and per-row LoRA.

The weights are the HF checkpoint's (read from a loaded ``Gemma3ForCausalLM``); the
maths follows the Gemma 3 report (arXiv:2503.19786) and transformers' implementation:
RMSNorm scaled by ``1 + w``, grouped-query attention with RMS-normed queries and keys,
local (sliding window) and global layers with their own RoPE bases, a gelu-tanh gated MLP,
embeddings scaled by ``sqrt(hidden)``, and optional final logit soft-capping.

Speed matters more than generality here: the q/k/v projections are fused into one matrix
and gate/up into another (fewer, larger matmuls per token), q- and k-norms run as one op,
and RoPE is ``x * cos + roll(x) * sin_signed``. The KV cache is preallocated per *slot*
(one running request each): global layers keep ``max_len`` positions, sliding layers a
ring of ``window`` positions, so memory is fixed and known when the engine starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ragtune.generate import quant
from ragtune.generate.lora import AdapterBank
from ragtune.generate.quant import Int4Linear, Int8RowLinear, Linear


@dataclass(frozen=True)
class GemmaSpec:
    hidden: int
    n_heads: int
    n_kv: int
    head_dim: int
    inter: int
    n_layers: int
    vocab: int
    eps: float
    window: int
    sliding: tuple[bool, ...]
    scaling: float
    final_softcap: float | None
    max_positions: int

    @classmethod
    def from_config(cls, config: Any) -> GemmaSpec:
        if getattr(config, "attn_logit_softcapping", None) is not None:
            raise ValueError("attention logit soft-capping is not supported")
        if getattr(config, "use_bidirectional_attention", False):
            raise ValueError("bidirectional attention is not supported")
        return cls(
            hidden=config.hidden_size,
            n_heads=config.num_attention_heads,
            n_kv=config.num_key_value_heads,
            head_dim=config.head_dim,
            inter=config.intermediate_size,
            n_layers=config.num_hidden_layers,
            vocab=config.vocab_size,
            eps=config.rms_norm_eps,
            window=config.sliding_window,
            sliding=tuple(t == "sliding_attention" for t in config.layer_types),
            scaling=config.query_pre_attn_scalar**-0.5,
            final_softcap=config.final_logit_softcapping,
            max_positions=config.max_position_embeddings,
        )


@dataclass
class Layer:
    in_norm: torch.Tensor  # (H,) = 1 + w
    qkv: Linear  # (nh*hd + 2*nkv*hd, H)
    qk_norm: torch.Tensor  # (nh + nkv, hd) = 1 + w, q heads then k heads
    o: Linear  # (H, nh*hd)
    post_attn_norm: torch.Tensor
    pre_ff_norm: torch.Tensor
    gate_up: Linear  # (2I, H)
    down: Linear  # (H, I)
    post_ff_norm: torch.Tensor
    sliding: bool


class GemmaWeights:
    """The weights of one model, fused for inference. ``bits`` (16 = the compute dtype,
    8 or 4) is the projections' weight precision, ``head_bits`` the output head's; a
    quantized head is untied from the embedding, so the embedding lookup stays exact."""

    def __init__(self, model: Any, dtype: torch.dtype, bits: int = 16,
                 head_bits: int = 16) -> None:  # fmt: skip
        self.spec = GemmaSpec.from_config(model.config)
        s = self.spec
        inner = model.model
        dev = inner.embed_tokens.weight.device
        self.device = dev
        self.dtype = dtype

        def norm(m: Any) -> torch.Tensor:  # kept in fp32, as transformers computes it
            return 1.0 + m.weight.detach().float()

        def make(w: torch.Tensor, nbits: int) -> Linear:
            if nbits == 4:
                return Int4Linear.make(w.detach().to(dtype))
            if nbits == 8 and quant.int8_gemm_available():  # else weight-only int8
                return Int8RowLinear.make(w.detach().float())
            return Linear.make(w.detach().to(dtype), nbits == 8)

        def lin(*mods: Any) -> Linear:
            w = torch.cat([m.weight.detach() for m in mods]) if len(mods) > 1 else mods[0].weight
            return make(w, bits)

        self.embed = inner.embed_tokens.weight.detach().to(dtype)  # (V, H), exact lookup
        self.embed_scale = torch.tensor(s.hidden**0.5, dtype=dtype).item()
        self.layers: list[Layer] = []
        for i, blk in enumerate(inner.layers):
            a, m = blk.self_attn, blk.mlp
            self.layers.append(
                Layer(
                    in_norm=norm(blk.input_layernorm),
                    qkv=lin(a.q_proj, a.k_proj, a.v_proj),
                    qk_norm=torch.cat(
                        [norm(a.q_norm).expand(s.n_heads, -1), norm(a.k_norm).expand(s.n_kv, -1)]
                    ),
                    o=lin(a.o_proj),
                    post_attn_norm=norm(blk.post_attention_layernorm),
                    pre_ff_norm=norm(blk.pre_feedforward_layernorm),
                    gate_up=lin(m.gate_proj, m.up_proj),
                    down=lin(m.down_proj),
                    post_ff_norm=norm(blk.post_feedforward_layernorm),
                    sliding=s.sliding[i],
                )
            )
        self.final_norm = norm(inner.norm)
        head = model.lm_head.weight.detach()
        if head.data_ptr() == inner.embed_tokens.weight.data_ptr() and head_bits == 16:
            self.head = Linear(self.embed)  # still tied: one copy
        else:
            self.head = make(head, head_bits)
        # RoPE tables per layer type, from the model's own rotary module (any rope type).
        rot = inner.rotary_emb
        self.rope: dict[bool, tuple[torch.Tensor, torch.Tensor]] = {}
        for sliding, name in ((True, "sliding_attention"), (False, "full_attention")):
            inv = getattr(rot, f"{name}_inv_freq", None)
            if inv is None:
                continue
            scale = getattr(rot, f"{name}_attention_scaling", 1.0)
            pos = torch.arange(s.max_positions, device=dev, dtype=torch.float32)
            freqs = pos[:, None] * inv.to(dev, torch.float32)[None, :]  # (P, hd/2)
            cos, sin = freqs.cos() * scale, freqs.sin() * scale
            # rotate_half(x) * sin == roll(x, hd/2) * [-sin, sin]
            self.rope[sliding] = (
                torch.cat([cos, cos], -1).to(dtype),
                torch.cat([-sin, sin], -1).to(dtype),
            )


class KVCache:
    """Per-layer K and V, (slots, positions, n_kv, head_dim); sliding layers keep a ring of
    ``window + slack`` positions (entry ``p % ring``), global layers ``max_len`` positions.
    ``slack`` (speculative decoding's draft length) lets a step write several positions of
    one request while its earlier rows still read the window behind them."""

    def __init__(self, spec: GemmaSpec, slots: int, max_len: int, dtype: torch.dtype,
                 device: torch.device, slack: int = 0) -> None:  # fmt: skip
        self.slots, self.max_len = slots, max_len
        self.ring = min(spec.window + slack, max_len)
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        for sliding in spec.sliding:
            n = self.ring if sliding else max_len
            shape = (slots, n, spec.n_kv, spec.head_dim)
            self.k.append(torch.zeros(shape, dtype=dtype, device=device))
            self.v.append(torch.zeros(shape, dtype=dtype, device=device))

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.k, *self.v))


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """Gemma RMSNorm, ``x / rms(x) * (1 + w)`` computed in fp32 (w is already ``1 + w``)."""
    return F.rms_norm(x.float(), (x.shape[-1],), w, eps).to(x.dtype)


def _qk_norm(qk: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """The q- and k-norms at once: qk (..., heads, hd), w (heads, hd) = 1 + w per head."""
    return F.rms_norm(qk.float(), (qk.shape[-1],), eps=eps).mul_(w).to(qk.dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE (Su et al. 2021): x (..., heads, hd); cos/sin broadcast as (..., 1, hd)."""
    return x * cos + x.roll(x.shape[-1] // 2, -1) * sin


@dataclass
class Batch:
    """What one forward needs besides the tokens. Rows are requests (decode) or, for a
    prefill, the positions of one request."""

    slots: torch.Tensor  # (B,) cache slot per row
    positions: torch.Tensor  # (B,) position of each row's token
    lora_rows: torch.Tensor | None  # (B,) adapter bank slot per row, -1 = base; None = no LoRA
    contiguous: bool  # slots == arange(B): cache reads are slices, not gathers
    # the slot every row is in when they all are (one request and the draft it verifies):
    # its cache is read once, as a slice, and the rows become more queries against it
    shared_slot: int = -1


# Decode attention reads the cache up to a multiple of this many positions (the rows past
# the last written one masked) when it is not fp32: PyTorch's bf16/fp16 CPU matmul
# (oneDNN) builds a kernel for each new shape, about 0.5 ms each, and a growing
# sequence would make new shapes every step. fp32 reads exactly what it needs (its
# matmul has no such cost, and its numbers stay those of an unpadded read).
ATTN_PAD = 64


def _padded(n: int, pad: int, cap: int) -> int:
    """``n`` rounded up to a multiple of ``pad``, at most ``cap``."""
    return min(-(-n // pad) * pad, cap)


class GemmaEngine:
    """Forward passes over the fused weights, reading/writing a :class:`KVCache`."""

    def __init__(self, weights: GemmaWeights, cache: KVCache, bank: AdapterBank) -> None:
        self.w, self.cache, self.bank = weights, cache, bank
        self.spec = weights.spec
        self.fp32 = cache.k[0].dtype == torch.float32
        self.pad = 1 if self.fp32 else ATTN_PAD

    # Quantized projections take the dense path in prefill (many rows, compute-bound) and
    # the int8/int4 kernel in decode, whatever the row count, so that a request's numbers
    # do not depend on what it was batched with.
    def _attn_proj(self, layer: int, x: torch.Tensor, lora: Any, dense: bool) -> torch.Tensor:
        lw = self.w.layers[layer]
        y = lw.qkv(x, dense)
        if lora is not None:
            y = self.bank.apply(lora, layer, "qkv", x, y)
        return y

    def _mlp(self, layer: int, x: torch.Tensor, lora: Any, dense: bool) -> torch.Tensor:
        lw, inter = self.w.layers[layer], self.spec.inter
        gu = lw.gate_up(x, dense)
        if lora is not None:
            gu = self.bank.apply(lora, layer, "gate_up", x, gu)
        h = F.gelu(gu[..., :inter], approximate="tanh").mul_(gu[..., inter:])
        y = lw.down(h, dense)
        if lora is not None:
            y = self.bank.apply(lora, layer, "down", h, y)
        return y

    def _o(self, layer: int, x: torch.Tensor, lora: Any, dense: bool) -> torch.Tensor:
        y = self.w.layers[layer].o(x, dense)
        if lora is not None:
            y = self.bank.apply(lora, layer, "o", x, y)
        return y

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H) hidden states after the last layer -> (B, V) logits."""
        out = self.w.head(_rms(x, self.w.final_norm, self.spec.eps))
        cap = self.spec.final_softcap
        if cap is not None:
            out = torch.tanh(out / cap) * cap
        return out

    def prefill(
        self, tokens: torch.Tensor, slot: int, lora_slot: int, all_positions: bool = False
    ) -> torch.Tensor:
        """Run one request's prompt (T,) from position 0, filling cache ``slot``; returns
        the (1, H) hidden state of its last token (every position's, (T, H), when
        ``all_positions``, e.g. for perplexity)."""
        return self.prefill_many([tokens], [slot], [lora_slot], all_positions)

    def prefill_many(
        self,
        prompts: list[torch.Tensor],
        slots: list[int],
        lora_slots: list[int],
        all_positions: bool = False,
    ) -> torch.Tensor:
        """Prefill several requests' prompts in one pass: their tokens are packed into one
        (sum T, H) sequence for every projection and MLP (few large matmuls instead of many
        small ones); attention runs per request on its own rows. Returns each request's
        last hidden state (n, H), or every row's when ``all_positions``."""
        s = self.spec
        nh, nkv, hd = s.n_heads, s.n_kv, s.head_dim
        lens = [int(p.shape[0]) for p in prompts]
        ends = torch.tensor(lens).cumsum(0).tolist()
        spans = [(e - n, e) for n, e in zip(lens, ends, strict=True)]
        tokens = prompts[0] if len(prompts) == 1 else torch.cat(prompts)
        N, dev = tokens.shape[0], tokens.device
        lora = None
        if max(lora_slots) >= 0:
            per_row = torch.tensor(lora_slots, device=dev)
            lora = self.bank.masks(per_row.repeat_interleave(torch.tensor(lens, device=dev)))
        x = F.embedding(tokens, self.w.embed) * self.w.embed_scale  # (N, H)
        pos = torch.cat([torch.arange(n, device=dev) for n in lens])
        ropes = {k: (cos[pos][:, None], sin[pos][:, None]) for k, (cos, sin) in self.w.rope.items()}
        local_masks: dict[int, torch.Tensor] = {}
        for n in set(lens):
            if s.window < n:  # sliding layers: key j visible from query i iff i - window < j <= i
                p = torch.arange(n, device=dev)
                d = p[:, None] - p[None, :]
                local_masks[n] = (d >= 0) & (d < s.window)  # (T, T)
        for i, lw in enumerate(self.w.layers):
            h = _rms(x, lw.in_norm, s.eps)
            qkv = self._attn_proj(i, h, lora, True)  # (N, (nh+2nkv)*hd)
            qk = _qk_norm(qkv[:, : (nh + nkv) * hd].view(N, nh + nkv, hd), lw.qk_norm, s.eps)
            qk = _rope(qk, *ropes[lw.sliding])
            v = qkv[:, (nh + nkv) * hd :].view(N, nkv, hd)
            parts = [
                self._prefill_attention(i, qk[a:b], v[a:b], slot, local_masks.get(b - a))
                for (a, b), slot in zip(spans, slots, strict=True)
            ]
            att = parts[0] if len(parts) == 1 else torch.cat(parts)
            x = x + _rms(self._o(i, att, lora, True), lw.post_attn_norm, s.eps)
            h = _rms(x, lw.pre_ff_norm, s.eps)
            x = x + _rms(self._mlp(i, h, lora, True), lw.post_ff_norm, s.eps)
        if all_positions:
            return x
        return x[[e - 1 for e in ends]]

    def _prefill_attention(self, layer: int, qk: torch.Tensor, v: torch.Tensor, slot: int,
                           local_mask: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
        """One request's attention over its own prompt (T rows), writing its K/V into
        cache ``slot``; (T, nh*hd)."""
        s, c, lw = self.spec, self.cache, self.w.layers[layer]
        nh, hd = s.n_heads, s.head_dim
        T = qk.shape[0]
        q, k = qk[:, :nh], qk[:, nh:]  # (T, nh, hd), (T, nkv, hd)
        if lw.sliding:
            keep = min(T, c.ring)  # the ring holds the last `window` positions
            idx = torch.arange(T - keep, T, device=qk.device) % c.ring
            c.k[layer][slot, idx] = k[T - keep :]
            c.v[layer][slot, idx] = v[T - keep :]
        else:
            c.k[layer][slot, :T] = k
            c.v[layer][slot, :T] = v
        qh, kh, vh = q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None]
        if lw.sliding and local_mask is not None:
            att = F.scaled_dot_product_attention(
                qh, kh, vh, attn_mask=local_mask, scale=s.scaling, enable_gqa=True
            )
        else:
            att = F.scaled_dot_product_attention(
                qh, kh, vh, is_causal=True, scale=s.scaling, enable_gqa=True
            )
        return att[0].transpose(0, 1).reshape(T, nh * hd)

    def decode(self, tokens: torch.Tensor, batch: Batch) -> torch.Tensor:
        """One token for each of B rows: tokens (B,) at ``batch.positions`` in
        ``batch.slots``. Several rows may share a slot at consecutive positions (a
        speculative draft being verified, up to the cache's ``slack`` beyond the first):
        each reads the keys up to its own position. Returns (B, H) hidden states."""
        s, c = self.spec, self.cache
        B = tokens.shape[0]
        nh, nkv, hd, g = s.n_heads, s.n_kv, s.head_dim, s.n_heads // s.n_kv
        pos, slots = batch.positions, batch.slots
        lora = self.bank.masks(batch.lora_rows) if batch.lora_rows is not None else None
        x = F.embedding(tokens, self.w.embed) * self.w.embed_scale  # (B, H)
        top = int(pos.max().item()) + 1
        n_glob = _padded(top, self.pad, c.max_len)  # cache positions read (global layers)
        n_loc = _padded(min(top, c.ring), self.pad, c.ring)  # ring entries read (sliding)
        # one row with a ring of exactly the window, read up to its position: every cached
        # position it reads is its own and in its window, nothing to mask
        masked = B > 1 or c.ring > s.window or n_glob > top or n_loc > min(top, c.ring)
        if masked:
            ar = torch.arange(max(n_glob, n_loc), device=pos.device)
            glob_inv = (ar[None, :n_glob] > pos[:, None])[:, None, None]  # (B, 1, 1, n_glob)
            # ring entry j holds the latest position q <= L with q % ring == j, L = the
            # highest position written to the row's slot in this step; the row sees it iff
            # pos - window < q <= pos (with ring == window and one row a slot: iff j <= pos)
            last = pos
            if c.ring > s.window:
                last = torch.zeros(c.slots, dtype=pos.dtype, device=pos.device)
                last = last.scatter_reduce(0, slots, pos, "amax")[slots]
            q = last[:, None] - (last[:, None] - ar[None, :n_loc]) % c.ring  # (B, n_loc)
            seen = (q >= 0) & (q > pos[:, None] - s.window) & (q <= pos[:, None])
            loc_inv = (~seen)[:, None, None]  # (B, 1, 1, n_loc)
        # where each row's new K/V go in a layer's cache viewed as (slots * positions, ...)
        flat = {True: slots * c.ring + pos % c.ring, False: slots * c.max_len + pos}
        sh = batch.shared_slot
        ropes = {k: (cos[pos][:, None], sin[pos][:, None]) for k, (cos, sin) in self.w.rope.items()}
        for i, lw in enumerate(self.w.layers):
            h = _rms(x, lw.in_norm, s.eps)
            qkv = self._attn_proj(i, h, lora, False)  # (B, (nh+2nkv)*hd)
            qk = _qk_norm(qkv[:, : (nh + nkv) * hd].view(B, nh + nkv, hd), lw.qk_norm, s.eps)
            cos, sin = ropes[lw.sliding]
            qk = _rope(qk, cos, sin)
            v = qkv[:, (nh + nkv) * hd :].view(B, nkv, hd)
            kc, vc = c.k[i], c.v[i]
            at = flat[lw.sliding]
            kc.view(-1, nkv, hd).index_copy_(0, at, qk[:, nh:])
            vc.view(-1, nkv, hd).index_copy_(0, at, v)
            n = n_loc if lw.sliding else n_glob
            inv = (loc_inv if lw.sliding else glob_inv) if masked else None
            q = qk[:, :nh].view(B, nkv, g, hd)  # queries grouped by kv head
            if sh >= 0 and not batch.contiguous:
                att = self._attend_one_slot(q, kc[sh : sh + 1, :n], vc[sh : sh + 1, :n], inv)
            else:
                if batch.contiguous:
                    K, V = kc[:B, :n], vc[:B, :n]
                else:
                    K, V = kc[slots, :n], vc[slots, :n]
                # (B, nkv, g, hd) against (B, nkv, n, hd): a plain matmul-softmax-matmul
                # (SDPA's CPU kernels are slow for one query position)
                scores = self._scores(q, K).mul_(s.scaling)
                if inv is not None:
                    scores.masked_fill_(inv, float("-inf"))
                probs = torch.softmax(scores, dim=-1).to(V.dtype)
                att = torch.matmul(probs, V.transpose(1, 2)).reshape(B, nh * hd)
            x = x + _rms(self._o(i, att, lora, False), lw.post_attn_norm, s.eps)
            h = _rms(x, lw.pre_ff_norm, s.eps)
            x = x + _rms(self._mlp(i, h, lora, False), lw.post_ff_norm, s.eps)
        return x

    def _attend_one_slot(self, q: torch.Tensor, K: torch.Tensor, V: torch.Tensor,
                         inv: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
        """Attention for B rows that all read one slot's cache (K, V: (1, n, nkv, hd)): the
        rows' queries (B, nkv, g, hd) go in as B * g queries per kv head, so the cache is
        read once instead of gathered into B copies (a 5-row verify step over a 1,000-token
        context would copy about 100 MB). ``inv`` (B, 1, 1, n): the positions each row may
        not see. -> (B, nh * hd)."""
        B, nkv, g, hd = q.shape
        n = K.shape[1]
        qs = q.transpose(0, 1).reshape(1, nkv, B * g, hd)
        scores = self._scores(qs, K).mul_(self.spec.scaling).view(nkv, B, g, n)
        if inv is not None:
            scores.masked_fill_(inv.transpose(0, 1), float("-inf"))
        probs = torch.softmax(scores, dim=-1).to(V.dtype).view(1, nkv, B * g, n)
        att = torch.matmul(probs, V.transpose(1, 2))  # (1, nkv, B * g, hd)
        return att.view(nkv, B, g, hd).transpose(0, 1).reshape(B, nkv * g * hd)

    def _scores(self, q: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
        """q (B, nkv, g, hd), K (B, n, nkv, hd) -> the fp32 products (B, nkv, g, n). In
        bf16/fp16 as ``K @ q^T``: the same products, several times faster than
        ``q @ K^T`` in PyTorch's CPU kernels when B > 1 (whose fp32 numbers differ
        slightly between the two forms: fp32 keeps ``q @ K^T``)."""
        if self.fp32:
            return torch.matmul(q, K.permute(0, 2, 3, 1))
        st = torch.matmul(K.transpose(1, 2), q.transpose(-1, -2).contiguous())  # (B, nkv, n, g)
        return st.mT.to(torch.float32, memory_format=torch.contiguous_format)
