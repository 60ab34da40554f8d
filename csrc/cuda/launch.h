// The few places where a CUDA build and the CPU emulation of the CUDA execution model
// (csrc/emu/, tests only) differ: kernel launches, the dynamic shared-memory declaration and the
// grid's y/z limit. Under nvcc they are the plain CUDA constructs; the emulator defines its own
// before it includes a .cu file.
#pragma once

#ifndef D2D_CUDA_EMULATION
// kernel<<<grid, block, smem, stream>>>(args...)
#define D2D_LAUNCH(kernel, grid, block, smem, stream, ...) kernel<<<grid, block, smem, stream>>>(__VA_ARGS__)
// The block's dynamic shared memory as an array of bytes, aligned for any T up to double.
#define D2D_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif

// Largest gridDim.y and gridDim.z (the emulator lowers it, so that the chunking of samples over
// several launches is tested on small batches).
#ifndef D2D_GRID_YZ_LIMIT
#define D2D_GRID_YZ_LIMIT 65535
#endif
