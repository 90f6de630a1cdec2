// A C++ program against an installed amm-softmax (scripts/test_install.sh builds it with CMake's
// find_package and with pkg-config): the CosFace loss without hard-negative re-weighting of a
// small batch, checked against the softmax cross-entropy written out here; exits 0 only if it
// agrees and the loaded library's version is the header's.
#include <cmath>
#include <cstdio>
#include <vector>

#include "amm_softmax.h"

int main() {
    const int64_t n = 3, c = 5;
    std::vector<double> cos(n * c);
    for (int64_t k = 0; k < n * c; ++k) cos[k] = 0.9 * std::sin(0.7 * static_cast<double>(k));
    const std::vector<int64_t> labels = {0, 3, 4};
    amm_params p;
    amm_params_init(&p);
    p.scale = 30.0;
    p.margin = 0.2;
    p.target = AMM_TARGET_COS;
    p.hard = AMM_HARD_NONE;
    double loss = 0.0;
    std::vector<double> grad(n * c);
    if (amm_forward_backward_f64(&p, cos.data(), n, c, labels.data(), &loss, grad.data()) != AMM_OK) {
        std::printf("consumer: refused: %s\n", amm_last_error());
        return 1;
    }
    double expected = 0.0;
    for (int64_t i = 0; i < n; ++i) {
        std::vector<double> z(c);
        double top = -INFINITY;
        for (int64_t j = 0; j < c; ++j) {
            z[j] = p.scale * (cos[i * c + j] - (j == labels[i] ? p.margin : 0.0));
            top = std::fmax(top, z[j]);
        }
        double sum = 0.0;
        for (double v : z) sum += std::exp(v - top);
        expected += (top + std::log(sum) - z[labels[i]]) / static_cast<double>(n);
    }
    std::printf("consumer: amm-softmax %s, loss %.12f, expected %.12f\n", amm_version(), loss,
                expected);
    if (amm_version_number() != AMM_VERSION_NUMBER) return 1;
    return std::fabs(loss - expected) <= 1e-12 * std::fabs(expected) ? 0 : 1;
}
