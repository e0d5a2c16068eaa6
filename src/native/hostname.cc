// Setting the hostname of the current UTS namespace (the enclave has no init system to do it).
#include <unistd.h>

#include <cerrno>
#include <string>

#include "errno_value.h"
#include "exports.h"

namespace enclave {
namespace {

constexpr size_t kMaxHostnameBytes = 64;  // HOST_NAME_MAX on Linux

// setHostname(name) -> 0 | -errno. Needs CAP_SYS_ADMIN in the UTS namespace.
Napi::Value SetHostname(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name;
  if (!ReadString(info[0], kMaxHostnameBytes, &name)) return ErrnoValue(env, EINVAL);
  if (::sethostname(name.data(), name.size()) != 0) return ErrnoValue(env, errno);
  return Napi::Number::New(env, 0);
}

}  // namespace

void InitHostname(Napi::Env env, Napi::Object exports) {
  exports.Set("setHostname", Napi::Function::New(env, SetHostname, "setHostname"));
}

}  // namespace enclave
