// Bringing a network interface up, for `lo` at enclave boot where no `ip` binary may exist.
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "errno_value.h"
#include "exports.h"

namespace enclave {
namespace {

// setInterfaceUp(name) -> 0 | -errno: SIOCGIFFLAGS then SIOCSIFFLAGS with IFF_UP added, leaving
// every other flag as it was. Needs CAP_NET_ADMIN.
Napi::Value SetInterfaceUp(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name;
  if (!ReadString(info[0], IFNAMSIZ - 1, &name)) return ErrnoValue(env, EINVAL);
  // Any socket will do as the ioctl target; AF_INET exists in every network namespace.
  int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return ErrnoValue(env, errno);
  ifreq request{};
  std::memcpy(request.ifr_name, name.data(), name.size());
  int error = 0;
  if (::ioctl(fd, SIOCGIFFLAGS, &request) != 0) {
    error = errno;
  } else if ((request.ifr_flags & IFF_UP) == 0) {
    request.ifr_flags = static_cast<short>(request.ifr_flags | IFF_UP);
    if (::ioctl(fd, SIOCSIFFLAGS, &request) != 0) error = errno;
  }
  ::close(fd);
  return error != 0 ? ErrnoValue(env, error) : Napi::Number::New(env, 0);
}

}  // namespace

void InitNetInterface(Napi::Env env, Napi::Object exports) {
  exports.Set("setInterfaceUp", Napi::Function::New(env, SetInterfaceUp, "setInterfaceUp"));
}

}  // namespace enclave
