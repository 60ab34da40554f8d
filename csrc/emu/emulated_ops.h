// The emulated library's schemas (the d2d ops, in the emulator's own namespace) and its controls.
// Included last by the generated source of an emulated build, after the .cu files.
#pragma once

#include "../schemas.h"

namespace d2d_emu {
namespace {

// configure(smem_optin, sms, schedule, seed): the device limits the launchers read and the order
// in which threads and blocks run (0 forward, 1 reverse, 2 seeded random).
void configure(int64_t smem_optin, int64_t sms, int64_t schedule, int64_t seed) {
  TORCH_CHECK(smem_optin >= 0 && sms >= 1 && schedule >= 0 && schedule <= 2,
              "d2d_emu.configure: smem_optin >= 0, sms >= 1, schedule 0, 1 or 2");
  Settings& s = settings();
  s.smem_optin = smem_optin;
  s.sms = sms;
  s.schedule = schedule;
  s.seed = seed;
  smem_attributes().clear();
}

// [kernel launches, blocks, threads] run so far.
std::vector<int64_t> counters() { return {g_launches.load(), g_blocks.load(), g_threads.load()}; }

}  // namespace
}  // namespace d2d_emu

#define D2D_EMU_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)
D2D_EMU_LIBRARY(D2D_EMU_NAMESPACE, m) {
  d2d::define_schemas(m);
  m.def("configure(int smem_optin, int sms, int schedule, int seed) -> ()", &d2d_emu::configure);
  m.def("counters() -> int[]", &d2d_emu::counters);
}
