// The attention sink of sparse decode, added once per row by whichever kernel finishes the row
// (the decode kernel for unsplit calls, the combine for split ones).
#pragma once

#include <math_constants.h>

namespace mla::cuda::sparse {

// A row's natural-log LSE and output factor after adding the sink's exp(sink) to its normaliser
// Z: lse' = ln(Z + e^sink), and the output scales by Z / Z' = exp(lse - lse'). An empty row
// (lse = -inf) gets the sink's logit as its lse (its output is 0 either way); a sink of -inf
// changes nothing. This is the lse SparseDecodeParams documents (the sink's term included).
__device__ __forceinline__ void add_sink(float sink, float& lse, float& factor) {
  if (lse == -CUDART_INF_F) {
    lse = sink;
  } else if (sink != -CUDART_INF_F) {
    const float m = fmaxf(lse, sink);
    const float total = m + logf(expf(lse - m) + expf(sink - m));
    factor *= expf(lse - total);
    lse = total;
  }
}

}  // namespace mla::cuda::sparse
