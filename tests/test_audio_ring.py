"""RingBuffer: exact contents across wrap-around, absolute addressing, overwrite errors."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.audio.ring import RangeOverwrittenError, RingBuffer


def ramp(start: int, n: int) -> np.ndarray:
    """Samples whose value is their absolute index, so every read can be checked exactly."""
    return np.arange(start, start + n, dtype=np.float32)


def test_empty_buffer() -> None:
    rb = RingBuffer(8)
    assert len(rb) == 0
    assert rb.total_written == 0
    assert rb.capacity == 8
    assert rb.read_last(0).shape == (0,)
    assert rb.read_last(0).dtype == np.float32


def test_write_and_read_before_wrapping() -> None:
    rb = RingBuffer(8)
    rb.write(ramp(0, 5))
    assert len(rb) == 5
    assert rb.total_written == 5
    np.testing.assert_array_equal(rb.read_last(3), [2, 3, 4])
    np.testing.assert_array_equal(rb.read_range(1, 4), [1, 2, 3])
    np.testing.assert_array_equal(rb.read_range(0, 5), [0, 1, 2, 3, 4])


def test_wrap_around_keeps_the_newest_samples() -> None:
    rb = RingBuffer(8)
    rb.write(ramp(0, 6))
    rb.write(ramp(6, 5))  # wraps: 11 written, samples 3..10 held
    assert len(rb) == 8
    assert rb.total_written == 11
    assert rb.first_available == 3
    np.testing.assert_array_equal(rb.read_last(8), np.arange(3, 11))
    np.testing.assert_array_equal(rb.read_range(5, 10), [5, 6, 7, 8, 9])
    np.testing.assert_array_equal(rb.read_range(7, 9), [7, 8])  # both halves of the wrap point


def test_write_larger_than_capacity() -> None:
    rb = RingBuffer(8)
    rb.write(ramp(0, 3))
    rb.write(ramp(3, 21))
    assert rb.total_written == 24
    assert len(rb) == 8
    np.testing.assert_array_equal(rb.read_last(8), np.arange(16, 24))
    rb.write(ramp(24, 2))
    np.testing.assert_array_equal(rb.read_range(18, 26), np.arange(18, 26))


def test_write_exactly_capacity() -> None:
    rb = RingBuffer(4)
    rb.write(ramp(0, 1))
    rb.write(ramp(1, 4))
    np.testing.assert_array_equal(rb.read_last(4), [1, 2, 3, 4])


def test_overwritten_range_raises_a_clear_error() -> None:
    rb = RingBuffer(8)
    rb.write(ramp(0, 20))
    with pytest.raises(RangeOverwrittenError, match=r"overwritten.*from 12 to 20"):
        rb.read_range(11, 15)
    assert isinstance(RangeOverwrittenError("x"), IndexError)
    np.testing.assert_array_equal(rb.read_range(12, 12), [])


def test_invalid_ranges() -> None:
    rb = RingBuffer(8)
    rb.write(ramp(0, 5))
    with pytest.raises(IndexError, match="past the 5 samples written"):
        rb.read_range(3, 6)
    with pytest.raises(ValueError):
        rb.read_range(4, 3)
    with pytest.raises(ValueError):
        rb.read_range(-1, 2)
    with pytest.raises(ValueError):
        rb.read_last(6)
    with pytest.raises(ValueError):
        RingBuffer(0)
    with pytest.raises(ValueError):
        rb.write(np.zeros((2, 2), dtype=np.float32))


def test_reads_are_copies_and_inputs_are_converted() -> None:
    rb = RingBuffer(4)
    rb.write(np.array([1, 2, 3], dtype=np.int16))
    out = rb.read_last(3)
    assert out.dtype == np.float32
    out[:] = 0
    np.testing.assert_array_equal(rb.read_last(3), [1, 2, 3])
    rb.write(np.zeros(0, dtype=np.float32))
    assert rb.total_written == 3


def test_random_writes_match_a_reference() -> None:
    rng = np.random.default_rng(0)
    rb = RingBuffer(1000)
    written = 0
    for _ in range(300):
        n = int(rng.integers(0, 1500))
        rb.write(ramp(written, n))
        written += n
        assert rb.total_written == written
        assert len(rb) == min(written, 1000)
        start = int(rng.integers(rb.first_available, written + 1))
        end = int(rng.integers(start, written + 1))
        np.testing.assert_array_equal(rb.read_range(start, end), np.arange(start, end, dtype=np.float32))
        k = int(rng.integers(0, len(rb) + 1))
        np.testing.assert_array_equal(rb.read_last(k), np.arange(written - k, written, dtype=np.float32))
