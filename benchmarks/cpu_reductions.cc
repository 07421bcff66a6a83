// The two reduction passes of training-mode BN as TensorFlow CPU ops in C++, float32, on the
// [m, C] view of channels-last activations: a candidate for the CPU path, measured by
// benchmarks/cpu_reductions.py against the layer's XLA kernels. Not part of the library.
//
// BnMoments(x) -> (μ_B, σ²_B): Algorithm 1, lines 1-2. As the XLA blocked kernels do: values
// shifted by the first row K, each 32-row block's mean and squared deviations computed exactly
// (two passes over a block in cache), blocks merged by Chan's pairwise update. The rows are cut
// into one contiguous chunk per thread of TensorFlow's intra-op pool, merged the same way.
//
// BnGradSums(∂ℓ/∂y, x, μ_B, 1/sqrt(σ²_B + ε), γ, β; relu) -> (∂ℓ/∂β, ∂ℓ/∂γ) = (Σ g_i, Σ g_i x̂_i)
// with g_i = ∂ℓ/∂y_i, or for the BN + ReLU unit ∂ℓ/∂z_i where γ x̂_i + β > 0.
//
// Built by benchmarks/cpu_reductions.py with g++ -O3 -march=native -ffp-contract=off.

#include <algorithm>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::shape_inference::InferenceContext;

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
  const int64_t cost = int64_t{1} << 30;  // per chunk: high enough that each is a task of its own
  pool->ParallelFor(chunks, cost, [&](int64_t lo, int64_t hi) {
    for (int64_t p = lo; p < hi; ++p) fn(p, m * p / chunks, m * (p + 1) / chunks);
  });
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

class BnMomentsOp : public OpKernel {
 public:
  explicit BnMomentsOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x_in = ctx->input(0);
    const int64_t m = x_in.dim_size(0), C = x_in.dim_size(1);
    const float* x = x_in.flat<float>().data();
    const float* shift = x;  // K, the first row
    const int64_t chunks = Chunks(ctx, m);
    std::vector<Moments> parts(chunks, Moments(C));
    ForRowChunks(ctx, m, chunks, [&](int64_t p, int64_t r0, int64_t r1) {
      Moments& part = parts[p];
      Moments block(C);
      for (int64_t b0 = r0; b0 < r1; b0 += kBlockRows) {
        const int64_t b1 = std::min(r1, b0 + kBlockRows);
        const float n_b = static_cast<float>(b1 - b0);
        std::fill(block.sum.begin(), block.sum.end(), 0.f);
        std::fill(block.ssd.begin(), block.ssd.end(), 0.f);
        for (int64_t r = b0; r < b1; ++r) {
          const float* row = x + r * C;
          for (int64_t c = 0; c < C; ++c) block.sum[c] += row[c] - shift[c];
        }
        for (int64_t r = b0; r < b1; ++r) {
          const float* row = x + r * C;
          for (int64_t c = 0; c < C; ++c) {
            const float d = row[c] - shift[c] - block.sum[c] / n_b;
            block.ssd[c] += d * d;
          }
        }
        part.Merge(n_b, block.sum.data(), block.ssd.data());
      }
    });
    for (int64_t p = 1; p < chunks; ++p) {
      parts[0].Merge(parts[p].n, parts[p].sum.data(), parts[p].ssd.data());
    }
    Tensor *mean_out, *variance_out;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({C}), &mean_out));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({C}), &variance_out));
    float* mean = mean_out->flat<float>().data();
    float* variance = variance_out->flat<float>().data();
    const float n = std::max(parts[0].n, 1.f);
    for (int64_t c = 0; c < C; ++c) {
      mean[c] = parts[0].sum[c] / n + shift[c];  // μ_B, line 1
      variance[c] = parts[0].ssd[c] / n;         // σ²_B, line 2
    }
  }
};

// Adds one row's g_i and g_i (x_i − μ_B) to the sums. A function of its own, with restrict
// pointers, so that GCC vectorizes its loops (inlined into the pool's lambda, it did not).
void AddGradSums(int64_t C, const float* __restrict dy, const float* __restrict x,
                 const float* __restrict mean, const float* __restrict scale,
                 const float* __restrict beta, bool relu, float* __restrict dbeta,
                 float* __restrict dgamma) {
  if (relu) {
    for (int64_t c = 0; c < C; ++c) {
      const float d = x[c] - mean[c];
      const float g = d * scale[c] + beta[c] > 0.f ? dy[c] : 0.f;
      dbeta[c] += g;
      dgamma[c] += g * d;
    }
  } else {
    for (int64_t c = 0; c < C; ++c) {
      dbeta[c] += dy[c];
      dgamma[c] += dy[c] * (x[c] - mean[c]);
    }
  }
}

class BnGradSumsOp : public OpKernel {
 public:
  explicit BnGradSumsOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("relu", &relu_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x_in = ctx->input(1);
    const int64_t m = x_in.dim_size(0), C = x_in.dim_size(1);
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
    const bool relu = relu_;
    ForRowChunks(ctx, m, chunks, [&](int64_t p, int64_t r0, int64_t r1) {
      // Σ g_i and Σ g_i (x_i − μ_B) (× 1/σ at the end): each block of rows summed on its own,
      // then added to its chunk's sums, as the XLA kernels do (a float32 sum of many rows in
      // one running total would lose precision as it grows).
      std::vector<float> block_dbeta(C), block_dgamma(C);
      for (int64_t b0 = r0; b0 < r1; b0 += kBlockRows) {
        std::fill(block_dbeta.begin(), block_dbeta.end(), 0.f);
        std::fill(block_dgamma.begin(), block_dgamma.end(), 0.f);
        for (int64_t r = b0; r < std::min(r1, b0 + kBlockRows); ++r) {
          AddGradSums(C, dy + r * C, x + r * C, mean, scale.data(), beta, relu,
                      block_dbeta.data(), block_dgamma.data());
        }
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
      dbeta[c] = sum_dbeta;
      dgamma[c] = sum_dgamma * inv_std[c];
    }
  }

 private:
  bool relu_;
};

absl::Status VectorOfChannels(InferenceContext* c) {
  for (int i = 0; i < c->num_outputs(); ++i) c->set_output(i, c->Vector(c->Dim(c->input(0), 1)));
  return absl::OkStatus();
}

}  // namespace

REGISTER_OP("BnMoments")
    .Input("x: float")
    .Output("mean: float")
    .Output("variance: float")
    .SetShapeFn(VectorOfChannels);
REGISTER_OP("BnGradSums")
    .Input("dy: float")
    .Input("x: float")
    .Input("mean: float")
    .Input("inv_std: float")
    .Input("gamma: float")
    .Input("beta: float")
    .Attr("relu: bool")
    .Output("dbeta: float")
    .Output("dgamma: float")
    .SetShapeFn(VectorOfChannels);
REGISTER_KERNEL_BUILDER(Name("BnMoments").Device(tensorflow::DEVICE_CPU), BnMomentsOp);
REGISTER_KERNEL_BUILDER(Name("BnGradSums").Device(tensorflow::DEVICE_CPU), BnGradSumsOp);
