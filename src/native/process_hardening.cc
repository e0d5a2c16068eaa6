// Keeping the runtime's memory (TLS keys, KMS secrets) out of reach of a hostile app in the same
// enclave: not dumpable (no ptrace attach or /proc/<pid>/mem for a process without CAP_SYS_PTRACE)
// and no core files.
#include <sys/prctl.h>
#include <sys/resource.h>

#include <cerrno>

#include "errno_value.h"
#include "exports.h"

namespace enclave {
namespace {

// hardenProcess() -> 0 | -errno: PR_SET_DUMPABLE 0, then RLIMIT_CORE 0 (soft and hard).
Napi::Value HardenProcess(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) return ErrnoValue(env, errno);
  struct rlimit none = {0, 0};
  if (::setrlimit(RLIMIT_CORE, &none) != 0) return ErrnoValue(env, errno);
  return Napi::Number::New(env, 0);
}

// processHardening() -> { dumpable, coreLimit } as the kernel reports them now (for tests and health).
Napi::Value ProcessHardening(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int dumpable = ::prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
  if (dumpable < 0) return ErrnoValue(env, errno);
  struct rlimit core = {};
  if (::getrlimit(RLIMIT_CORE, &core) != 0) return ErrnoValue(env, errno);
  Napi::Object result = Napi::Object::New(env);
  result.Set("dumpable", Napi::Number::New(env, dumpable));
  result.Set("coreSoft",
             Napi::Number::New(env, core.rlim_cur == RLIM_INFINITY ? -1.0 : static_cast<double>(core.rlim_cur)));
  result.Set("coreHard",
             Napi::Number::New(env, core.rlim_max == RLIM_INFINITY ? -1.0 : static_cast<double>(core.rlim_max)));
  return result;
}

}  // namespace

void InitProcessHardening(Napi::Env env, Napi::Object exports) {
  exports.Set("hardenProcess", Napi::Function::New(env, HardenProcess, "hardenProcess"));
  exports.Set("processHardening", Napi::Function::New(env, ProcessHardening, "processHardening"));
}

}  // namespace enclave
