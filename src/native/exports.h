#pragma once

#include <napi.h>

namespace enclave {

// Each adds its functions to the module's exports; one file per concept.
void InitNsmDevice(Napi::Env env, Napi::Object exports);
void InitOriginalDst(Napi::Env env, Napi::Object exports);
void InitNetInterface(Napi::Env env, Napi::Object exports);
void InitHostname(Napi::Env env, Napi::Object exports);
void InitChildReaper(Napi::Env env, Napi::Object exports);
void InitProcessHardening(Napi::Env env, Napi::Object exports);
void InitHeapMemory(Napi::Env env, Napi::Object exports);
void InitTlsRelay(Napi::Env env, Napi::Object exports);

}  // namespace enclave
