// Runs a TorchScript model that `dml export` wrote with libtorch alone (torch::jit::load),
// as a C++ service would: no Python, no dml.
//
//   jit_load MODEL.pt INPUT.f32 N C H W OUTPUT.f32
//
// INPUT.f32 holds N*C*H*W little-endian float32 (NCHW, preprocessed as model.json says);
// OUTPUT.f32 receives the [N, D] embeddings, row-major float32. Prints "N D".
#include <torch/script.h>

#include <fstream>
#include <iostream>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 8) {
    std::cerr << "usage: jit_load MODEL.pt INPUT.f32 N C H W OUTPUT.f32\n";
    return 2;
  }
  const int64_t n = std::stoll(argv[3]), c = std::stoll(argv[4]), h = std::stoll(argv[5]),
                w = std::stoll(argv[6]);
  std::vector<float> x(static_cast<size_t>(n * c * h * w));
  std::ifstream in(argv[2], std::ios::binary);
  in.read(reinterpret_cast<char*>(x.data()), static_cast<std::streamsize>(x.size() * sizeof(float)));
  if (!in || in.peek() != EOF) {
    std::cerr << argv[2] << ": expected exactly " << x.size() << " float32 values\n";
    return 1;
  }
  torch::jit::script::Module module = torch::jit::load(argv[1], torch::kCPU);
  module.eval();
  torch::NoGradGuard no_grad;
  at::Tensor input = torch::from_blob(x.data(), {n, c, h, w}, torch::kFloat32);
  at::Tensor y = module.forward({input}).toTensor().to(torch::kFloat32).contiguous();
  if (y.dim() != 2 || y.size(0) != n) {
    std::cerr << "the model returned a tensor of shape " << y.sizes() << ", expected [" << n << ", D]\n";
    return 1;
  }
  std::ofstream out(argv[7], std::ios::binary);
  out.write(reinterpret_cast<const char*>(y.data_ptr<float>()),
            static_cast<std::streamsize>(y.numel() * sizeof(float)));
  if (!out) {
    std::cerr << argv[7] << ": could not write the embeddings\n";
    return 1;
  }
  std::cout << y.size(0) << " " << y.size(1) << "\n";
  return 0;
}
