// Non-Linux builds: AF_VSOCK and the Nitro syscalls do not exist there. The module loads (so
// `npm install` succeeds on a developer laptop) and native-binding.ts reports ERR_NATIVE_UNSUPPORTED.
#include <napi.h>

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("unsupported", Napi::Boolean::New(env, true));
  return exports;
}

NODE_API_MODULE(enclave_native, Init)
