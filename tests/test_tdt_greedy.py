"""TDT greedy search (``edge_agent.asr.conformer.transducer.TdtGreedy``).

On a scripted joint: exact tokens, frames and joint calls, the guards, and independence from chunking.
On the bundled transducer with a duration head grafted onto its joint graph (every step's duration is 1):
TDT greedy must then give exactly RNN-T greedy with one symbol per frame, through the real ONNX loader.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edge_agent.asr.conformer.onnx_model import ModelFormatError, NemoStreamingModel
from edge_agent.asr.conformer.stream import BUNDLED, ConformerStream, load_conformer, new_decoder
from edge_agent.asr.conformer.transducer import TdtGreedy, TransducerGreedy
from tests.speech import Clip
from tests.test_transducer_greedy import BLANK, ScriptedModel, Vocab

DURATIONS = (0, 1, 2, 3, 4)
# Frame -> tokens due on it. Frames without tokens are skipped by predicted durations.
SCRIPT = {1: [1, 2], 4: [3], 5: [4, 4, 0], 9: [2]}
FRAMES = 11


class ScriptedTdt:
    """Emits the next scripted token on its frame; the duration points at the next frame with tokens
    (0 while the current frame has more), capped at 4; past the last token, blank with duration 4."""

    def __init__(self, script: dict[int, list[int]], durations: tuple[int, ...] = DURATIONS) -> None:
        self.vocabulary = Vocab()
        self.durations = durations
        self.plan = [(frame, token) for frame in sorted(script) for token in script[frame]]
        self.joint_calls = 0

    predict = ScriptedModel.predict  # the "prediction net" counts the tokens emitted so far

    def joint(self, encoder: np.ndarray, decoder: np.ndarray) -> np.ndarray:
        self.joint_calls += 1
        emitted = int(decoder[0, 0, 0])
        logits = np.zeros((len(encoder), BLANK + 1 + len(self.durations)), np.float32)
        for row, frame in enumerate(encoder[:, 0].astype(int)):
            pending = self.plan[emitted:]
            if pending and pending[0][0] == frame:
                token = pending[0][1]
                more_here = len(pending) > 1 and pending[1][0] == frame
                nxt = frame if more_here else (pending[1][0] if len(pending) > 1 else frame + 4)
            else:
                token = BLANK
                nxt = pending[0][0] if pending and pending[0][0] > frame else frame + 4
            logits[row, token] = 4.0
            logits[row, BLANK + 1 + self.durations.index(min(4, nxt - frame))] = 3.0
        return logits


def _frames(n: int, start: int = 0) -> np.ndarray:
    return np.arange(start, start + n, dtype=np.float32)[:, None]


def test_tokens_land_on_their_frames_and_durations_skip_the_rest() -> None:
    model = ScriptedTdt(SCRIPT)
    greedy = TdtGreedy(model)  # type: ignore[arg-type]
    greedy.accept(_frames(FRAMES))
    assert [t.id for t in greedy.tokens] == [1, 2, 3, 4, 4, 0, 2]
    assert [t.frame for t in greedy.tokens] == [1, 1, 4, 5, 5, 5, 9]
    assert greedy.frames == FRAMES
    p = np.exp(4.0) / (np.exp(4.0) + BLANK)  # token logits only: the durations are not in the softmax
    assert all(abs(t.logprob - np.log(p)) < 1e-6 for t in greedy.tokens)
    assert model.joint_calls == 7  # one per emission; the last duration reaches past the end


def test_the_result_does_not_depend_on_how_frames_are_chunked() -> None:
    whole = TdtGreedy(ScriptedTdt(SCRIPT))  # type: ignore[arg-type]
    whole.accept(_frames(FRAMES))
    for split in ([1, 10], [2, 2, 2, 2, 3], [3, 8], [1] * 11, [6, 0, 5], [4, 1, 6]):
        greedy = TdtGreedy(ScriptedTdt(SCRIPT))  # type: ignore[arg-type]
        start = 0
        for size in split:
            greedy.accept(_frames(size, start))
            start += size
        assert greedy.tokens == whole.tokens, split
        branch = greedy.copy()
        branch.accept(_frames(3, start))  # a speculative tail leaves the original alone
        assert greedy.frames == FRAMES and branch.frames == FRAMES + 3


class _Stuck(ScriptedTdt):
    """Always the same token with duration 0, or blank with duration 0: the guards must move on."""

    def __init__(self, token: int) -> None:
        super().__init__({})
        self.token = token

    def joint(self, encoder: np.ndarray, decoder: np.ndarray) -> np.ndarray:
        logits = np.zeros((len(encoder), BLANK + 1 + len(DURATIONS)), np.float32)
        logits[:, self.token] = 4.0
        logits[:, BLANK + 1] = 3.0  # duration 0
        return logits


def test_guards_move_on_from_a_frame() -> None:
    stuck = TdtGreedy(_Stuck(3), max_symbols=3)  # type: ignore[arg-type]
    stuck.accept(_frames(4))
    assert [t.frame for t in stuck.tokens] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    blank = TdtGreedy(_Stuck(BLANK))  # type: ignore[arg-type]
    blank.accept(_frames(4))
    assert blank.tokens == [] and blank.frames == 4


# -- the real loader, on the bundled transducer with a grafted duration head --------------------


def _graft_durations(directory: Path, durations_metadata: str | None) -> None:
    """Append 5 duration logits (duration index 1 always wins) to the joint's output."""
    joiner = next(p for p in (directory / "joiner.int8.onnx", directory / "joiner.onnx") if p.exists())
    model = onnx.load(str(joiner))
    graph = model.graph
    out = graph.output[0]
    out.name, logits = "tdt_logits", out.name
    graph.node.extend([
        helper.make_node("Slice", [logits, "tdt_start", "tdt_end", "tdt_axis"], ["tdt_slice"]),
        helper.make_node("Mul", ["tdt_slice", "tdt_zero"], ["tdt_zeroed"]),
        helper.make_node("Add", ["tdt_zeroed", "tdt_bias"], ["tdt_durations"]),
        helper.make_node("Concat", [logits, "tdt_durations"], ["tdt_logits"], axis=-1),
    ])  # fmt: skip
    graph.initializer.extend([
        helper.make_tensor("tdt_start", TensorProto.INT64, [1], [0]),
        helper.make_tensor("tdt_end", TensorProto.INT64, [1], [5]),
        helper.make_tensor("tdt_axis", TensorProto.INT64, [1], [-1]),
        helper.make_tensor("tdt_zero", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("tdt_bias", TensorProto.FLOAT, [5], [0.0, 5.0, 0.0, 0.0, 0.0]),
    ])  # fmt: skip
    dims = out.type.tensor_type.shape.dim
    if dims[-1].HasField("dim_value"):
        dims[-1].dim_value += 5
    onnx.save(model, str(joiner))
    if durations_metadata is not None:
        encoder = next(p for p in (directory / "encoder.int8.onnx", directory / "encoder.onnx") if p.exists())
        enc = onnx.load(str(encoder))
        enc.metadata_props.append(onnx.StringStringEntryProto(key="tdt_durations", value=durations_metadata))
        onnx.save(enc, str(encoder))


@pytest.fixture(scope="module")
def tdt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tdt") / "model"
    shutil.copytree(BUNDLED, directory)
    _graft_durations(directory, None)
    return directory


@pytest.mark.model
def test_a_tdt_joint_decodes_like_rnnt_with_one_symbol_per_frame(
    tdt_dir: Path, tts_clips: list[Clip]
) -> None:
    tdt = load_conformer(tdt_dir, 1, "rnnt")
    rnnt = load_conformer(BUNDLED, 1, "rnnt")
    assert tdt.onnx.durations == (0, 1, 2, 3, 4) and rnnt.onnx.durations == ()
    assert isinstance(new_decoder(tdt.onnx), TdtGreedy)
    for clip in tts_clips[:3]:
        a: ConformerStream = tdt.create_stream()
        a.accept(clip.samples())
        decoded = a.finalize()
        # The same audio through the unmodified head with RNN-T greedy limited to one token per frame
        # (a fresh stream's final starts from its first checkpoint's search).
        b = rnnt.create_stream()
        b._checkpoints[0] = replace(b._checkpoints[0], greedy=TransducerGreedy(rnnt.onnx, max_symbols=1))
        b.accept(clip.samples())
        reference = b.finalize()
        assert decoded.text and decoded.text == reference.text, clip.text
        assert [t.id for t in decoded.tokens] == [t.id for t in reference.tokens]
        # Close, not equal: the int8 joint quantizes its input with one scale per call, and the two searches
        # batch different runs of frames into their calls.
        tdt_lp, rnnt_lp = [t.logprob for t in decoded.tokens], [t.logprob for t in reference.tokens]
        assert np.allclose(tdt_lp, rnnt_lp, atol=0.15)  # measured: up to 0.1 between batchings


def test_tdt_durations_come_from_metadata(tmp_path: Path) -> None:
    directory = tmp_path / "model"
    shutil.copytree(BUNDLED, directory)
    _graft_durations(directory, "0 2 4 6 8")
    assert NemoStreamingModel(directory, 1, "rnnt").durations == (0, 2, 4, 6, 8)
    other = tmp_path / "bad"
    shutil.copytree(BUNDLED, other)
    _graft_durations(other, "0,1,2")
    with pytest.raises(ModelFormatError, match="tdt_durations"):
        NemoStreamingModel(other, 1, "rnnt")
