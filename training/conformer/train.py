"""Train the streaming conformer (CTC) on the synthesized speech, within a wall-clock budget.

    python -m training.conformer.train --data .cache/conformer-data --out .cache/conformer-train --minutes 100

Features are the runtime's own numpy NeMo features (``edge_agent.asr.conformer.features``), so what the
model learns on is exactly what the edge computes. Augmentation: speed perturbation, white or babble
noise at random SNRs, a noise floor, SpecAugment. Each batch trains one chunk size of the config
(multi-look-ahead training, as NeMo's ``streaming_multi`` models), so one set of weights serves every
chunk setting. Checkpoints every few minutes; ``--resume`` continues a run (schedule included).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sentencepiece as spm
import soxr
import torch
import torch.nn.functional as F

from edge_agent.asr.conformer.features import LOG_GUARD, log_mel
from training.conformer.model import ConformerConfig, StreamingConformer
from training.conformer.rnnt_loss import rnnt_loss

RATE = 16000


@dataclass
class Clip:
    audio: np.ndarray  # int16
    text: str
    ids: list[int]


DEV_CLIPS = 96


def load_set(path: Path, sp: spm.SentencePieceProcessor | None) -> list[Clip]:
    data = np.load(path / "audio.npz")
    pcm, offsets = data["pcm"], data["offsets"]
    rows = [json.loads(line) for line in (path / "manifest.jsonl").read_text().splitlines()]
    return [
        Clip(pcm[offsets[i] : offsets[i + 1]], row["text"], sp.encode(row["text"]) if sp is not None else [])
        for i, row in enumerate(rows)
    ]


def parse_extra(spec: str) -> tuple[Path, int]:
    """``DIR`` or ``DIR:N`` (the split repeated N times)."""
    head, sep, tail = spec.rpartition(":")
    if sep and tail.isdigit() and int(tail) > 0:
        return Path(head), int(tail)
    return Path(spec), 1


def train_tokenizer(texts: Sequence[str], out: Path, vocab: int) -> spm.SentencePieceProcessor:
    out.mkdir(parents=True, exist_ok=True)
    corpus = out / "corpus.txt"
    corpus.write_text("\n".join(texts) + "\n")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(out / "tokenizer"), vocab_size=vocab, model_type="unigram",
        character_coverage=1.0, bos_id=-1, eos_id=-1, unk_id=0, pad_id=-1, num_threads=2,
    )  # fmt: skip
    corpus.unlink()
    return spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))


def augment(clip: Clip, pool: Sequence[Clip], r: random.Random) -> np.ndarray:
    audio = clip.audio.astype(np.float32) / 32768
    if r.random() < 0.5:
        speed = r.uniform(0.88, 1.12)
        audio = soxr.resample(audio, RATE * speed, RATE).astype(np.float32)
    rms = float(np.sqrt(np.mean(audio**2))) + 1e-6
    kind = r.random()
    if kind < 0.15:
        snr = r.uniform(3, 30)
        audio = audio + np.random.default_rng(r.getrandbits(32)).standard_normal(len(audio)).astype(
            np.float32
        ) * (rms / 10 ** (snr / 20))
    elif kind < 0.3:
        babble = np.zeros_like(audio)
        for _ in range(r.randint(1, 3)):
            other = pool[r.randrange(len(pool))].audio.astype(np.float32) / 32768
            other = np.resize(other, len(audio))
            babble += np.roll(other, r.randrange(len(audio)))
        b_rms = float(np.sqrt(np.mean(babble**2))) + 1e-6
        audio = audio + babble * (rms / b_rms / 10 ** (r.uniform(5, 20) / 20))
    floor = 10 ** (r.uniform(-85, -55) / 20)
    audio = (
        audio
        + np.random.default_rng(r.getrandbits(32)).standard_normal(len(audio)).astype(np.float32) * floor
    )
    return np.clip(audio * 10 ** (r.uniform(-8, 6) / 20), -1, 1)


def spec_augment(feats: torch.Tensor, length: int, r: random.Random) -> None:
    for _ in range(2):
        width = r.randint(0, 12)
        start = r.randint(0, feats.shape[0] - width)
        feats[start : start + width, :length] = 0.0
    for _ in range(2):
        width = r.randint(0, min(20, max(1, length // 20)))
        start = r.randint(0, max(0, length - width))
        feats[:, start : start + width] = 0.0


def batches(clips: Sequence[Clip], max_seconds: float, r: random.Random) -> Iterator[list[Clip]]:
    """Length-bucketed batches in random order, each at most ``max_seconds`` of (padded) audio."""
    order = sorted(range(len(clips)), key=lambda i: len(clips[i].audio) + r.randrange(RATE // 2))
    out: list[list[Clip]] = []
    batch: list[Clip] = []
    longest = 0
    for i in order:
        clip = clips[i]
        longest_next = max(longest, len(clip.audio))
        if batch and longest_next * (len(batch) + 1) > max_seconds * RATE:
            out.append(batch)
            batch, longest_next = [], len(clip.audio)
        batch.append(clip)
        longest = longest_next
    if batch:
        out.append(batch)
    r.shuffle(out)
    yield from out


def collate(
    batch: Sequence[Clip], pool: Sequence[Clip], r: random.Random, train: bool
) -> tuple[torch.Tensor, ...]:
    feats = []
    for clip in batch:
        audio = augment(clip, pool, r) if train else clip.audio.astype(np.float32) / 32768
        feats.append(torch.from_numpy(log_mel(audio)))
    lengths = torch.tensor([f.shape[1] for f in feats])
    # Pad with the features of digital silence (what the runtime pads a final chunk with).
    x = torch.full((len(feats), feats[0].shape[0], int(lengths.max())), math.log(LOG_GUARD))
    for i, f in enumerate(feats):
        x[i, :, : f.shape[1]] = f
        if train:
            spec_augment(x[i], f.shape[1], r)
    target_len = torch.tensor([len(clip.ids) for clip in batch])
    # Padded [B, U] targets (CTC takes them padded too; the pad never enters either loss).
    targets = torch.zeros(len(batch), max(1, int(target_len.max())), dtype=torch.long)
    for i, clip in enumerate(batch):
        targets[i, : len(clip.ids)] = torch.tensor(clip.ids, dtype=torch.long)
    return x, lengths, targets, target_len


def greedy_text(logprobs: torch.Tensor, length: int, sp: spm.SentencePieceProcessor, blank: int) -> str:
    ids = logprobs[:length].argmax(-1).tolist()
    out = [t for i, t in enumerate(ids) if t != blank and (i == 0 or t != ids[i - 1])]
    return str(sp.decode(out))


def word_errors(ref: str, hyp: str) -> int:
    a, b = ref.split(), hyp.split()
    row = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        prev, row[0] = row[0], i
        for j in range(1, len(b) + 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (a[i - 1] != b[j - 1]))
    return row[len(b)]


def transducer_greedy(model: StreamingConformer, encoded: torch.Tensor, max_symbols: int = 10) -> list[int]:
    """RNN-T greedy over one utterance's frames [T, d] (the runtime's algorithm, for dev WER)."""
    blank = model.cfg.vocab_size
    pred, state = model.prediction(torch.tensor([[blank]]))
    out: list[int] = []
    for t in range(encoded.shape[0]):
        for _ in range(max_symbols):
            token = int(model.joint(encoded[None, t : t + 1], pred)[0, 0, 0].argmax())
            if token == blank:
                break
            out.append(token)
            pred, state = model.prediction(torch.tensor([[token]]), state)
    return out


def evaluate(
    model: StreamingConformer,
    clips: Sequence[Clip],
    sp: spm.SentencePieceProcessor,
    chunk: int,
    transducer: bool = False,
) -> float:
    model.eval()
    errors = words = 0
    r = random.Random(0)
    with torch.no_grad():
        for start in range(0, len(clips), 16):
            batch = list(clips[start : start + 16])
            x, lengths, _, _ = collate(batch, batch, r, train=False)
            encoded, out_len = model.encode(x, lengths, chunk)
            logprobs = F.log_softmax(model.ctc(encoded), dim=-1)
            for i, clip in enumerate(batch):
                if transducer:
                    hyp = str(sp.decode(transducer_greedy(model, encoded[i, : int(out_len[i])])))
                else:
                    hyp = greedy_text(logprobs[i], int(out_len[i]), sp, model.cfg.vocab_size)
                errors += word_errors(clip.text, hyp)
                words += len(clip.text.split())
    model.train()
    return errors / max(1, words)


def release(model: StreamingConformer, tokenizer: Path, out: Path) -> None:
    """Weights (fp16, no optimizer state: a few MB) and the tokenizer, enough to export the model or start
    the next run from it (``--init``)."""
    out.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().half() for k, v in model.state_dict().items()}
    torch.save({"config": model.cfg.to_dict(), "model": weights}, out / "weights.pt")
    shutil.copy(tokenizer, out / "tokenizer.model")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(".cache/conformer-data"))
    parser.add_argument(
        "--extra-data",
        nargs="*",
        default=[],
        help="more data directories whose train split joins --data's (e.g. one built with --pool wordnet); "
        "DIR:N repeats that split N times per epoch (a small set of other voices, augmented anew each time)",
    )
    parser.add_argument("--out", type=Path, default=Path(".cache/conformer-train"))
    parser.add_argument("--minutes", type=float, default=100.0)
    parser.add_argument("--batch-seconds", type=float, default=160.0)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=600)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument(
        "--init",
        type=Path,
        help="start from released weights (a directory with weights.pt and tokenizer.model, e.g. "
        "training/conformer/release): a new run with a fresh schedule, same vocabulary",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rnnt-weight", type=float, default=0.5, help="transducer loss weight (CTC's is 1)")
    parser.add_argument(
        "--rnnt-every", type=int, default=2, help="transducer loss on every Nth batch (it costs ~40%%)"
    )
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="bfloat16 autocast for the forward pass (1.27x the steps per minute on AVX512-BF16 cores)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    r = random.Random(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    texts = [
        json.loads(line)["text"] for line in (args.data / "train" / "manifest.jsonl").read_text().splitlines()
    ]
    cfg = ConformerConfig()
    if args.init is not None and not (args.out / "tokenizer.model").exists():
        shutil.copy(args.init / "tokenizer.model", args.out / "tokenizer.model")
    if (args.out / "tokenizer.model").exists():
        sp = spm.SentencePieceProcessor(model_file=str(args.out / "tokenizer.model"))
    else:
        sp = train_tokenizer(texts, args.out, cfg.vocab_size)
    # Dev clips are held out of the training split (each clip has its own sentence), so the figures
    # reported on the test sets are never watched during training.
    train = load_set(args.data / "train", sp)
    train, dev = train[:-DEV_CLIPS], train[-DEV_CLIPS:]
    for extra in args.extra_data:
        folder, repeat = parse_extra(extra)
        train += load_set(folder / "train", sp) * repeat
    print(f"train {len(train)} clips, {sum(len(c.audio) for c in train) / RATE / 3600:.2f} h", flush=True)
    model = StreamingConformer(cfg)
    if args.init is not None and not args.resume:
        released = torch.load(args.init / "weights.pt", weights_only=False)
        if released["config"] != cfg.to_dict():
            raise SystemExit(f"{args.init}: weights of another configuration ({released['config']})")
        model.load_state_dict({k: v.float() for k, v in released["model"].items()})
        print(f"initialized from {args.init}", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=1e-3)
    step, elapsed, epoch = 0, 0.0, 0
    ckpt = args.out / "checkpoint.pt"
    if args.resume and ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, elapsed, epoch = state["step"], state["elapsed"], state["epoch"]
        print(f"resumed at step {step}, {elapsed / 60:.1f} min", flush=True)
    budget = args.minutes * 60
    started = time.monotonic() - elapsed
    last_save = time.monotonic()
    log = (args.out / "train.log").open("a")

    def save() -> None:
        state = {"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                 "elapsed": time.monotonic() - started, "epoch": epoch, "config": cfg.to_dict()}  # fmt: skip
        torch.save(state, args.out / "checkpoint.tmp")
        (args.out / "checkpoint.tmp").replace(ckpt)

    model.train()
    done = False
    # Features for the next batch are computed on a second thread while this one trains (numpy and
    # soxr release the GIL), each batch with its own seeded generator.
    prefetch = ThreadPoolExecutor(1)

    def prepare(batch: list[Clip], seed: int) -> tuple[int, tuple[torch.Tensor, ...]]:
        rb = random.Random(seed)
        return rb.choice(cfg.chunk_sizes), collate(batch, train, rb, train=True)

    while not done:
        order = list(batches(train, args.batch_seconds, random.Random(args.seed * 1000 + epoch)))
        pending = prefetch.submit(prepare, order[0], r.getrandbits(32)) if order else None
        for k in range(len(order)):
            frac = (time.monotonic() - started) / budget
            if frac >= 1 or pending is None:
                done = True
                break
            chunk, (x, lengths, targets, target_len) = pending.result()
            more = k + 1 < len(order)
            pending = prefetch.submit(prepare, order[k + 1], r.getrandbits(32)) if more else None
            lr = (
                args.lr
                * min(1.0, (step + 1) / args.warmup)
                * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * frac)))
            )
            for group in opt.param_groups:
                group["lr"] = lr
            # bf16 autocast runs the matrix products in bfloat16 (weights and optimizer stay fp32);
            # both losses read fp32 log-probs.
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                encoded, out_len = model.encode(x, lengths, chunk)
                logprobs = F.log_softmax(model.ctc(encoded).float(), dim=-1)
                loss = F.ctc_loss(
                    logprobs.transpose(0, 1), targets, out_len, target_len, blank=cfg.vocab_size,
                    reduction="mean", zero_infinity=True,
                )  # fmt: skip
                ctc_value = loss.item()
                if cfg.rnnt and args.rnnt_weight > 0 and step % args.rnnt_every == 0:
                    logits = model.transducer_logits(encoded, targets)
                    transducer = rnnt_loss(logits, targets, out_len, target_len, cfg.vocab_size)
                    # Per-token scale, like the CTC loss's "mean" reduction, so the weights compare.
                    loss = loss + args.rnnt_weight * transducer / target_len.float().mean()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            step += 1
            if step % 25 == 0:
                line = f"step {step} epoch {epoch} min {(time.monotonic() - started) / 60:.1f} lr {lr:.2e} loss {loss.item():.3f} ctc {ctc_value:.3f}"  # noqa: E501
                print(line, flush=True)
                log.write(line + "\n")
                log.flush()
            if time.monotonic() - last_save > 300:
                save()
                last_save = time.monotonic()
            if step % 400 == 0:
                wer = evaluate(model, dev, sp, 4)
                line = f"step {step} dev WER (chunk 4) {wer:.3f}"
                if cfg.rnnt and step % 1200 == 0:
                    line += f" transducer (24 clips) {evaluate(model, dev[:24], sp, 4, transducer=True):.3f}"
                print(line, flush=True)
                log.write(line + "\n")
        else:
            epoch += 1
    save()
    release(model, args.out / "tokenizer.model", args.out / "release")
    for chunk in cfg.chunk_sizes:
        print(f"final dev WER chunk {chunk}: {evaluate(model, dev, sp, chunk):.3f}", flush=True)
        if cfg.rnnt:
            wer = evaluate(model, dev, sp, chunk, transducer=True)
            print(f"final dev WER chunk {chunk} (transducer): {wer:.3f}", flush=True)


if __name__ == "__main__":
    main()
