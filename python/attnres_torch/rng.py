"""The TypeScript engine's seeded generator (src/tensor/random.ts), bit for bit.

xoshiro128** seeded through splitmix32; uniform() = u32 / 2^32; int(n) = floor(uniform() * n);
normal() by Box-Muller with the spare value kept. State for checkpoints: [s0, s1, s2, s3, spare]
with spare None (JSON null) when there is none, as the TypeScript engine writes it.
"""

import math

_M = 0xFFFFFFFF


def _rotl(x, k):
    return ((x << k) | (x >> (32 - k))) & _M


class Rng:
    def __init__(self, seed):
        x = seed & _M
        s = []
        for _ in range(4):
            x = (x + 0x9E3779B9) & _M
            z = x
            z = ((z ^ (z >> 16)) * 0x85EBCA6B) & _M
            z = ((z ^ (z >> 13)) * 0xC2B2AE35) & _M
            s.append((z ^ (z >> 16)) & _M)
        if not any(s):
            s[0] = 1
        self.s = s
        self.spare = None

    def next_u32(self):
        s0, s1, s2, s3 = self.s
        result = (_rotl((s1 * 5) & _M, 7) * 9) & _M
        t = (s1 << 9) & _M
        s2 ^= s0
        s3 ^= s1
        s1 ^= s2
        s0 ^= s3
        s2 ^= t
        s3 = _rotl(s3, 11)
        self.s = [s0, s1, s2, s3]
        return result

    def uniform(self):
        return self.next_u32() / 4294967296.0

    def int(self, n):
        return math.floor(self.uniform() * n)

    def normal(self):
        if self.spare is not None:
            v = self.spare
            self.spare = None
            return v
        u = 0.0
        while u == 0.0:
            u = self.uniform()
        v = self.uniform()
        r = math.sqrt(-2.0 * math.log(u))
        self.spare = r * math.sin(2.0 * math.pi * v)
        return r * math.cos(2.0 * math.pi * v)

    def normals(self, n, std):
        """n draws of normal() * std, as a list (the hot loop of initialisation)."""
        out = [0.0] * n
        log, sqrt, sin, cos, tau = math.log, math.sqrt, math.sin, math.cos, 2.0 * math.pi
        i = 0
        if self.spare is not None and n > 0:
            out[0] = self.spare * std
            self.spare = None
            i = 1
        s0, s1, s2, s3 = self.s
        M = _M
        while i < n:
            # two uniforms (u must be non-zero), inlined xoshiro128**
            u = 0.0
            while u == 0.0:
                r1 = ((((s1 * 5) & M) << 7 | ((s1 * 5) & M) >> 25) & M) * 9 & M
                t = (s1 << 9) & M
                s2 ^= s0
                s3 ^= s1
                s1 ^= s2
                s0 ^= s3
                s2 ^= t
                s3 = ((s3 << 11) | (s3 >> 21)) & M
                u = r1 / 4294967296.0
            r2 = ((((s1 * 5) & M) << 7 | ((s1 * 5) & M) >> 25) & M) * 9 & M
            t = (s1 << 9) & M
            s2 ^= s0
            s3 ^= s1
            s1 ^= s2
            s0 ^= s3
            s2 ^= t
            s3 = ((s3 << 11) | (s3 >> 21)) & M
            v = r2 / 4294967296.0
            r = sqrt(-2.0 * log(u))
            out[i] = r * cos(tau * v) * std
            i += 1
            if i < n:
                out[i] = r * sin(tau * v) * std
                i += 1
            else:
                self.spare = r * sin(tau * v)
        self.s = [s0, s1, s2, s3]
        return out

    def get_state(self):
        return [*self.s, self.spare]

    def set_state(self, state):
        ok = len(state) == 5 and all(isinstance(v, int) and 0 <= v < 2**32 for v in state[:4])
        if not ok:
            raise ValueError(f"not a saved generator state: {state!r}")
        self.s = list(state[:4])
        v = state[4]
        self.spare = None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
