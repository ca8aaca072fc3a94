// AudioWorklet processor: the microphone's first channel as 16-bit little-endian PCM frames.
//
// It runs on the audio rendering thread, which hands it 128 samples at a time; sending a WebSocket
// message per block would mean ~375 messages a second at 48 kHz, so it fills frames of
// `processorOptions.frameSamples` and posts each one (its buffer transferred, not copied) to the page.
// A "flush" message posts the partial frame still held, then "flushed", so the page can send `stop`
// knowing every captured sample went out before it.

class PcmFramer extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.frameSamples = options.processorOptions.frameSamples;
    this.frame = new DataView(new ArrayBuffer(this.frameSamples * 2));
    this.filled = 0;
    this.running = true;
    this.port.onmessage = (event) => {
      if (event.data === "flush") {
        this.post(this.filled);
        this.running = false;
        this.port.postMessage("flushed");
      }
    };
  }

  post(samples) {
    if (samples === 0) return;
    const buffer =
      samples === this.frameSamples ? this.frame.buffer : this.frame.buffer.slice(0, samples * 2);
    this.port.postMessage(buffer, [buffer]);
    // A transferred buffer is detached here: the next frame needs a fresh one.
    this.frame = new DataView(new ArrayBuffer(this.frameSamples * 2));
    this.filled = 0;
  }

  process(inputs) {
    if (!this.running) return false;
    const channel = inputs[0] && inputs[0][0];
    // No input yet (the source is not connected or has ended): nothing to send, keep the node alive.
    if (!channel) return true;
    for (let i = 0; i < channel.length; i++) {
      const s = Math.max(-1, Math.min(1, channel[i]));
      // Asymmetric scaling keeps -1.0 at -32768 and +1.0 at 32767, the full 16-bit range.
      this.frame.setInt16(this.filled * 2, s < 0 ? s * 0x8000 : s * 0x7fff, true);
      this.filled += 1;
      if (this.filled === this.frameSamples) this.post(this.frameSamples);
    }
    return true;
  }
}

registerProcessor("pcm-framer", PcmFramer);
