// optim.cc: AdamW, float32 state, PyTorch's exact order of operations (torch.optim.AdamW, foreach=False):
//
//   p, g, m, v [n]
//   p *= 1 - lr*wd
//   m = beta1*m + (1-beta1)*g;   v = beta2*v + (1-beta2)*g*g
//   p -= (lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps)
//
// The scalars (1 - lr*wd, lr/bc1, sqrt(bc2), ...) are formed in double and rounded to float once;
// the per-element arithmetic is float32 like PyTorch's CPU kernel.
#include <cmath>

#include "kernels.h"

namespace attnres {

void adamw(float* p, const float* g, float* m, float* v, i64 n, double lr, double beta1, double beta2,
           double eps, double wd, double bc1, double bc2) {
  const float decay = (float)(1.0 - lr * wd);
  const float b1 = (float)beta1, omb1 = (float)(1.0 - beta1);
  const float b2 = (float)beta2, omb2 = (float)(1.0 - beta2);
  const float stepSize = (float)(lr / bc1);
  const float bc2Sqrt = (float)std::sqrt(bc2);
  const float epsF = (float)eps;
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (i64 i = 0; i < n; i++) {
    const float gi = g[i];
    const float pi = p[i] * decay;
    const float mi = b1 * m[i] + omb1 * gi;
    const float vi = b2 * v[i] + omb2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    const float denom = std::sqrt(vi) / bc2Sqrt + epsF;
    p[i] = pi - stepSize * (mi / denom);
  }
}

}  // namespace attnres
