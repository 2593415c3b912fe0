// Internal: google/svcca's get_cca_similarity numbers for a batch of covariance triples (one
// per spatial frequency in dft_ccas), shared by compat.cpp and dft_ccas.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <string>

namespace svcca {
namespace detail {

struct ReferenceCcas {
  at::Tensor coefs;   // [B, k] |singular values|, descending; 0 past min(kx, ky); k = min(nx, ny)
  at::Tensor x_idxs;  // [B, nx] bool: neurons kept (rescaled variance >= epsilon)
  at::Tensor y_idxs;  // [B, ny] bool
  at::Tensor mean;    // [B] mean of the first sum_threshold(coefs, threshold) coefficients
  at::Tensor sum;     // [B] sum of the coefficients
};

// From the reference's np.cov blocks sxx: [B, nx, nx], syy: [B, ny, ny], sxy: [B, nx, ny]
// (real or complex, any consistent conjugation convention): rescale by max |sxx| and max |syy|,
// keep neurons with |diag| >= epsilon, add the ridge epsilon to the kept diagonal, pinv square
// roots, singular values. Removed neurons are masked (zero rows and columns), which gives the
// reference's cropped numbers padded with zeros. threshold in (0, 1]. Throws c10::ValueError,
// naming `fn`, the layer (`xname` / `yname`) and where(b), when entry b has a constant layer or
// no neuron kept.
ReferenceCcas reference_ccas(const char* fn, const char* xname, const char* yname,
                             const at::Tensor& sxx, const at::Tensor& syy, const at::Tensor& sxy,
                             double epsilon, double threshold,
                             const std::function<std::string(int64_t)>& where);

}  // namespace detail
}  // namespace svcca
