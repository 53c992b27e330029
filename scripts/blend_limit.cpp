// The per-blend limit that scripts/bench_cpu_kernel.py states next to the cpu kernel's ns per blend:
// the arithmetic and memory traffic of a blend and nothing else, in the kernel's precision (float
// values, float64 transmittance, records of 12 bytes), over blends already laid out contiguously --
// no tile lists, no bounds, no depth order, no per-pixel control flow. A blend here is what the
// kernel does once it has found one:
//   forward:  G = exp(power), alpha = min(0.99, o G), T' = T (1 - alpha), w = alpha T,
//             five sums += w f, the record (entry and lane, G, T) written;
//   backward: the record read, alpha again, five feature gradients w g, A = a' f' + (1 - a') A,
//             dL/dalpha = T (f - A) . g, six geometry terms summed per entry.
// Blends come in runs of 8 over 16 lanes (a Gaussian's columns in a pixel row), as in the kernel.
// Built by the bench script with torch's cpp_extension and the kernel's compiler flags.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

struct Record {
  int32_t k_lane;
  float G;
  float T;
};

constexpr int kLanes = 16, kRun = 8, kDim = 5;

double seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// -> (forward seconds, backward seconds) for ``blends`` blends on torch's threads
std::vector<double> blend_limit(int64_t blends) {
  const int64_t n_entries = (blends + kRun - 1) / kRun;
  std::vector<float> power(n_entries * kRun), opacity(n_entries), features(n_entries * kDim);
  for (int64_t i = 0; i < n_entries * kRun; ++i) power[i] = -0.3f - 4.0f * float((i * 2654435761u) % 1000) / 1000.0f;
  for (int64_t e = 0; e < n_entries; ++e) {
    opacity[e] = 0.2f + 0.6f * float((e * 40503u) % 100) / 100.0f;
    for (int d = 0; d < kDim; ++d) features[e * kDim + d] = 0.1f * float(d + 1);
  }
  std::vector<Record> records(n_entries * kRun);
  std::vector<double> geometry(n_entries * 6, 0.0);
  std::vector<double> feature_grads(n_entries * kDim, 0.0);
  volatile double sink = 0.0;

  const double f0 = seconds();
  at::parallel_for(0, n_entries, 1024, [&](int64_t e0, int64_t e1) {
    double T[kLanes];
    float sums[kLanes * kDim];
    std::fill(T, T + kLanes, 1.0);
    std::fill(sums, sums + kLanes * kDim, 0.0f);
    float G[kRun];
    for (int64_t e = e0; e < e1; ++e) {
      const int lane0 = int((e * 3) % (kLanes - kRun + 1));
      for (int j = 0; j < kRun; ++j) G[j] = std::exp(power[e * kRun + j]);
      for (int j = 0; j < kRun; ++j) {
        const int lane = lane0 + j;
        float alpha = std::min(0.99f, opacity[e] * G[j]);
        const double t = T[lane];
        const float w = float(double(alpha) * t);
        for (int d = 0; d < kDim; ++d) sums[lane * kDim + d] += w * features[e * kDim + d];
        records[e * kRun + j] = {int32_t((e << 8) | lane), G[j], float(t)};
        const double next = t * (1.0 - alpha);
        T[lane] = next < 1e-4 ? 1.0 : next;  // a new pixel row: the run stays branch-light
      }
    }
    double total = 0.0;
    for (float v : sums) total += v;
    sink = sink + total;
  });
  const double f1 = seconds();
  at::parallel_for(0, n_entries, 1024, [&](int64_t e0, int64_t e1) {
    double next_alpha[kLanes] = {0.0}, behind[kLanes * kDim] = {0.0}, next_f[kLanes * kDim] = {0.0};
    double grad[kLanes * kDim];
    for (int i = 0; i < kLanes * kDim; ++i) grad[i] = 0.01 * (i % 7);
    for (int64_t e = e1 - 1; e >= e0; --e) {
      double run[6 + kDim] = {0.0};
      for (int j = kRun - 1; j >= 0; --j) {
        const Record r = records[e * kRun + j];
        const int lane = r.k_lane & 255;
        const double alpha = std::min(0.99f, opacity[e] * r.G);
        const double w = alpha * r.T;
        double dl_dalpha = 0.0;
        for (int d = 0; d < kDim; ++d) {
          const double g = grad[lane * kDim + d];
          run[6 + d] += w * g;
          double& a = behind[lane * kDim + d];
          a = next_alpha[lane] * next_f[lane * kDim + d] + (1.0 - next_alpha[lane]) * a;
          const double f = features[e * kDim + d];
          dl_dalpha += (f - a) * g;
          next_f[lane * kDim + d] = f;
        }
        dl_dalpha *= r.T;
        next_alpha[lane] = alpha;
        const double dl_dpower = dl_dalpha * opacity[e] * r.G, dx = 0.5 * j, dy = 0.25;
        run[0] += dl_dpower * (-dx - dy);
        run[1] += dl_dpower * (-dy - dx);
        run[2] += dl_dpower * (-0.5 * dx * dx);
        run[3] += dl_dpower * (-dx * dy);
        run[4] += dl_dpower * (-0.5 * dy * dy);
        run[5] += dl_dalpha * r.G;
      }
      for (int d = 0; d < 6; ++d) geometry[e * 6 + d] += run[d];
      for (int d = 0; d < kDim; ++d) feature_grads[e * kDim + d] += run[6 + d];
    }
  });
  const double f2 = seconds();
  sink = sink + geometry[0] + feature_grads[0];
  return {f1 - f0, f2 - f1};
}

}  // namespace

TORCH_LIBRARY(lucid_blend_limit, m) { m.def("blend_limit", &blend_limit); }
