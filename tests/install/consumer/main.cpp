// A user's program linking the installed svcca::core: y = x A gives canonical correlations 1.
#include <ATen/ATen.h>
#include <svcca/svcca.h>

#include <cmath>
#include <iostream>

int main() {
  at::manual_seed(0);
  at::Tensor x = at::randn({200, 4}, at::kDouble);
  at::Tensor y = at::mm(x, at::eye(4, at::kDouble) + 0.5) + 1.0;
  auto r = svcca::cca(x, y);
  const double worst = (r.correlations - 1.0).abs().max().item<double>();
  if (r.correlations.numel() != 4 || !(worst < 1e-10)) {
    std::cerr << "unexpected correlations " << r.correlations << "\n";
    return 1;
  }
  std::cout << "consumer ok: " << r.correlations.numel()
            << " correlations, max |rho - 1| = " << worst << "\n";
  return 0;
}
