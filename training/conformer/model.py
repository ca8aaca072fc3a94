"""A small cache-aware streaming FastConformer (CTC), in torch, for training and ONNX export only.

Design (after NeMo's FastConformer and "Stateful Conformer with Cache-based Inference for Streaming ASR"):
- 8x depthwise-separable conv subsampling, causal in time: encoder frame j sees feature frames
  [8j - 14, 8j]. The first two encoder frames see the zero padding at a window's start, so every window
  drops them (``DROP``); a streaming step is then ``8S + 9`` feature frames in, ``S`` encoder frames out,
  exactly NeMo's ``window_size`` / ``chunk_shift`` geometry (``8S + 9`` and ``8S``).
- Conformer blocks (macaron feed-forwards, self-attention, causal depthwise convolution, layer norms).
  Attention is *chunked-limited*: a frame in chunk ``c`` (``S`` frames per chunk) sees frames
  ``[cS - L, (c + 1) S)``. Positions enter as a learned relative bias per head over that range.
- Streaming state per layer: the last ``L`` attention inputs (``cache_last_channel``) and the last
  ``K - 1`` depthwise-conv inputs (``cache_last_time``), as NeMo exports them.

``forward`` computes whole utterances under the chunk mask (training, and the reference the streaming
graph must equal); ``StreamingStep`` is one chunk with caches, the graph exported to ONNX.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DROP = 2  # encoder frames dropped after subsampling (contaminated by the window's zero padding)
PRE_ENCODE = 9  # feature frames in front of each chunk: 8 * DROP - 7 (the subsampler's reach back)


@dataclass(frozen=True)
class ConformerConfig:
    n_mels: int = 80
    vocab_size: int = 256  # without blank; blank is vocab_size
    d_model: int = 144
    n_layers: int = 8
    n_heads: int = 4
    ff_mult: int = 4
    conv_kernel: int = 9
    sub_channels: int = 144
    left_context: int = 64  # encoder frames (80 ms each)
    chunk_sizes: tuple[int, ...] = (2, 4, 8)  # encoder frames per streaming step (look-ahead = S - 1)
    dropout: float = 0.1
    rnnt: bool = True  # a transducer head beside the CTC head (NeMo's hybrid RNNT/CTC models)
    pred_hidden: int = 256
    joint_hidden: int = 256

    @property
    def max_chunk(self) -> int:
        return max(self.chunk_sizes)

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["chunk_sizes"] = list(self.chunk_sizes)
        return out


def subsampled_length(frames: Tensor) -> Tensor:
    """Encoder frames kept for ``frames`` feature frames: three ceil-halvings, less DROP."""
    out = frames
    for _ in range(3):
        out = torch.div(out + 1, 2, rounding_mode="floor")
    return torch.clamp(out - DROP, min=0)


class Subsampling(nn.Module):
    def __init__(self, cfg: ConformerConfig) -> None:
        super().__init__()
        c = cfg.sub_channels
        self.conv1 = nn.Conv2d(1, c, 3, stride=2)
        self.dw2 = nn.Conv2d(c, c, 3, stride=2, groups=c)
        self.pw2 = nn.Conv2d(c, c, 1)
        self.dw3 = nn.Conv2d(c, c, 3, stride=2, groups=c)
        self.pw3 = nn.Conv2d(c, c, 1)
        freq = cfg.n_mels
        for _ in range(3):
            freq = (freq + 2 - 3) // 2 + 1
        self.out = nn.Linear(c * freq, cfg.d_model)

    @staticmethod
    def _pad(x: Tensor) -> Tensor:
        # [B, C, T, F]: causal in time (2 frames before), symmetric in frequency.
        return F.pad(x, (1, 1, 2, 0))

    def forward(self, feats: Tensor) -> Tensor:
        """[B, n_mels, T] -> [B, ceil3(T), d_model] (before DROP)."""
        x = feats.transpose(1, 2).unsqueeze(1)
        x = F.relu(self.conv1(self._pad(x)))
        x = F.relu(self.pw2(self.dw2(self._pad(x))))
        x = F.relu(self.pw3(self.dw3(self._pad(x))))
        b, c, t, f = x.shape
        return self.out(x.permute(0, 2, 1, 3).reshape(b, t, c * f))


class FeedForward(nn.Module):
    def __init__(self, cfg: ConformerConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(cfg.d_model)
        self.up = nn.Linear(cfg.d_model, cfg.d_model * cfg.ff_mult)
        self.down = nn.Linear(cfg.d_model * cfg.ff_mult, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.down(F.silu(self.up(self.norm(x)))))


class Attention(nn.Module):
    def __init__(self, cfg: ConformerConfig) -> None:
        super().__init__()
        self.heads = cfg.n_heads
        self.dh = cfg.d_model // cfg.n_heads
        self.norm = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        # Relative distance key - query spans [-(L + S_max - 1), S_max - 1].
        self.span = cfg.left_context + cfg.max_chunk - 1
        self.rel_bias = nn.Parameter(torch.zeros(cfg.n_heads, self.span + cfg.max_chunk))
        self.drop = nn.Dropout(cfg.dropout)

    def bias(self, distance: Tensor) -> Tensor:
        """[H, Q, K] bias for a [Q, K] matrix of key - query distances."""
        index = (distance + self.span).clamp(0, self.rel_bias.shape[1] - 1)
        return self.rel_bias[:, index]

    def attend(self, h_q: Tensor, h_kv: Tensor, bias: Tensor, allowed: Tensor) -> Tensor:
        """h_q [B, Q, d], h_kv [B, K, d] (normed inputs), bias [H, Q, K], allowed [B|1, Q, K] bool."""
        b, q_len, d = h_q.shape
        w_q, w_k, w_v = self.qkv.weight.split(d, 0)
        b_q, b_k, b_v = self.qkv.bias.split(d, 0)
        q = F.linear(h_q, w_q, b_q).view(b, q_len, self.heads, self.dh).transpose(1, 2)
        k = F.linear(h_kv, w_k, b_k).view(b, -1, self.heads, self.dh).transpose(1, 2)
        v = F.linear(h_kv, w_v, b_v).view(b, -1, self.heads, self.dh).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.dh) + bias.unsqueeze(0)
        scores = scores.masked_fill(~allowed.unsqueeze(1), -1e4)
        weights = self.drop(torch.softmax(scores, dim=-1))
        out = (weights @ v).transpose(1, 2).reshape(b, q_len, d)
        return self.drop(self.proj(out))


class ConvModule(nn.Module):
    def __init__(self, cfg: ConformerConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.kernel = cfg.conv_kernel
        self.norm = nn.LayerNorm(d)
        self.pw1 = nn.Linear(d, 2 * d)
        self.dw = nn.Conv1d(d, d, cfg.conv_kernel, groups=d)
        self.dw_norm = nn.LayerNorm(d)
        self.pw2 = nn.Linear(d, d)
        self.drop = nn.Dropout(cfg.dropout)

    def gated(self, x: Tensor) -> Tensor:
        """[B, T, d] -> [B, d, T]: the depthwise conv's input (what cache_last_time holds)."""
        return F.glu(self.pw1(self.norm(x)), dim=-1).transpose(1, 2)

    def finish(self, conv_in: Tensor) -> Tensor:
        """[B, d, K - 1 + T] (left context included) -> [B, T, d]."""
        y = self.dw(conv_in).transpose(1, 2)
        return self.drop(self.pw2(F.silu(self.dw_norm(y))))


class Block(nn.Module):
    def __init__(self, cfg: ConformerConfig) -> None:
        super().__init__()
        self.ff1 = FeedForward(cfg)
        self.att = Attention(cfg)
        self.conv = ConvModule(cfg)
        self.ff2 = FeedForward(cfg)
        # No post-block LayerNorm: with it this small model sat on the CTC blank plateau for thousands of
        # steps (it could not even overfit 8 utterances in 100 steps); pre-norm residual blocks learn at once.

    def forward_full(self, x: Tensor, distance: Tensor, allowed: Tensor, pad_mask: Tensor) -> Tensor:
        x = x + 0.5 * self.ff1(x)
        h = self.att.norm(x)
        x = x + self.att.attend(h, h, self.att.bias(distance), allowed)
        g = self.conv.gated(x) * pad_mask.unsqueeze(1)  # padded frames must not leak into a later batch item
        x = x + self.conv.finish(F.pad(g, (self.conv.kernel - 1, 0)))
        x = x + 0.5 * self.ff2(x)
        return x

    def forward_step(
        self, x: Tensor, cache_ch: Tensor, cache_t: Tensor, distance: Tensor, allowed: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One chunk: x [B, S, d], cache_ch [B, L, d], cache_t [B, d, K-1]."""
        x = x + 0.5 * self.ff1(x)
        h = self.att.norm(x)
        kv = torch.cat([cache_ch, h], dim=1)
        x = x + self.att.attend(h, kv, self.att.bias(distance), allowed)
        conv_in = torch.cat([cache_t, self.conv.gated(x)], dim=2)
        x = x + self.conv.finish(conv_in)
        x = x + 0.5 * self.ff2(x)
        left = cache_ch.shape[1]
        return x, kv[:, -left:], conv_in[:, :, -(self.conv.kernel - 1) :]


class PredictionNet(nn.Module):
    """NeMo's RNNTDecoder: embedding (blank as a zero pad) and a one-layer LSTM."""

    def __init__(self, cfg: ConformerConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab_size + 1, cfg.pred_hidden, padding_idx=cfg.vocab_size)
        self.lstm = nn.LSTM(cfg.pred_hidden, cfg.pred_hidden, num_layers=1, batch_first=True)

    def forward(
        self, tokens: Tensor, state: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        out, (h, c) = self.lstm(self.embed(tokens), state)
        return out, (h, c)


class Joint(nn.Module):
    """NeMo's RNNTJoint: project both sides, add, ReLU, project to V + 1 logits (blank last)."""

    def __init__(self, cfg: ConformerConfig) -> None:
        super().__init__()
        self.enc = nn.Linear(cfg.d_model, cfg.joint_hidden)
        self.pred = nn.Linear(cfg.pred_hidden, cfg.joint_hidden)
        self.out = nn.Linear(cfg.joint_hidden, cfg.vocab_size + 1)

    def forward(self, enc: Tensor, pred: Tensor) -> Tensor:
        """enc [B, T, d], pred [B, U, H] -> logits [B, T, U, V + 1]."""
        return self.out(F.relu(self.enc(enc)[:, :, None] + self.pred(pred)[:, None]))


class StreamingConformer(nn.Module):
    def __init__(self, cfg: ConformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.sub = Subsampling(cfg)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ctc = nn.Linear(cfg.d_model, cfg.vocab_size + 1)
        if cfg.rnnt:
            self.prediction = PredictionNet(cfg)
            self.joint = Joint(cfg)

    def chunk_mask(self, frames: int, chunk: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """(distance [T, T], allowed [T, T]) for chunked-limited attention over a whole utterance."""
        pos = torch.arange(frames, device=device)
        distance = pos[None, :] - pos[:, None]
        chunk_start = (pos // chunk) * chunk
        allowed = (pos[None, :] < chunk_start[:, None] + chunk) & (
            pos[None, :] >= chunk_start[:, None] - self.cfg.left_context
        )
        return distance, allowed

    def encode(self, feats: Tensor, lengths: Tensor, chunk: int) -> tuple[Tensor, Tensor]:
        """Whole utterances under the chunk mask: [B, n_mels, T] -> ([B, T', d], lengths')."""
        x = self.sub(feats)[:, DROP:]
        out_len = subsampled_length(lengths)
        frames = x.shape[1]
        distance, allowed = self.chunk_mask(frames, chunk, x.device)
        valid = torch.arange(frames, device=x.device)[None, :] < out_len[:, None]
        allowed_b = allowed[None] & valid[:, None, :]
        pad_mask = valid.to(x.dtype)
        for block in self.blocks:
            x = block.forward_full(x, distance, allowed_b, pad_mask)
        return x, out_len

    def forward(self, feats: Tensor, lengths: Tensor, chunk: int) -> tuple[Tensor, Tensor]:
        x, out_len = self.encode(feats, lengths, chunk)
        return F.log_softmax(self.ctc(x), dim=-1), out_len

    def transducer_logits(self, encoded: Tensor, targets: Tensor) -> Tensor:
        """encoded [B, T, d], targets [B, U] (padded) -> joint logits [B, T, U + 1, V + 1]."""
        start = torch.full_like(targets[:, :1], self.cfg.vocab_size)  # blank primes the decoder
        pred, _ = self.prediction(torch.cat([start, targets], dim=1))
        return self.joint(encoded, pred)


class StreamingStep(nn.Module):
    """One streaming step with NeMo's export signature (batch first, caches per layer).

    inputs: audio_signal [B, n_mels, 8S + 9], length [B], cache_last_channel [B, N, L, d],
    cache_last_time [B, N, d, K - 1], cache_last_channel_len [B]
    outputs: logprobs [B, S, V + 1], encoded_lengths, cache_last_channel_next, cache_last_time_next,
    cache_last_channel_next_len
    """

    def __init__(self, model: StreamingConformer, chunk: int, head: str = "ctc") -> None:
        super().__init__()
        self.model = model
        self.chunk = chunk
        self.head = head  # "ctc": log-probs [B, S, V + 1]; "encoder": encoder outputs [B, d, S]
        left = model.cfg.left_context
        q = torch.arange(chunk)
        k = torch.arange(left + chunk)
        self.register_buffer("distance", (k[None, :] - left) - q[:, None], persistent=False)

    def forward(
        self,
        audio_signal: Tensor,
        length: Tensor,
        cache_last_channel: Tensor,
        cache_last_time: Tensor,
        cache_last_channel_len: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        cfg = self.model.cfg
        left = cfg.left_context
        x = self.model.sub(audio_signal)[:, DROP : DROP + self.chunk]
        key_index = torch.arange(left + self.chunk, device=x.device)
        # Cache entries are right-aligned (newest last); only the last cache_len of them are real.
        allowed = key_index[None, :] >= (left - cache_last_channel_len)[:, None]
        allowed = allowed[:, None, :].expand(-1, self.chunk, -1)
        next_ch = []
        next_t = []
        for n, block in enumerate(self.model.blocks):
            x, ch, t = block.forward_step(
                x, cache_last_channel[:, n], cache_last_time[:, n], self.distance, allowed
            )
            next_ch.append(ch)
            next_t.append(t)
        out = F.log_softmax(self.model.ctc(x), dim=-1) if self.head == "ctc" else x.transpose(1, 2)
        encoded = torch.clamp(subsampled_length(length), max=self.chunk)
        next_len = torch.clamp(cache_last_channel_len + self.chunk, max=left)
        return out, encoded, torch.stack(next_ch, 1), torch.stack(next_t, 1), next_len


class DecoderStep(nn.Module):
    """The prediction net with sherpa-onnx's NeMo decoder signature (``decoder.onnx``).

    inputs: targets [B, U] int32, target_length [B] int32, h [1, B, H], c [1, B, H]
    outputs: decoder outputs [B, H, U], prednet_lengths [B], h', c'
    """

    def __init__(self, model: StreamingConformer) -> None:
        super().__init__()
        self.prediction = model.prediction

    def forward(
        self, targets: Tensor, target_length: Tensor, h: Tensor, c: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        out, (h2, c2) = self.prediction(targets.long(), (h, c))
        return out.transpose(1, 2), target_length, h2, c2


class JointStep(nn.Module):
    """The joint with sherpa-onnx's NeMo joiner signature (``joiner.onnx``): raw logits, blank last.

    inputs: encoder_outputs [B, d, T], decoder_outputs [B, H, U] -> logits [B, T, U, V + 1]
    """

    def __init__(self, model: StreamingConformer) -> None:
        super().__init__()
        self.joint = model.joint

    def forward(self, encoder_outputs: Tensor, decoder_outputs: Tensor) -> Tensor:
        return self.joint(encoder_outputs.transpose(1, 2), decoder_outputs.transpose(1, 2))
