// The two reduction passes of training-mode BN as TensorFlow CPU ops, float32, on the [m, C]
// view of channels-last activations (`cpu_ops.py` builds and loads them; `batch_norm_transform`
// uses them on CPUs where it would otherwise run its blocked XLA loops).
//
// KerasBnInceptionMoments(x; ε) -> (μ_B, σ²_B, 1/sqrt(σ²_B + ε), m): Algorithm 1, lines 1-2,
// computed as the XLA kernels compute them: values shifted by the first row K, each block of 32
// rows' mean and squared deviations computed exactly (two passes over a block in cache), blocks
// merged by Chan's pairwise update, never E[x²] − E[x]².
//
// KerasBnInceptionGradSums(∂ℓ/∂y, x, μ_B, 1/sqrt(σ²_B + ε), γ, β; relu) -> (∂ℓ/∂β, ∂ℓ/∂γ) =
// (Σ g_i, Σ g_i x̂_i), g_i = ∂ℓ/∂y_i, or for the BN + ReLU unit ∂ℓ/∂z_i where γ x̂_i + β > 0
// (the forward's arithmetic: compiled without contracting it into a fused multiply-add).
//
// The rows are cut into one contiguous chunk per thread of TensorFlow's intra-op pool; the hot
// loops are compiled for AVX-512, AVX2 and baseline x86-64, picked when the library loads.

#include <algorithm>
#include <cmath>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

#if defined(__x86_64__)
#define HOT_LOOP __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define HOT_LOOP
#endif

namespace {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

constexpr int64_t kBlockRows = 32;

// One contiguous chunk of rows per thread of TensorFlow's intra-op pool.
int64_t Chunks(OpKernelContext* ctx, int64_t m) {
  const int threads = ctx->device()->tensorflow_cpu_worker_threads()->workers->NumThreads();
  return std::max<int64_t>(1, std::min<int64_t>(threads, m));
}

// Runs fn(chunk, first_row, end_row) for each of `chunks` chunks of the m rows, in the pool.
template <typename Fn>
void ForRowChunks(OpKernelContext* ctx, int64_t m, int64_t chunks, Fn fn) {
  auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  pool->ParallelFor(chunks, [&](int64_t lo, int64_t hi) {  // blocks of one chunk
    for (int64_t p = lo; p < hi; ++p) fn(p, m * p / chunks, m * (p + 1) / chunks);
  });
}

// Σ (x_i − K) and Σ (x_i − K − mean)² over `rows` rows of x, mean their own: two passes.
HOT_LOOP void BlockMoments(const float* __restrict x, int64_t rows, int64_t C,
                           const float* __restrict shift, float* __restrict sum,
                           float* __restrict ssd) {
  for (int64_t c = 0; c < C; ++c) sum[c] = ssd[c] = 0.f;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < C; ++c) sum[c] += x[r * C + c] - shift[c];
  }
  const float n = static_cast<float>(rows);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < C; ++c) {
      const float d = x[r * C + c] - shift[c] - sum[c] / n;
      ssd[c] += d * d;
    }
  }
}

// Adds Σ g_i and Σ g_i (x_i − μ_B) over `rows` rows to dbeta and dgamma.
HOT_LOOP void AddGradSums(const float* __restrict dy, const float* __restrict x, int64_t rows,
                          int64_t C, const float* __restrict mean,
                          const float* __restrict scale, const float* __restrict beta,
                          bool relu, float* __restrict dbeta, float* __restrict dgamma) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* __restrict dy_row = dy + r * C;
    const float* __restrict x_row = x + r * C;
    if (relu) {
      for (int64_t c = 0; c < C; ++c) {
        const float d = x_row[c] - mean[c];
        const float g = d * scale[c] + beta[c] > 0.f ? dy_row[c] : 0.f;
        dbeta[c] += g;
        dgamma[c] += g * d;
      }
    } else {
      for (int64_t c = 0; c < C; ++c) {
        dbeta[c] += dy_row[c];
        dgamma[c] += dy_row[c] * (x_row[c] - mean[c]);
      }
    }
  }
}

// (n, Σ, Σ squared deviations from the mean) of a set of rows, per feature.
struct Moments {
  float n = 0;
  std::vector<float> sum, ssd;
  explicit Moments(int64_t C) : sum(C, 0.f), ssd(C, 0.f) {}

  // Chan, Golub & LeVeque's pairwise update: adds another set's moments.
  void Merge(float n_b, const float* sum_b, const float* ssd_b) {
    if (n_b == 0) return;
    const float n_ab = n + n_b;
    for (size_t c = 0; c < sum.size(); ++c) {
      const float delta = sum_b[c] / n_b - (n > 0 ? sum[c] / n : 0.f);
      ssd[c] += ssd_b[c] + delta * delta * n * n_b / n_ab;
      sum[c] += sum_b[c];
    }
    n = n_ab;
  }
};

class MomentsOp : public OpKernel {
 public:
  explicit MomentsOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("epsilon", &epsilon_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x_in = ctx->input(0);
    OP_REQUIRES(ctx, x_in.dims() == 2, absl::InvalidArgumentError("x must be a matrix [m, C]"));
    const int64_t m = x_in.dim_size(0), C = x_in.dim_size(1);
    const float* x = x_in.flat<float>().data();
    const std::vector<float> zeros(C, 0.f);
    const float* shift = m > 0 ? x : zeros.data();  // K, the first row
    const int64_t chunks = Chunks(ctx, m);
    std::vector<Moments> parts(chunks, Moments(C));
    ForRowChunks(ctx, m, chunks, [&](int64_t p, int64_t r0, int64_t r1) {
      Moments block(C);
      for (int64_t b0 = r0; b0 < r1; b0 += kBlockRows) {
        const int64_t rows = std::min(r1 - b0, kBlockRows);
        BlockMoments(x + b0 * C, rows, C, shift, block.sum.data(), block.ssd.data());
        parts[p].Merge(static_cast<float>(rows), block.sum.data(), block.ssd.data());
      }
    });
    for (int64_t p = 1; p < chunks; ++p) {
      parts[0].Merge(parts[p].n, parts[p].sum.data(), parts[p].ssd.data());
    }
    Tensor *mean_out, *variance_out, *inv_std_out, *count_out;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({C}), &mean_out));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({C}), &variance_out));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({C}), &inv_std_out));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, TensorShape({}), &count_out));
    float* mean = mean_out->flat<float>().data();
    float* variance = variance_out->flat<float>().data();
    float* inv_std = inv_std_out->flat<float>().data();
    const float n = std::max(parts[0].n, 1.f);
    for (int64_t c = 0; c < C; ++c) {
      mean[c] = parts[0].sum[c] / n + shift[c];  // μ_B, line 1
      variance[c] = parts[0].ssd[c] / n;         // σ²_B, line 2
      inv_std[c] = 1.f / std::sqrt(variance[c] + epsilon_);  // 1/sqrt(σ²_B + ε), line 3
    }
    count_out->scalar<float>()() = n;
  }

 private:
  float epsilon_;
};

class GradSumsOp : public OpKernel {
 public:
  explicit GradSumsOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("relu", &relu_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x_in = ctx->input(1);
    OP_REQUIRES(ctx, x_in.dims() == 2, absl::InvalidArgumentError("x must be a matrix [m, C]"));
    OP_REQUIRES(ctx, ctx->input(0).shape() == x_in.shape(),
                absl::InvalidArgumentError("dy and x must have the same shape"));
    const int64_t m = x_in.dim_size(0), C = x_in.dim_size(1);
    for (int i = 2; i < 6; ++i) {
      OP_REQUIRES(ctx, ctx->input(i).shape() == TensorShape({C}),
                  absl::InvalidArgumentError("mean, inv_std, gamma and beta must have shape [C]"));
    }
    const float* dy = ctx->input(0).flat<float>().data();
    const float* x = x_in.flat<float>().data();
    const float* mean = ctx->input(2).flat<float>().data();
    const float* inv_std = ctx->input(3).flat<float>().data();
    const float* gamma = ctx->input(4).flat<float>().data();
    const float* beta = ctx->input(5).flat<float>().data();
    std::vector<float> scale(C);
    for (int64_t c = 0; c < C; ++c) scale[c] = gamma[c] * inv_std[c];
    const int64_t chunks = Chunks(ctx, m);
    std::vector<float> dbeta_parts(chunks * C, 0.f), dgamma_parts(chunks * C, 0.f);
    ForRowChunks(ctx, m, chunks, [&](int64_t p, int64_t r0, int64_t r1) {
      // Each block of rows is summed on its own, then added to its chunk's sums, as the XLA
      // kernels do: one running float32 total over many rows would lose precision as it grows.
      std::vector<float> block_dbeta(C), block_dgamma(C);
      for (int64_t b0 = r0; b0 < r1; b0 += kBlockRows) {
        std::fill(block_dbeta.begin(), block_dbeta.end(), 0.f);
        std::fill(block_dgamma.begin(), block_dgamma.end(), 0.f);
        AddGradSums(dy + b0 * C, x + b0 * C, std::min(r1 - b0, kBlockRows), C, mean,
                    scale.data(), beta, relu_, block_dbeta.data(), block_dgamma.data());
        for (int64_t c = 0; c < C; ++c) {
          dbeta_parts[p * C + c] += block_dbeta[c];
          dgamma_parts[p * C + c] += block_dgamma[c];
        }
      }
    });
    Tensor *dbeta_out, *dgamma_out;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({C}), &dbeta_out));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({C}), &dgamma_out));
    float* dbeta = dbeta_out->flat<float>().data();
    float* dgamma = dgamma_out->flat<float>().data();
    for (int64_t c = 0; c < C; ++c) {
      float sum_dbeta = 0.f, sum_dgamma = 0.f;
      for (int64_t p = 0; p < chunks; ++p) {
        sum_dbeta += dbeta_parts[p * C + c];
        sum_dgamma += dgamma_parts[p * C + c];
      }
      dbeta[c] = sum_dbeta;                  // ∂ℓ/∂β
      dgamma[c] = sum_dgamma * inv_std[c];   // ∂ℓ/∂γ = Σ g_i x̂_i
    }
  }

 private:
  bool relu_;
};

// Outputs: per-feature vectors [C] of the [m, C] input x (input `x_index`).
absl::Status FeatureVectors(InferenceContext* c, int x_index) {
  ShapeHandle x;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(x_index), 2, &x));
  for (int i = 0; i < c->num_outputs(); ++i) c->set_output(i, c->Vector(c->Dim(x, 1)));
  return absl::OkStatus();
}

}  // namespace

REGISTER_OP("KerasBnInceptionMoments")
    .Input("x: float")
    .Attr("epsilon: float")
    .Output("mean: float")
    .Output("variance: float")
    .Output("inv_std: float")
    .Output("count: float")
    .SetShapeFn([](InferenceContext* c) {
      TF_RETURN_IF_ERROR(FeatureVectors(c, 0));
      c->set_output(3, c->Scalar());
      return absl::OkStatus();
    });
REGISTER_OP("KerasBnInceptionGradSums")
    .Input("dy: float")
    .Input("x: float")
    .Input("mean: float")
    .Input("inv_std: float")
    .Input("gamma: float")
    .Input("beta: float")
    .Attr("relu: bool")
    .Output("dbeta: float")
    .Output("dgamma: float")
    .SetShapeFn([](InferenceContext* c) { return FeatureVectors(c, 1); });
REGISTER_KERNEL_BUILDER(Name("KerasBnInceptionMoments").Device(tensorflow::DEVICE_CPU), MomentsOp);
REGISTER_KERNEL_BUILDER(Name("KerasBnInceptionGradSums").Device(tensorflow::DEVICE_CPU),
                        GradSumsOp);
