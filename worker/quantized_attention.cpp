// The emulated attention of a quantized cache over whole sequences at once:
// kvtune's structured mask with recomputed full-precision blocks, and
// KVTuner's cache with its flushes and re-quantizations.
#include <cmath>
#include <limits>

#include "evaluator.h"

namespace kvtune::worker {

namespace {

// Fake-quantizes each sequence of x [B, T, KVH, hd].
torch::Tensor fake_quant_batch(const TensorQuantizer& q, const torch::Tensor& x) {
  std::vector<torch::Tensor> parts;
  for (int64_t b = 0; b < x.size(0); ++b) parts.push_back(q.fake_quant(x[b]));
  return torch::stack(parts);
}

// Where queries read in full precision, as blocks of the [T, T] score
// matrix: `count` square w x w blocks on the diagonal from (base, base), and
// rectangles where queries [q0, q1) read keys [k0, q1) (the causal mask
// removes j > i). Their query rows are disjoint.
struct FullPrecisionBlocks {
  struct Rect {
    int64_t q0, q1, k0;
  };
  int64_t base = 0, count = 0, w = 1;
  std::vector<Rect> rects;
};

// The blocks of first_full_precision(i, plan) for i < len, in closed form:
// the fresh prompt, then windows of W counted from position 0 (the one the
// prompt ends in first, when T0 is not a multiple of W), none when the rule
// reads decoded tokens from the cache.
FullPrecisionBlocks full_precision_blocks(const TensorQuantizer& q, int64_t len,
                                          const ReadPlan& plan) {
  FullPrecisionBlocks b;
  const int64_t t0 = std::min(plan.prompt_tokens, len);
  if (t0 > 0 && plan.rule.prefill == ReadRule::Source::Fresh) b.rects.push_back({0, t0, 0});
  if (t0 >= len || plan.rule.current == ReadRule::Source::Cache) return b;
  const int64_t w = q.full_precision_window();
  const int64_t first = (t0 / w) * w;  // the window of query T0
  b.base = t0;
  if (first < t0) {
    b.rects.push_back({t0, std::min(len, first + w), first});
    b.base = first + w;
  }
  b.w = w;
  b.count = std::max<int64_t>(0, (len - b.base) / w);
  const int64_t tail = b.base + b.count * w;
  if (tail < len) b.rects.push_back({tail, len, tail});
  return b;
}

// The `count` w x w diagonal blocks from (base, base) of the last two dims of
// a contiguous x [B, H, T, T], as a view [B, H, count, w, w].
torch::Tensor diagonal_blocks(const torch::Tensor& x, const FullPrecisionBlocks& b) {
  const int64_t t = x.size(-1);
  return x.as_strided({x.size(0), x.size(1), b.count, b.w, b.w},
                      {x.stride(0), x.stride(1), b.w * t + b.w, t, 1},
                      x.storage_offset() + b.base * t + b.base);
}

// Rows [base, base + count * w) of a [B, H, T, d] as blocks [B, H, count, w, d].
torch::Tensor row_blocks(const torch::Tensor& a, const FullPrecisionBlocks& b) {
  return a.slice(2, b.base, b.base + b.count * b.w)
      .reshape({a.size(0), a.size(1), b.count, b.w, a.size(3)});
}

}  // namespace

namespace {

// One tensor (keys or values) of KVTuner's cache over a batch: the values it
// holds, dequantized, and how many leading tokens are fixed points of its
// quantizer. Where groups stay within a token (per-token groups of head_dim or
// a divisor of it), a token that comes back unchanged never changes again, so
// a flush re-quantizes only the tokens after those, which is exactly what
// re-quantizing everything gives.
class RequantizedStream {
 public:
  RequantizedStream(const TensorQuantizer& quantizer, const torch::Tensor& prompt)
      : quantizer_(quantizer),
        within_tokens_(quantizer.groups_within_tokens(prompt.size(3))),
        held_(quantizer.active() ? fake_quant_batch(quantizer, prompt) : prompt) {}

  const torch::Tensor& held() const { return held_; }

  // The flush after the cache handed out `read` (what it holds, then the fresh tokens).
  void flush(const torch::Tensor& read) {
    if (!quantizer_.active()) {
      held_ = read;
      return;
    }
    if (!within_tokens_) {
      held_ = fake_quant_batch(quantizer_, read);
      return;
    }
    const torch::Tensor tail = read.slice(1, settled_);
    const torch::Tensor again = fake_quant_batch(quantizer_, tail);
    // Leading tail tokens that came back unchanged in every sequence.
    const torch::Tensor changed = (again != tail).flatten(2).any(2).any(0);
    const torch::Tensor first = changed.nonzero();
    settled_ += first.size(0) > 0 ? first[0][0].item<int64_t>() : tail.size(1);
    held_ = torch::cat({held_.slice(1, 0, read.size(1) - tail.size(1)), again}, 1);
  }

 private:
  const TensorQuantizer& quantizer_;
  bool within_tokens_;
  torch::Tensor held_;
  int64_t settled_ = 0;
};

// KVTuner's cache read by whole sequences at once. Its first update is the
// prefill (the prompt, or the first token when there is none): quantized
// whole, read fresh. Decoded tokens then come in periods of P =
// flush_period(): a period's queries read the cache as quantized at the end
// of the previous period, and the period's own tokens fresh; its last step
// re-quantizes everything, the dequantized old tokens included. Still one
// pass over the layers, with T / P flushes per layer.
torch::Tensor requantizing_attention(const torch::Tensor& q, const torch::Tensor& k,
                                     const torch::Tensor& v, const TensorQuantizer& keys,
                                     const TensorQuantizer& values, const ReadPlan& plan,
                                     int64_t period) {
  const int64_t len = q.size(1);
  const int64_t t0 = std::min(len, std::max<int64_t>(plan.prompt_tokens, 1));
  std::vector<torch::Tensor> out{
      causal_attention(q.slice(1, 0, t0), k.slice(1, 0, t0), v.slice(1, 0, t0))};
  RequantizedStream cached_k(keys, k.slice(1, 0, t0)), cached_v(values, v.slice(1, 0, t0));
  for (int64_t s = t0; s < len; s += period) {
    const int64_t e = std::min(len, s + period);
    const torch::Tensor read_k = torch::cat({cached_k.held(), k.slice(1, s, e)}, 1);
    const torch::Tensor read_v = torch::cat({cached_v.held(), v.slice(1, s, e)}, 1);
    out.push_back(causal_attention(q.slice(1, s, e), read_k, read_v));
    if (e < len) {
      cached_k.flush(read_k);
      cached_v.flush(read_v);
    }
  }
  return torch::cat(out, 1);
}

}  // namespace

// Query i reads token j in full precision iff first_full_precision(i) <= j
// <= i, and quantized otherwise. So the scores and outputs are those of the
// fully quantized cache, corrected on the full-precision blocks: O(T*W + T0^2)
// extra work instead of O(T^2).
torch::Tensor quantized_attention(const torch::Tensor& q, const torch::Tensor& k,
                                  const torch::Tensor& v, const TensorQuantizer& keys,
                                  const TensorQuantizer& values, const ReadPlan& plan) {
  if (!keys.active() && !values.active()) return causal_attention(q, k, v);
  if (keys.requantizes() || values.requantizes()) {
    return requantizing_attention(q, k, v, keys, values, plan, keys.flush_period());
  }
  const int64_t len = q.size(1);
  const int64_t group = q.size(2) / k.size(2);
  const auto heads = [group](const torch::Tensor& x) {  // [B, T, KVH, hd] -> [B, H, T, hd]
    return x.transpose(1, 2).repeat_interleave(group, 1);
  };
  const torch::Tensor qh = q.transpose(1, 2) / std::sqrt(static_cast<double>(q.size(3)));
  torch::Tensor scores;
  if (!keys.active()) {
    scores = torch::matmul(qh, heads(k).transpose(-2, -1));
  } else {
    const torch::Tensor kh = heads(k);
    scores = torch::matmul(qh, heads(fake_quant_batch(keys, k)).transpose(-2, -1)).contiguous();
    const FullPrecisionBlocks b = full_precision_blocks(keys, len, plan);
    if (b.count > 0) {
      diagonal_blocks(scores, b).copy_(
          torch::matmul(row_blocks(qh, b), row_blocks(kh, b).transpose(-2, -1)));
    }
    for (const auto& r : b.rects) {
      scores.slice(2, r.q0, r.q1)
          .slice(3, r.k0, r.q1)
          .copy_(torch::matmul(qh.slice(2, r.q0, r.q1), kh.slice(2, r.k0, r.q1).transpose(-2, -1)));
    }
  }
  const torch::Tensor future = torch::ones({len, len}, q.options().dtype(torch::kBool)).triu(1);
  const torch::Tensor p =
      softmax_f32(scores.masked_fill(future, -std::numeric_limits<float>::infinity())).contiguous();
  if (!values.active()) return torch::matmul(p, heads(v)).transpose(1, 2);

  const torch::Tensor vq = heads(fake_quant_batch(values, v));
  torch::Tensor out = torch::matmul(p, vq);
  // Add back, on the full-precision blocks, what full precision changes.
  const FullPrecisionBlocks b = full_precision_blocks(values, len, plan);
  const torch::Tensor d = heads(v) - vq;
  if (b.count > 0) {
    out.slice(2, b.base, b.base + b.count * b.w) +=
        torch::matmul(diagonal_blocks(p, b), row_blocks(d, b))
            .reshape({out.size(0), out.size(1), b.count * b.w, out.size(3)});
  }
  for (const auto& r : b.rects) {
    out.slice(2, r.q0, r.q1) +=
        torch::matmul(p.slice(2, r.q0, r.q1).slice(3, r.k0, r.q1), d.slice(2, r.k0, r.q1));
  }
  return out.transpose(1, 2);
}

}  // namespace kvtune::worker
