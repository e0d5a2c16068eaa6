// The destination a connection had before iptables REDIRECT rewrote it, for the egress
// transparent proxy.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>

#include "errno_value.h"
#include "exports.h"

namespace enclave {
namespace {

// SO_ORIGINAL_DST (<linux/netfilter_ipv4.h>) and IP6T_SO_ORIGINAL_DST
// (<linux/netfilter_ipv6/ip6_tables.h>) are both 80; those kernel headers clash with glibc's.
constexpr int kSoOriginalDst = 80;

Napi::Value AddressResult(Napi::Env env, int family, const void* address, uint16_t networkPort) {
  char text[INET6_ADDRSTRLEN] = {0};
  if (::inet_ntop(family, address, text, sizeof(text)) == nullptr) return ErrnoValue(env, errno);
  // Plain Node-API with checked statuses: see AddressObject in socket_address.cc.
  napi_value result = nullptr;
  napi_value addressValue = nullptr;
  napi_value portValue = nullptr;
  if (napi_create_object(env, &result) != napi_ok ||
      napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &addressValue) != napi_ok ||
      napi_create_uint32(env, ntohs(networkPort), &portValue) != napi_ok ||
      napi_set_named_property(env, result, "address", addressValue) != napi_ok ||
      napi_set_named_property(env, result, "port", portValue) != napi_ok) {
    return ErrnoValue(env, ENOMEM);
  }
  return Napi::Value(env, result);
}

// getOriginalDst(fd, 4|6) -> {address, port} | -errno. Without a conntrack entry for the
// connection the kernel answers ENOENT (or ENOPROTOOPT when conntrack is not loaded).
Napi::Value GetOriginalDst(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  uint32_t version;
  if (!ReadFd(info[0], &fd)) return ErrnoValue(env, EBADF);
  if (!ReadUint32(info[1], &version) || (version != 4 && version != 6)) return ErrnoValue(env, EINVAL);
  if (version == 4) {
    sockaddr_in address{};
    socklen_t length = sizeof(address);
    if (::getsockopt(fd, SOL_IP, kSoOriginalDst, &address, &length) != 0) return ErrnoValue(env, errno);
    return AddressResult(env, AF_INET, &address.sin_addr, address.sin_port);
  }
  sockaddr_in6 address{};
  socklen_t length = sizeof(address);
  if (::getsockopt(fd, SOL_IPV6, kSoOriginalDst, &address, &length) != 0) return ErrnoValue(env, errno);
  return AddressResult(env, AF_INET6, &address.sin6_addr, address.sin6_port);
}

}  // namespace

void InitOriginalDst(Napi::Env env, Napi::Object exports) {
  exports.Set("getOriginalDst", Napi::Function::New(env, GetOriginalDst, "getOriginalDst"));
}

}  // namespace enclave
