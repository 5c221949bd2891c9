// Device memory bandwidth (read, copy): the ceiling for a decode kernel. From the project's shared tools.
// Device memory bandwidth: read-only reduction, copy, cudaMemcpy D2D. Prints GB/s (1e9 bytes).
#include <cstdio>
#include <cuda_runtime.h>
__global__ void rd(const uint4 *p, size_t n, unsigned *out) {
  unsigned acc = 0;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    uint4 v = __ldg(p + i); acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x12345678u) *out = acc;
}
__global__ void cp(const uint4 *a, uint4 *b, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) b[i] = a[i];
}
int main() {
  const size_t bytes = 4ull << 30, n = bytes / 16;
  uint4 *a, *b; unsigned *o;
  cudaMalloc(&a, bytes); cudaMalloc(&b, bytes); cudaMalloc(&o, 4);
  cudaMemset(a, 1, bytes); cudaMemset(b, 0, bytes);
  int sms; cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1); float ms;
  for (int k = 0; k < 3; k++) {
    cudaEventRecord(e0); for (int r = 0; r < 10; r++) rd<<<sms * 8, 512>>>(a, n, o); cudaEventRecord(e1); cudaEventSynchronize(e1);
    cudaEventElapsedTime(&ms, e0, e1); printf("read        %.0f GB/s\n", 10.0 * bytes / ms / 1e6);
    cudaEventRecord(e0); for (int r = 0; r < 10; r++) cp<<<sms * 8, 512>>>(a, b, n); cudaEventRecord(e1); cudaEventSynchronize(e1);
    cudaEventElapsedTime(&ms, e0, e1); printf("copy kernel %.0f GB/s (read+write)\n", 20.0 * bytes / ms / 1e6);
    cudaEventRecord(e0); for (int r = 0; r < 10; r++) cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice); cudaEventRecord(e1); cudaEventSynchronize(e1);
    cudaEventElapsedTime(&ms, e0, e1); printf("memcpy D2D  %.0f GB/s (read+write)\n", 20.0 * bytes / ms / 1e6);
  }
  printf("%s\n", cudaGetErrorString(cudaGetLastError()));
  return 0;
}
