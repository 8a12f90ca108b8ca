/**
 * A seeded pseudo-random generator that every random consumer takes as an
 * argument, so that runs and tests are reproducible.
 *
 * The core is xoshiro128** (32-bit state words, exact in JavaScript integer
 * arithmetic), seeded through SplitMix32 so that nearby seeds give unrelated
 * streams.
 *
 * @module
 */

/** SplitMix32: advances the state by a constant and returns a mixed word. */
function splitmix32(state: { s: number }): number {
  state.s = (state.s + 0x9e3779b9) | 0;
  return mix32(state.s);
}

/** A bijective, nonlinear scrambling of a 32-bit word (MurmurHash3's finaliser). */
function mix32(x: number): number {
  let z = x;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
}

export class Generator {
  #s = new Uint32Array(4);
  #spare: number | null = null;

  /**
   * A generator for `seed` and optional stream keys: `new Generator(seed,
   * epoch, index)` gives a stream that depends only on those numbers.
   */
  constructor(seed: number, ...keys: number[]) {
    // Hash the seed and keys, word by word, into SplitMix32's starting state;
    // the scrambling between words makes the order of keys matter.
    let h = 0x243f6a88;
    for (const k of [seed, ...keys]) {
      if (!Number.isSafeInteger(k)) {
        throw new RangeError(
          `Generator: seeds and keys must be integers, got ${k}`,
        );
      }
      h = mix32((h ^ (k >>> 0)) + 0x9e3779b9);
      h = mix32((h ^ Math.floor(k / 0x100000000)) + 0x9e3779b9);
    }
    const state = { s: h | 0 };
    for (let i = 0; i < 4; i++) this.#s[i] = splitmix32(state);
    if ((this.#s[0] | this.#s[1] | this.#s[2] | this.#s[3]) === 0) {
      this.#s[0] = 1;
    }
  }

  /** A uniform 32-bit unsigned integer. */
  nextUint32(): number {
    const s = this.#s;
    const result = Math.imul(rotl(Math.imul(s[1], 5), 7), 9) >>> 0;
    const t = s[1] << 9;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return result;
  }

  /** A uniform float in [0, 1) with 53 random bits. */
  uniform(): number;
  /** A uniform float in [low, high). */
  uniform(low: number, high: number): number;
  uniform(low = 0, high = 1): number {
    const hi = this.nextUint32() >>> 5; // 27 bits
    const lo = this.nextUint32() >>> 6; // 26 bits
    const u = (hi * 67108864 + lo) / 9007199254740992;
    return low + (high - low) * u;
  }

  /** A standard normal (Box-Muller; the second value is kept for the next call). */
  normal(mean = 0, std = 1): number {
    if (this.#spare !== null) {
      const z = this.#spare;
      this.#spare = null;
      return mean + std * z;
    }
    const pair = this.#pair();
    this.#spare = pair[1];
    return mean + std * pair[0];
  }

  #pairOut = new Float64Array(2);

  /** Two independent standard normals (Box-Muller) in a reused array. */
  #pair(): Float64Array {
    let u = 0;
    while (u === 0) u = this.uniform();
    const v = this.uniform();
    const r = Math.sqrt(-2 * Math.log(u));
    const out = this.#pairOut;
    out[0] = r * Math.cos(2 * Math.PI * v);
    out[1] = r * Math.sin(2 * Math.PI * v);
    return out;
  }

  /** A uniform integer in [low, high), without modulo bias. */
  integer(low: number, high: number): number {
    const span = high - low;
    if (
      !Number.isInteger(low) || !Number.isInteger(high) || span <= 0 ||
      span > 2 ** 32
    ) {
      throw new RangeError(`Generator.integer: bad range [${low}, ${high})`);
    }
    // Rejection sampling keeps every value equally likely.
    const limit = 2 ** 32 - (2 ** 32 % span);
    let x = this.nextUint32();
    while (x >= limit) x = this.nextUint32();
    return low + (x % span);
  }

  /** A random permutation of 0..n-1 (Fisher-Yates). */
  permutation(n: number): Int32Array {
    const p = new Int32Array(n);
    for (let i = 0; i < n; i++) p[i] = i;
    for (let i = n - 1; i > 0; i--) {
      const j = this.integer(0, i + 1);
      const t = p[i];
      p[i] = p[j];
      p[j] = t;
    }
    return p;
  }

  /** Fills an array with uniform values in [low, high). */
  fillUniform(out: Float32Array, low = 0, high = 1): Float32Array {
    for (let i = 0; i < out.length; i++) out[i] = this.uniform(low, high);
    return out;
  }

  /**
   * Fills an array with normal values: the same values as calling
   * `normal()` for each element, drawn a pair at a time.
   */
  fillNormal(out: Float32Array, mean = 0, std = 1): Float32Array {
    let i = 0;
    if (this.#spare !== null && out.length > 0) {
      out[i++] = this.normal(mean, std);
    }
    for (; i + 1 < out.length; i += 2) {
      const pair = this.#pair();
      out[i] = mean + std * pair[0];
      out[i + 1] = mean + std * pair[1];
    }
    if (i < out.length) out[i] = this.normal(mean, std);
    return out;
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}
