// Flash-attention decode over TQ K/V (or q8_0 K, TQ V) in the rotated domain (tq-fattn.cu).
#pragma once

#include "common.cuh"

// true when the TQ decode kernel takes this FLASH_ATTN_EXT node: V of a TQ type with K of a TQ type or q8_0,
// head size 64/128/256 (K and V alike), at most 8 query rows, an Ampere or newer GPU; other TQ shapes take
// ggml-cuda's f16 conversion path
bool ggml_cuda_flash_attn_ext_tq_supported(int device, const ggml_tensor * dst);
void ggml_cuda_flash_attn_ext_tq(ggml_backend_cuda_context & ctx, ggml_tensor * dst);
